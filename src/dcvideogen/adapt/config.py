"""Typed configuration of AE-Adapt-V (DC-VideoGen Sec. 3.3, Fig. 7, Table 8), read from YAML with
`section.key=value` overrides like the autoencoder trainer's.

One file drives the three commands: `dcvg adapt cache` reads `model` and `data`, `dcvg adapt train` runs
the stages in `align_embedder` (1a), `align_head` (1b) and `finetune` (2), then each of `resolution_stages`
(Table 8's resolution increase: stage 2 continued on larger shapes with the same LoRA), `dcvg adapt export`
reads the run folder's resolved copy. Every stage trains on a list of (pixel frames, height, width) buckets:
`data.buckets` (default: the one shape data.num_frames x data.height x data.width) for 1a, 1b and 2, a
resolution stage's own `buckets` for it. Defaults are the paper's settings for Wan-2.1-T2V-1.3B; FACTS section 6 lists
where the authors' training notes differ (kept as options: `data.pairing=authors`, `align_embedder.
method=adamw` with `lr=2e-4 betas=[0.9,0.9]`, `finetune.lora_targets` without cross-attention, ...).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DCVGError
from ..training.config import load_typed_config, save_config, to_dict
from .pairing import TEMPORAL_FACTOR

__all__ = [
    "STAGES",
    "AdaptConfig",
    "AlignEmbedderConfig",
    "AlignHeadConfig",
    "DataConfig",
    "FinetuneConfig",
    "FlowConfig",
    "ModelConfig",
    "ResolutionStageConfig",
    "Shape",
    "load_adapt_config",
    "save_config",
    "to_dict",
]

# The base stages in order, as `--stage` takes them (resolution stages follow, by their own names).
STAGES = ("align-embedder", "align-head", "finetune")

Shape = tuple[int, int, int]  # (pixel frames, height, width) of a training clip: one bucket
# DC-AE-V f32t4: pixels per latent row / column (frames per latent frame: pairing.TEMPORAL_FACTOR).
SPATIAL_FACTOR = 32
STAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # a resolution stage's name is also a cache folder

# LoRA on the attention projections (self and cross) and both FFN linears of every Wan block (Table 8);
# the I2V image cross-attention adds add_k_proj / add_v_proj.
DEFAULT_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"]


@dataclass
class ModelConfig:
    base: str = (
        ""  # the Wan model: a diffusers Wan pipeline folder (model_index.json, transformer/, vae/, ...)
    )
    task: str = "t2v"  # t2v | i2v
    autoencoder: str = "default"  # DC-AE-V: a saved folder, an official .pt, or "default" (bundled)
    patch_size: tuple[int, int, int] = (1, 1, 1)  # the adapted transformer's patch (t, h, w)
    gradient_checkpointing: bool = False  # recompute each Wan block in backward (stages 1b and 2)


@dataclass
class DataConfig:
    source: str = ""  # captioned clips: a folder (clip.mp4 + clip.txt) or a .csv / .jsonl manifest
    cache: str = ""  # where `dcvg adapt cache` writes the latents (sharded safetensors + index.json)
    num_frames: int = 80  # DC-AE-V pixel frames per clip, a multiple of 4 (80 -> 20 latent frames)
    height: int = 480
    width: int = 832
    # exact: Wan reads frames 0..4k (1 + 4k), DC-AE-V frames 1..4k, Wan's latent frame 0 dropped, so latent
    # frames cover the same pixels; authors: Wan frames 0..4k-4 (77 for 80), DC-AE-V 0..4k-1, a few frames off.
    pairing: str = "exact"
    frame_stride: int = 1  # take every k-th frame of the source clip
    shard_size: int = 32  # clips per cache shard
    cache_dtype: str = "bf16"  # bf16 | fp32: the dtype of the cached latents and text embeddings
    text_tokens: int = 512  # UMT5 tokens, as Wan was trained
    holdout: int = 2  # the last N cached clips are held out: validation loss and the stage-1a held-out MSE
    caption_dropout: float = 0.1  # captions replaced by the unconditional embedding (stages 1b and 2)
    workers: int = 0  # DataLoader workers per rank when reading the cache
    val_prompts: list[str] = field(
        default_factory=list
    )  # sample videos at validation (encoded at cache time)
    val_images: list[str] = field(default_factory=list)  # I2V: first frames for the sample videos, one each
    # Aspect-ratio / frame-count buckets of stages 1a, 1b and 2: [pixel frames, height, width] each, e.g.
    # [[80, 480, 832], [80, 832, 480], [40, 480, 832]]; empty: the one shape [num_frames, height, width].
    # Each clip is cached at one bucket's shape and every batch comes from one bucket.
    buckets: list[tuple[int, int, int]] = field(default_factory=list)

    def shapes(self) -> list[Shape]:
        """The base stages' buckets: `buckets`, or the one shape (num_frames, height, width)."""
        return [tuple(b) for b in self.buckets] or [(self.num_frames, self.height, self.width)]


@dataclass
class FlowConfig:
    """Wan's flow matching (FACTS section 3): x_t = (1 - s) x0 + s eps, target eps - x0, t = 1000 s."""

    shift: float = 5.0  # sigma' = shift * sigma / (1 + (shift - 1) sigma); the notes: 8.0 (T2V) / 5.0 (I2V)
    sampling: str = "uniform"  # uniform | logit_normal
    logit_mean: float = 0.0
    logit_std: float = 1.0
    val_sigmas: list[float] = field(default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 0.9])  # held-out loss grid


@dataclass
class AlignEmbedderConfig:
    """Stage 1a, patch embedder alignment (Eq. 2): MSE(e_new, avgpool(e_base)) on clean latents."""

    enabled: bool = True  # false: a random (xavier) embedder, as Open-Sora 2.0 did (Fig. 6 ablation)
    method: str = "exact"  # exact: closed-form least squares over the cache | adamw: the paper's loop
    ridge: float = 1e-6  # exact: ridge term, relative to the mean diagonal of the input Gram matrix
    steps: int = 20000  # adamw
    batch_size: int = 4  # adamw, per rank (exact: clips per pass)
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0


@dataclass
class AlignHeadConfig:
    """Stage 1b, output head alignment: embedder + head train on the flow-matching loss, blocks frozen."""

    enabled: bool = True  # false: keep the zero-initialised head (Fig. 11 ablation)
    steps: int = 4000  # budget (paper: 4k for 1.3B, 3k for 14B)
    batch_size: int = 1  # per rank
    grad_accum: int = 1
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float = 0.1
    train_modulation: bool = True  # also train the head's scale_shift_table (the authors' notes do)
    train_embedder: bool = True
    # Plateau rule: stop when the EMA-smoothed loss has not improved by `plateau_tolerance` (relative) for
    # `plateau_patience` steps; 0 disables it.
    plateau_patience: int = 500
    plateau_tolerance: float = 0.01
    plateau_smoothing: float = 0.98


@dataclass
class FinetuneConfig:
    """Stage 2, end-to-end LoRA fine-tuning (Table 8)."""

    enabled: bool = True
    steps: int = 20000  # paper: 20k for 1.3B, 6k for 14B
    batch_size: int = 1  # per rank
    grad_accum: int = 1
    lr: float = 5e-5
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-3
    warmup_steps: int = 1000
    grad_clip: float = 0.1
    lora_rank: int = 256
    lora_alpha: float = 512.0
    lora_targets: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))
    lora_cross_attention: bool = True  # false: no LoRA on attn2 (the authors' notes)
    full_finetune: bool = False  # train every weight instead of LoRA (Fig. 8 comparison)
    ema_decay: float = 0.0  # > 0 keeps an EMA of the trained weights, exported instead of the raw ones


@dataclass
class ResolutionStageConfig:
    """A resolution-increase stage (Table 8: 480px -> 720px 1000 steps, 720px -> 1080px 500, 1080px -> 2160px
    200): stage 2 continued on `buckets` with the same LoRA (or full weights), its optimiser state and EMA.
    Settings left unset are stage 2's (`finetune`)."""

    name: str = ""  # `--stage NAME`, the log prefix, and the cache folder data.cache/NAME
    steps: int = 1000
    buckets: list[tuple[int, int, int]] = field(default_factory=list)  # [pixel frames, height, width] each
    lr: float | None = None  # default: finetune.lr
    warmup_steps: int = 0  # linear warm-up from the stage's start (the optimiser state carries over)
    batch_size: int | None = None  # per rank; default: finetune.batch_size
    grad_accum: int | None = None  # default: finetune.grad_accum
    ema_decay: float | None = None  # default: finetune.ema_decay (the EMA continues)
    optimizer: str = "continue"  # continue: stage 2's AdamW moments and step counts carry over | reset
    max_clips: int = 0  # cache at most this many clips for the stage, spread over the clip list (0: all)


@dataclass
class AdaptConfig:
    seed: int = 0
    precision: str = "bf16"  # bf16 (autocast, float32 master weights) | fp32
    parallel: str = "ddp"  # ddp | fsdp, with several processes
    context_parallel: int = 1  # processes sharing one clip's tokens (docs/parallel.md)
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    val_every: int = 500
    val_steps: int = 20  # sampling steps of the validation videos
    val_guidance: float = 5.0
    max_bad_steps: int = 5  # stop after this many non-finite losses in a row
    tensorboard: bool = True
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    align_embedder: AlignEmbedderConfig = field(default_factory=AlignEmbedderConfig)
    align_head: AlignHeadConfig = field(default_factory=AlignHeadConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    resolution_stages: list[ResolutionStageConfig] = field(
        default_factory=list
    )  # run after finetune, in order

    @property
    def latent_frames(self) -> int:
        return self.data.num_frames // 4

    def training_shapes(self) -> list[tuple[str, list[tuple[int, int, int]]]]:
        """(stage name, [(pixel frames, height, width), ...]) for each enabled training stage in order: the
        video shapes its batches come in (one bucket per batch). Stage 1a aligns on the cached shapes too."""
        return [(name, self.stage_shapes(name)) for name in self.enabled_stages()]

    def enabled_stages(self) -> list[str]:
        """The stages a run goes through, in order: the enabled base stages, then every resolution stage."""
        on = (self.align_embedder.enabled, self.align_head.enabled, self.finetune.enabled)
        return [name for name, e in zip(STAGES, on) if e] + [r.name for r in self.resolution_stages]

    def stage_names(self) -> list[str]:
        """Every stage `--stage` accepts, enabled or not, in run order."""
        return list(STAGES) + [r.name for r in self.resolution_stages]

    def stage_index(self, name: str) -> int:
        """The stage's place in `stage_names()`: it seeds the stage's data stream, noise and LoRA init."""
        return self.stage_names().index(name)

    def resolution_stage(self, name: str) -> ResolutionStageConfig | None:
        return next((r for r in self.resolution_stages if r.name == name), None)

    def stage_shapes(self, name: str) -> list[Shape]:
        """The buckets stage `name` trains on: a resolution stage's own, else `data.shapes()`."""
        r = self.resolution_stage(name)
        return [tuple(b) for b in r.buckets] if r is not None else self.data.shapes()

    def stage_settings(self, name: str) -> AlignHeadConfig | FinetuneConfig:
        """The optimiser settings of stage 1b or 2, or of a resolution stage: stage 2's with the stage's own
        steps, lr, warm-up, batch, accumulation and EMA decay."""
        if name == "align-head":
            return self.align_head
        r = self.resolution_stage(name)
        if r is None:
            return self.finetune
        f = self.finetune
        return dataclasses.replace(
            f,
            steps=r.steps,
            lr=f.lr if r.lr is None else r.lr,
            warmup_steps=r.warmup_steps,
            batch_size=f.batch_size if r.batch_size is None else r.batch_size,
            grad_accum=f.grad_accum if r.grad_accum is None else r.grad_accum,
            ema_decay=f.ema_decay if r.ema_decay is None else r.ema_decay,
        )

    def validate(self) -> None:
        d, m = self.data, self.model
        checks = [
            (m.task in ("t2v", "i2v"), f"model.task={m.task!r}: use t2v or i2v"),
            (self.precision in ("fp32", "bf16"), f"precision={self.precision!r}: use fp32 or bf16"),
            (self.parallel in ("ddp", "fsdp"), f"parallel={self.parallel!r}: use ddp or fsdp"),
            (self.context_parallel >= 1, f"context_parallel={self.context_parallel}: must be at least 1"),
            (
                d.num_frames >= 4 and d.num_frames % 4 == 0,
                f"data.num_frames={d.num_frames} must be a positive multiple of 4 (DC-AE-V: 4x in time)",
            ),
            (d.pairing in ("exact", "authors"), f"data.pairing={d.pairing!r}: use exact or authors"),
            (d.height >= 32 and d.width >= 32, f"data.height/width {d.height}x{d.width}: at least 32"),
            (
                d.height % 32 == 0 and d.width % 32 == 0,
                f"data size {d.height}x{d.width}: use multiples of 32",
            ),
            (d.frame_stride >= 1 and d.shard_size >= 1, "data.frame_stride and data.shard_size must be >= 1"),
            (0 <= d.caption_dropout < 1, f"data.caption_dropout={d.caption_dropout} must be in [0, 1)"),
            (d.holdout >= 0, f"data.holdout={d.holdout} must be >= 0"),
            (len(m.patch_size) == 3 and min(m.patch_size) >= 1, f"model.patch_size={m.patch_size}"),
            (
                self.flow.sampling in ("uniform", "logit_normal"),
                f"flow.sampling={self.flow.sampling!r}: uniform or logit_normal",
            ),
            (self.flow.shift > 0, f"flow.shift={self.flow.shift} must be > 0"),
            (
                self.align_embedder.method in ("exact", "adamw"),
                f"align_embedder.method={self.align_embedder.method!r}: exact or adamw",
            ),
            (self.finetune.lora_rank >= 1, f"finetune.lora_rank={self.finetune.lora_rank} must be >= 1"),
            (
                min(self.checkpoint_every, self.log_every, self.val_every) >= 1,
                "checkpoint_every, log_every and val_every must be >= 1",
            ),
        ]
        for stage in (self.align_embedder, self.align_head, self.finetune):
            checks.append(
                (stage.steps >= 1 and stage.batch_size >= 1, "stage steps and batch_size must be >= 1")
            )
        for ok, message in checks:
            if not ok:
                raise DCVGError(f"adapt config: {message}")
        check_buckets(self.data.shapes(), "data.buckets", m.patch_size)
        self._validate_resolution_stages()
        if m.task == "i2v" and d.val_prompts and len(d.val_images) != len(d.val_prompts):
            raise DCVGError(
                f"adapt config: {len(d.val_prompts)} data.val_prompts but {len(d.val_images)} data.val_images; "
                "I2V sample videos need one first frame per prompt"
            )

    def _validate_resolution_stages(self) -> None:
        seen: set[str] = set()
        for i, r in enumerate(self.resolution_stages):
            where = f"resolution_stages[{i}]" + (f" ({r.name})" if r.name else "")
            checks = [
                (
                    bool(STAGE_NAME.match(r.name)),
                    f"name {r.name!r}: give a name of letters, digits, '.', '_' or '-' (e.g. 720p); it names "
                    "the stage's cache folder",
                ),
                (r.name not in STAGES, f"name {r.name!r} is a base stage's; choose another, e.g. 720p"),
                (r.name not in seen, f"name {r.name!r} is used twice; give each stage its own name"),
                (bool(r.buckets), "no buckets; give [[frames, height, width], ...]"),
                (r.steps >= 1, f"steps={r.steps} must be >= 1"),
                (r.lr is None or r.lr > 0, f"lr={r.lr} must be > 0"),
                (r.warmup_steps >= 0 and r.max_clips >= 0, "warmup_steps and max_clips must be >= 0"),
                (
                    (r.batch_size or 1) >= 1 and (r.grad_accum or 1) >= 1,
                    "batch_size and grad_accum must be >= 1",
                ),
                (r.ema_decay is None or 0 <= r.ema_decay < 1, f"ema_decay={r.ema_decay} must be in [0, 1)"),
                (r.optimizer in ("continue", "reset"), f"optimizer={r.optimizer!r}: use continue or reset"),
            ]
            for ok, message in checks:
                if not ok:
                    raise DCVGError(f"adapt config: {where}: {message}")
            seen.add(r.name)
            check_buckets([tuple(b) for b in r.buckets], f"{where}.buckets", self.model.patch_size)

    def require(self, *keys: str) -> None:
        """DCVGError naming each empty path setting among `keys` ("model.base", "data.cache", ...)."""
        for key in keys:
            section, name = key.split(".")
            if not getattr(getattr(self, section), name):
                raise DCVGError(f"adapt config: {key} is not set; give it in the YAML or as {key}=PATH")


def check_buckets(shapes: list[Shape], where: str, patch_size) -> None:
    """DCVGError unless every bucket is (frames, height, width) on the latent grid of DC-AE-V f32t4 and the
    adapted patch: frames a multiple of 4 * patch_t, height and width of 32 * patch_h / patch_w, at least one
    patch; and no two buckets of the same aspect ratio and frame count (a clip could go to either)."""
    pt, ph, pw = patch_size
    fm, hm, wm = TEMPORAL_FACTOR * pt, SPATIAL_FACTOR * ph, SPATIAL_FACTOR * pw
    seen: dict[tuple[float, int], Shape] = {}
    for shape in shapes:
        if len(shape) != 3:
            raise DCVGError(f"adapt config: {where}: {list(shape)} is not [frames, height, width]")
        f, h, w = shape
        if f < fm or f % fm or h < hm or h % hm or w < wm or w % wm:
            raise DCVGError(
                f"adapt config: {where}: {f}x{h}x{w} is off the latent grid; frames must be a positive multiple of "
                f"{fm}, height of {hm} and width of {wm} (DC-AE-V f32t4, patch {tuple(patch_size)}), e.g. 720 -> 704"
            )
        key = (round(math.log(w / h), 9), f)
        if key in seen:
            a = seen[key]
            raise DCVGError(
                f"adapt config: {where}: {a[0]}x{a[1]}x{a[2]} and {f}x{h}x{w} have the same aspect ratio and frame "
                "count, so a clip could go to either; keep one"
            )
        seen[key] = shape


def load_adapt_config(path: str | Path | None, overrides: list[str] = ()) -> AdaptConfig:
    """AdaptConfig from a YAML file (or the defaults) plus `section.key=value` overrides; validated."""
    return load_typed_config(AdaptConfig, path, overrides, "configs/adapt/")
