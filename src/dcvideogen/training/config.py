"""Typed configuration of DC-AE-V training, read from YAML with `section.key=value` overrides.

Configs are plain dataclasses; the resolved one is written into the run folder as `config.yaml`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import DCVGError


@dataclass
class ModelConfig:
    preset: str = "dc-ae-v-f32t4c32-small"  # a DC-AE-V preset name
    arch: dict[str, Any] = field(default_factory=dict)  # DCAEVConfig field overrides, e.g. {chunk_size: 8}
    init_from: str | None = None  # model folder or official .pt to start from (fine-tuning)
    # With arch.patch_shortcut: fit the shortcut by PCA of the pixel blocks of this many clips of the data
    # stream (its own seed) before step 0, zeroing the networks' last layers (training/pca_init.py). 0: off.
    pca_clips: int = 0
    # Train only the parameters whose names start with one of these (e.g. [decoder.luma_filter.]): the rest is
    # frozen. Empty: train everything.
    trainable: list[str] = field(default_factory=list)
    gradient_checkpointing: bool = False


@dataclass
class DataConfig:
    num_frames: int = 16  # frames per training clip
    size: int = 128  # square crop side (pixels)
    frame_stride: int = 1  # take every k-th frame
    max_frame_stride: int = 1  # if > frame_stride, the stride is drawn uniformly in [frame_stride, max]
    min_scale: float = 1.0  # short side resized to size * U(min_scale, max_scale) before cropping
    max_scale: float = 2.0
    hflip: bool = True
    image_ratio: float = 0.2  # probability that a sample is an image repeated as a static clip
    camera_ratio: float = 0.0  # probability that an image sample is a camera move (pan + zoom), not static
    max_zoom: float = 2.0  # camera moves: window zoom drawn in [1, max_zoom] at the start and at the end
    # Colour augmentation, one draw per clip (0 disables each): hue rotation up to +-hue turns, saturation
    # and contrast scaled by U(1 - s, 1 + s), brightness shifted by U(-b, b) (on the [-1, 1] scale).
    hue: float = 0.0
    saturation: float = 0.0
    contrast: float = 0.0
    brightness: float = 0.0
    exclude: list[str] = field(
        default_factory=list
    )  # file names (or globs) to leave out, e.g. held-out clips
    workers: int = 2  # DataLoader worker processes per rank
    val_clips: list[str] = field(default_factory=list)  # validation videos (paths)
    val_frames: int = 32
    val_size: int = 0  # 0: validate at the clip's own size (cropped to a multiple of the spatial factor)


@dataclass
class LossConfig:
    reconstruction: str = "l1"  # l1 | l2
    reconstruction_weight: float = 1.0
    lpips_weight: float = 0.0  # > 0 needs lpips_backbone
    lpips_net: str = "vgg"
    lpips_backbone: str | None = None  # torchvision-format VGG16 / AlexNet state dict (local file)
    lpips_linear: str | None = None  # lpips v0.1 linear layers; default: the lpips package's own file
    gan_weight: float = 0.0  # > 0 trains a video discriminator
    gan_start_step: int = 0  # the adversarial term (and discriminator training) starts here
    gan_loss: str = "hinge"  # hinge | non_saturating
    adaptive_gan_weight: bool = True  # scale the generator's GAN loss by the gradient-norm ratio (VQGAN)
    disc_channels: int = 32
    disc_max_channels: int = 256
    disc_lr: float = 1e-4


@dataclass
class OptimConfig:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup_steps: int = 0
    decay: str = "constant"  # constant | cosine | linear
    min_lr_ratio: float = 0.1  # final lr / lr for cosine and linear decay
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    ema_decay: float = 0.999  # 0 disables EMA


@dataclass
class TrainConfig:
    seed: int = 0
    steps: int = 1000
    batch_size: int = 1  # per rank
    grad_accum: int = 1
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    parallel: str = "ddp"  # ddp | fsdp, used when launched with several processes
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    val_every: int = 500
    max_bad_steps: int = 5  # stop after this many non-finite losses in a row
    tensorboard: bool = True
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def validate(self) -> None:
        checks = [
            (self.steps >= 1, f"steps={self.steps} must be >= 1"),
            (self.batch_size >= 1, f"batch_size={self.batch_size} must be >= 1"),
            (self.grad_accum >= 1, f"grad_accum={self.grad_accum} must be >= 1"),
            (self.precision in ("fp32", "bf16"), f"precision={self.precision!r}: use fp32 or bf16"),
            (self.parallel in ("ddp", "fsdp"), f"parallel={self.parallel!r}: use ddp or fsdp"),
            (
                self.loss.reconstruction in ("l1", "l2"),
                f"loss.reconstruction={self.loss.reconstruction!r}: l1 or l2",
            ),
            (self.loss.gan_loss in ("hinge", "non_saturating"), f"loss.gan_loss={self.loss.gan_loss!r}"),
            (self.optim.decay in ("constant", "cosine", "linear"), f"optim.decay={self.optim.decay!r}"),
            (self.data.num_frames >= 1 and self.data.size >= 1, "data.num_frames and data.size must be >= 1"),
            (0 <= self.data.image_ratio <= 1, f"data.image_ratio={self.data.image_ratio} must be in [0, 1]"),
            (0 < self.data.min_scale <= self.data.max_scale, "need 0 < data.min_scale <= data.max_scale"),
            (
                0 <= self.data.camera_ratio <= 1,
                f"data.camera_ratio={self.data.camera_ratio} must be in [0, 1]",
            ),
            (self.data.max_zoom >= 1, f"data.max_zoom={self.data.max_zoom} must be >= 1"),
            (
                min(self.data.hue, self.data.saturation, self.data.contrast, self.data.brightness) >= 0
                and max(self.data.saturation, self.data.contrast) < 1,
                "data.hue/brightness must be >= 0 and data.saturation/contrast in [0, 1)",
            ),
            (
                self.checkpoint_every >= 1 and self.log_every >= 1 and self.val_every >= 1,
                "intervals must be >= 1",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise DCVGError(f"training config: {message}")
        if self.loss.lpips_weight > 0 and not self.loss.lpips_backbone:
            raise DCVGError(
                "training config: loss.lpips_weight > 0 needs loss.lpips_backbone=PATH, a torchvision-format "
                f"{self.loss.lpips_net} state dict (it cannot be downloaded here); or set loss.lpips_weight=0"
            )


# ---- YAML and overrides ---------------------------------------------------------------------------------


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML / command-line value to the annotated type `tp`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(value, args[0], where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise DCVGError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if isinstance(value, str) and tp is not str and origin is None:
        value = yaml.safe_load(value)
    if tp is bool:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, bool):
            raise DCVGError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp in (int, float):
        try:
            out = tp(value)
        except (TypeError, ValueError) as e:
            raise DCVGError(f"{where}: expected a {tp.__name__}, got {value!r}") from e
        if tp is int and out != value and not isinstance(value, int):
            raise DCVGError(f"{where}: expected an integer, got {value!r}")
        return out
    if tp is str:
        return str(value)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, (list, tuple)):
            raise DCVGError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        items = [v if inner is Any else _coerce(v, inner, where) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise DCVGError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def from_dict(cls, data: dict, where: str = "config"):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise DCVGError(f"{where}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(names))}")
    return cls(**{k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()})


def to_dict(cfg) -> dict:
    def plain(v):
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def apply_override(data: dict, item: str) -> None:
    """Apply one `a.b.c=value` override to a nested dict (values parsed as YAML)."""
    if "=" not in item:
        raise DCVGError(f"override {item!r}: use section.key=value, e.g. optim.lr=3e-4")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise DCVGError(f"override {item!r}: {p!r} is not a section")
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""


def load_typed_config(cls, path: str | Path | None, overrides: list[str] = (), examples: str = "configs/"):
    """A config dataclass `cls` from a YAML file (or the defaults) plus `a.b=value` overrides; validated
    with its `validate()`."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise DCVGError(f"{path}: no such config file (see {examples} for examples)")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise DCVGError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from e
        if not isinstance(data, dict):
            raise DCVGError(f"{path}: the top level must be a mapping of config sections")
    merged = to_dict(from_dict(cls, data, str(path or "config")))
    for item in overrides:
        apply_override(merged, item)
    cfg = from_dict(cls, merged, "config")
    cfg.validate()
    return cfg


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """TrainConfig from a YAML file (or the defaults) plus overrides; validated."""
    return load_typed_config(TrainConfig, path, overrides, "configs/ae/")


# ---- resuming ------------------------------------------------------------------------------------------

# Settings a resumed autoencoder run may change: how long it runs, how often it logs, validates and checkpoints,
# how it is laid out on the hardware, what it validates on. Every other setting shapes the trained state or the
# data stream (the optimiser's learning rate too: the scheduler resumes from the checkpoint's), so it must
# equal the checkpoint's; to change one, start a new run from the old weights with model.init_from=RUN/model.
AE_RESUMABLE = (
    "steps",
    "checkpoint_every",
    "keep_checkpoints",
    "log_every",
    "val_every",
    "max_bad_steps",
    "tensorboard",
    "precision",
    "parallel",
    "model.init_from",
    "model.gradient_checkpointing",
    "data.workers",
    "data.val_clips",
    "data.val_frames",
    "data.val_size",
)


def flat_settings(data: dict, prefix: str = "") -> dict[str, Any]:
    """{"optim.lr": 1e-3, "model.arch.chunk_size": 8, ...} of a nested config dict."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(flat_settings(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_resume_config(saved: dict | None, cfg, may_change: tuple[str, ...], ckpt: Path) -> None:
    """DCVGError naming the first setting, outside `may_change` (keys or sections), in which `cfg` differs from
    the config saved in checkpoint `ckpt`."""
    what = type(cfg).__name__
    if not saved:
        raise DCVGError(f"{ckpt}: holds no {what}; not a checkpoint of this trainer")
    try:
        old = flat_settings(to_dict(from_dict(type(cfg), saved, "its config")))
    except DCVGError as e:
        raise DCVGError(f"{ckpt}: not a checkpoint of this trainer ({what}; {e})") from e
    new = flat_settings(to_dict(cfg))
    for key in [*new, *(k for k in old if k not in new)]:
        if any(key == m or key.startswith(m + ".") for m in may_change):
            continue
        if old.get(key, "(unset)") != new.get(key, "(unset)"):
            run_config = ckpt.parent.parent / "config.yaml"
            own = f" ({run_config})" if run_config.is_file() else ""
            raise DCVGError(
                f"{ckpt}: the run was made with {key}={old.get(key, '(unset)')!r}, this config has "
                f"{key}={new.get(key, '(unset)')!r}; resume with the run's own settings{own} or start a new --out"
            )


def save_config(cfg, path: Path) -> None:
    """The resolved config as YAML, written atomically."""
    from ..utils.atomic import atomic_file

    with atomic_file(path) as tmp:
        tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
