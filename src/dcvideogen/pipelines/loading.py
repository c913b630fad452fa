"""Load a DC-VideoGen pipeline from (a) a folder written by `save_pretrained` / `dcvg convert-pipeline`,
or (b) the released folder (Hugging Face `nvidia/DC-VideoGen-Wan2.1-14B`), and turn (b) into (a).

Released layout (b)::

    dc-ae-v-f32t4c32-1.0-bf16.pt      DC-AE-V weights (official format, see models/dcae_v/official.py)
    transformer_t2v/, transformer_i2v/ diffusers WanTransformer3DModel folders
    text_encoder/, tokenizer/          UMT5 (transformers)
    scheduler/                         UniPCMultistepScheduler
    models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth   Wan 2.1's CLIP (I2V only)

Saved layout (a): diffusers' `model_index.json` + one folder per component (`vae/` is an `AutoencoderDCV`,
`image_encoder/` a transformers `CLIPVisionModel`), one task per folder.

Everything that can be checked from configs and file names (missing parts, channels that do not fit,
the autoencoder's chunk and the transformer's patch size for the frame and size checks) is checked by
`inspect_model_folder` / `ModelFolder.check` before any weights are read.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import torch

from ..errors import DCVGError
from ..models.dcae_v import AutoencoderDCV, DCAEVConfig
from ..models.dcae_v.official import CheckpointError, infer_config, load_official
from ..utils.atomic import atomic_dir
from .clip import WAN_CLIP_FILE, load_wan_clip, wan_clip_image_processor
from .conditioning import check_transformer_channels
from .i2v import DCVideoGenImageToVideoPipeline
from .t2v import DCVideoGenPipeline

logger = logging.getLogger(__name__)

RELEASED_AE_FILE = "dc-ae-v-f32t4c32-1.0-bf16.pt"
RELEASED_HUB_REPO = "nvidia/DC-VideoGen-Wan2.1-14B"
PIPELINES = {"t2v": DCVideoGenPipeline, "i2v": DCVideoGenImageToVideoPipeline}
TASK_OF_CLASS = {cls.__name__: task for task, cls in PIPELINES.items()}
TASK_NAMES = {"t2v": "text-to-video", "i2v": "image-to-video"}


class Layout(str, Enum):
    SAVED = "saved"  # save_pretrained / dcvg convert-pipeline
    RELEASED = "released"  # the official release's folder


@dataclass(frozen=True)
class ModelFolder:
    """A model folder, resolved and checked for completeness; no weights read."""

    path: Path
    layout: Layout
    task: str
    transformer_dir: Path
    autoencoder: Path  # vae/ folder (saved) or the official .pt (released)
    clip: Path | None = None  # released I2V: the Wan CLIP .pth
    expand_timesteps: bool = False

    # ---- configs (cheap) -------------------------------------------------------------------------------
    def transformer_config(self) -> dict:
        return _read_json(self.transformer_dir / "config.json")

    def autoencoder_config(self, chunk_size: int | None = None) -> DCAEVConfig:
        """The autoencoder's architecture from its config (saved) or its tensor shapes (released, memory-mapped)."""
        if self.layout is Layout.SAVED:
            raw = _read_json(self.autoencoder / "config.json")
            fields = {k: v for k, v in raw.items() if k in DCAEVConfig.__dataclass_fields__}
            if chunk_size:
                fields["chunk_size"] = chunk_size
            try:
                return DCAEVConfig(**fields)
            except (TypeError, ValueError) as e:
                raise DCVGError(f"{self.autoencoder / 'config.json'}: not a DC-AE-V config ({e})") from e
        return infer_config(_peek_official(self.autoencoder), chunk_size or 40)

    def check(self, chunk_size: int | None = None) -> None:
        """DCVGError when the transformer cannot run on the autoencoder's latent."""
        cfg = self.transformer_config()
        for key in ("in_channels", "patch_size"):
            if key not in cfg:
                raise DCVGError(
                    f"{self.transformer_dir / 'config.json'}: no {key!r}; is it a WanTransformer3DModel?"
                )
        latent = self.autoencoder_config(chunk_size).latent_channels
        try:
            check_transformer_channels(
                cfg["in_channels"], cfg.get("out_channels"), latent, self.task, self.expand_timesteps
            )
        except DCVGError as e:
            raise DCVGError(f"{self.transformer_dir}: {e}") from None

    def patch_size(self) -> tuple[int, int, int]:
        return tuple(self.transformer_config()["patch_size"])


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise DCVGError(f"{path}: missing") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DCVGError(f"{path}: not valid JSON ({e}); re-download or re-save it") from e


def _peek_official(path: Path) -> Mapping[str, torch.Tensor]:
    """The state dict of an official DC-AE-V file, memory-mapped (shapes only are read)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # torch raises many kinds on truncated or foreign files
        raise CheckpointError(
            f"{path}: not a readable torch checkpoint ({type(e).__name__}); re-download {RELEASED_AE_FILE}"
        ) from e
    if isinstance(ckpt, Mapping) and "ema_model_state_dict" in ckpt:
        ema = ckpt["ema_model_state_dict"]
        first = next(iter(ema.values()), None) if isinstance(ema, Mapping) else None
        return first if isinstance(first, Mapping) else ema
    if isinstance(ckpt, Mapping) and "model_state_dict" in ckpt:
        return ckpt["model_state_dict"]
    raise CheckpointError(
        f"{path}: no 'model_state_dict' or 'ema_model_state_dict'; is it a DC-AE-V checkpoint?"
    )


# ---- finding the parts --------------------------------------------------------------------------------------


def inspect_model_folder(path: str | Path, task: str | None = None) -> ModelFolder:
    """Resolve a model folder of either layout for `task` ("t2v", "i2v"; None: the saved folder's own task,
    or t2v for the released layout). Raises DCVGError naming every missing part and where it goes."""
    path = Path(path)
    if task is not None and task not in PIPELINES:
        raise DCVGError(f"task {task!r}: use 't2v' or 'i2v'")
    if not path.is_dir():
        what = "is a file" if path.exists() else "does not exist"
        raise DCVGError(
            f"{path}: {what}; give a model folder (saved by save_pretrained / dcvg convert-pipeline, or the "
            f"released {RELEASED_HUB_REPO} folder)"
        )
    if (path / "model_index.json").is_file():
        return _inspect_saved(path, task)
    return _inspect_released(path, task or "t2v")


def _inspect_saved(path: Path, task: str | None) -> ModelFolder:
    index = _read_json(path / "model_index.json")
    cls_name = index.get("_class_name")
    if cls_name not in TASK_OF_CLASS:
        raise DCVGError(
            f"{path}: model_index.json describes a {cls_name}, not a DC-VideoGen pipeline "
            f"({' or '.join(TASK_OF_CLASS)})"
        )
    saved_task = TASK_OF_CLASS[cls_name]
    if task is not None and task != saved_task:
        raise DCVGError(
            f"{path} holds a {TASK_NAMES[saved_task]} pipeline, not {TASK_NAMES[task]}; use --task {saved_task}, or "
            f"convert the released folder for {task} with: dcvg convert-pipeline RELEASED_DIR OUT --task {task}"
        )
    missing = [
        f"{name}/ (the {spec[1]})"
        for name, spec in index.items()
        if isinstance(spec, list) and spec[0] is not None and not (path / name).is_dir()
    ]
    if missing:
        raise DCVGError(
            f"{path}: model_index.json lists parts that are missing: {', '.join(missing)}; re-save the pipeline "
            "or run dcvg convert-pipeline again"
        )
    return ModelFolder(
        path=path,
        layout=Layout.SAVED,
        task=saved_task,
        transformer_dir=path / "transformer",
        autoencoder=path / "vae",
        expand_timesteps=bool(index.get("expand_timesteps", False)),
    )


def _find_one(folder: Path, preferred: str, pattern: str) -> Path | None:
    if (folder / preferred).is_file():
        return folder / preferred
    found = sorted(folder.glob(pattern))
    return found[0] if len(found) == 1 else None


def _inspect_released(path: Path, task: str) -> ModelFolder:
    ae = _find_one(path, RELEASED_AE_FILE, "dc-ae-v-*.pt")
    clip = _find_one(path, WAN_CLIP_FILE, "*clip*.pth")
    transformer = path / f"transformer_{task}"
    parts = [  # (present, what to put where)
        (ae is not None, f"{RELEASED_AE_FILE} (the DC-AE-V checkpoint from {RELEASED_HUB_REPO})"),
        (
            (transformer / "config.json").is_file(),
            f"transformer_{task}/ (the {task.upper()} WanTransformer3DModel folder: config.json + weights)",
        ),
        (
            (path / "text_encoder" / "config.json").is_file(),
            "text_encoder/ (UMT5 encoder: config.json + weights)",
        ),
        (_has_tokenizer(path / "tokenizer"), "tokenizer/ (the UMT5 tokenizer files)"),
        (
            (path / "scheduler" / "scheduler_config.json").is_file(),
            "scheduler/ (scheduler_config.json of the flow-matching scheduler)",
        ),
    ]
    if task == "i2v":
        parts.append(
            (
                clip is not None,
                f"{WAN_CLIP_FILE} (Wan 2.1's CLIP image encoder, from Wan-AI/Wan2.1-I2V-14B-720P)",
            )
        )
    missing = [what for present, what in parts if not present]
    if len(missing) == len(parts):
        raise DCVGError(
            f"{path}: not a model folder: no model_index.json (a saved pipeline) and none of the released parts "
            f"({RELEASED_AE_FILE}, transformer_{task}/, text_encoder/, tokenizer/, scheduler/); download "
            f"{RELEASED_HUB_REPO} there or save a pipeline with save_pretrained"
        )
    if missing:
        raise DCVGError(
            f"{path}: the released layout for {task} is incomplete; put these in the folder: {'; '.join(missing)}"
        )
    return ModelFolder(
        path=path,
        layout=Layout.RELEASED,
        task=task,
        transformer_dir=transformer,
        autoencoder=ae,
        clip=clip if task == "i2v" else None,
    )


def _has_tokenizer(folder: Path) -> bool:
    names = ("tokenizer.json", "spiece.model", "tokenizer_config.json")
    return folder.is_dir() and any((folder / n).is_file() for n in names)


# ---- loading ------------------------------------------------------------------------------------------------


def load_pipeline(
    path: str | Path,
    task: str | None = None,
    dtype: torch.dtype = torch.bfloat16,
    image_encoder_dtype: torch.dtype = torch.float32,
    ae_chunk_size: int | None = None,
) -> DCVideoGenPipeline | DCVideoGenImageToVideoPipeline:
    """A pipeline (on the CPU) from either layout. The CLIP image encoder stays in float32 by default, as
    in the release. `ae_chunk_size` overrides the autoencoder's chunk (the official file does not store it;
    the release uses 40)."""
    folder = inspect_model_folder(path, task)
    folder.check(ae_chunk_size)
    if folder.layout is Layout.SAVED:
        return _load_saved(folder, dtype, image_encoder_dtype, ae_chunk_size)
    return _load_released(folder, dtype, image_encoder_dtype, ae_chunk_size)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _diffusers_dtype(dtype) -> dict:
    """The dtype keyword of diffusers' from_pretrained: `dtype` since it deprecated `torch_dtype`."""
    from diffusers.utils import deprecation_utils

    return {"dtype": dtype} if hasattr(deprecation_utils, "_resolve_dtype") else {"torch_dtype": dtype}


def _load_saved(folder: ModelFolder, dtype, image_encoder_dtype, ae_chunk_size):
    cls = PIPELINES[folder.task]
    extra = {}
    if ae_chunk_size:
        extra["vae"] = AutoencoderDCV.from_pretrained(folder.autoencoder, chunk_size=ae_chunk_size).to(dtype)
    try:
        return cls.from_pretrained(
            folder.path, **_diffusers_dtype({"default": dtype, "image_encoder": image_encoder_dtype}), **extra
        )
    except (OSError, RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{folder.path}: cannot load the pipeline ({_first_line(e)})") from e


def _load_scheduler(folder: Path):
    import diffusers

    name = _read_json(folder / "scheduler_config.json").get("_class_name")
    cls = getattr(diffusers, str(name), None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise DCVGError(f"{folder / 'scheduler_config.json'}: unknown scheduler class {name!r}")
    return cls.from_pretrained(folder)


def _load_released(folder: ModelFolder, dtype, image_encoder_dtype, ae_chunk_size):
    from diffusers import WanTransformer3DModel
    from transformers import AutoTokenizer, UMT5EncoderModel

    root = folder.path
    try:
        vae = load_official(folder.autoencoder, chunk_size=ae_chunk_size).to(dtype)
        transformer = WanTransformer3DModel.from_pretrained(folder.transformer_dir, **_diffusers_dtype(dtype))
        text_encoder = UMT5EncoderModel.from_pretrained(root / "text_encoder", torch_dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
        scheduler = _load_scheduler(root / "scheduler")
    except DCVGError:
        raise
    except (OSError, RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{root}: cannot load the released pipeline ({_first_line(e)})") from e
    parts = dict(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler, transformer=transformer
    )
    if folder.task == "i2v":
        image_encoder = load_wan_clip(folder.clip, dtype=image_encoder_dtype)
        parts.update(
            image_encoder=image_encoder,
            image_processor=wan_clip_image_processor(image_encoder.config.image_size),
        )
    return PIPELINES[folder.task](**parts)


# ---- released -> saved ----------------------------------------------------------------------------------------


def convert_released(
    src: str | Path,
    out: str | Path,
    task: str = "t2v",
    ae_chunk_size: int | None = None,
    link: bool = False,
) -> ModelFolder:
    """Write the released folder `src` as a saved pipeline folder `out` for `task`.

    The transformer, text encoder, tokenizer and scheduler folders are already in diffusers /
    transformers format and are copied as they are (hard-linked with `link`); the DC-AE-V `.pt` becomes
    `vae/` and the Wan CLIP `.pth` `image_encoder/` + `image_processor/`, in the files' own dtypes. Memory
    stays at the size of the autoencoder and CLIP, whatever the size of the transformer.
    """
    import transformers
    from diffusers import WanTransformer3DModel
    from transformers import AutoConfig, AutoTokenizer

    folder = inspect_model_folder(src, task)
    if folder.layout is not Layout.RELEASED:
        raise DCVGError(f"{src}: already a saved pipeline (it has model_index.json); nothing to convert")
    folder.check(ae_chunk_size)
    root = folder.path
    vae = load_official(folder.autoencoder, chunk_size=ae_chunk_size)
    tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
    scheduler = _load_scheduler(root / "scheduler")
    text_config = AutoConfig.from_pretrained(root / "text_encoder")
    text_cls = getattr(transformers, (text_config.architectures or ["UMT5EncoderModel"])[0], None)
    if text_cls is None:
        raise DCVGError(f"{root / 'text_encoder'}: unknown architecture {text_config.architectures}")
    with torch.device("meta"):  # only to record the component classes in model_index.json
        transformer = WanTransformer3DModel.from_config(
            WanTransformer3DModel.load_config(folder.transformer_dir)
        )
        text_encoder = text_cls(text_config)
    parts = dict(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler, transformer=transformer
    )
    if task == "i2v":
        image_encoder = load_wan_clip(folder.clip, dtype=None)
        parts.update(
            image_encoder=image_encoder,
            image_processor=wan_clip_image_processor(image_encoder.config.image_size),
        )
    pipe = PIPELINES[task](**parts)
    with atomic_dir(out) as tmp:
        pipe.save_config(tmp)  # model_index.json
        vae.save_pretrained(tmp / "vae", safe_serialization=True)
        if task == "i2v":
            parts["image_encoder"].save_pretrained(tmp / "image_encoder", safe_serialization=True)
            parts["image_processor"].save_pretrained(tmp / "image_processor")
        for name, source in (
            ("transformer", folder.transformer_dir),
            ("text_encoder", root / "text_encoder"),
            ("tokenizer", root / "tokenizer"),
            ("scheduler", root / "scheduler"),
        ):
            _copy_tree(source, tmp / name, link)
    return inspect_model_folder(out, task)


def _copy_tree(src: Path, dst: Path, link: bool) -> None:
    def copy(s: str, d: str) -> None:
        if link:
            try:
                os.link(s, d)
                return
            except OSError:  # another file system: fall back to a copy
                pass
        shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=copy)


__all__ = [
    "PIPELINES",
    "RELEASED_AE_FILE",
    "Layout",
    "ModelFolder",
    "convert_released",
    "inspect_model_folder",
    "load_pipeline",
]
