"""Typed configuration of AE-Adapt-V (DC-VideoGen Sec. 3.3, Fig. 7, Table 8), read from YAML with
`section.key=value` overrides like the autoencoder trainer's.

One file drives the three commands: `dcvg adapt cache` reads `model` and `data`, `dcvg adapt train` runs
the stages in `align_embedder` (1a), `align_head` (1b) and `finetune` (2), `dcvg adapt export` reads the
run folder's resolved copy. Defaults are the paper's settings for Wan-2.1-T2V-1.3B; FACTS section 6 lists
where the authors' training notes differ (kept as options: `data.pairing=authors`, `align_embedder.
method=adamw` with `lr=2e-4 betas=[0.9,0.9]`, `finetune.lora_targets` without cross-attention, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DCVGError
from ..training.config import load_typed_config, save_config, to_dict

__all__ = [
    "STAGES",
    "AdaptConfig",
    "AlignEmbedderConfig",
    "AlignHeadConfig",
    "DataConfig",
    "FinetuneConfig",
    "FlowConfig",
    "ModelConfig",
    "load_adapt_config",
    "save_config",
    "to_dict",
]

# Stage names in order, as `--stage` takes them.
STAGES = ("align-embedder", "align-head", "finetune")

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
class AdaptConfig:
    seed: int = 0
    precision: str = "bf16"  # bf16 (autocast, float32 master weights) | fp32
    parallel: str = "ddp"  # ddp | fsdp, with several processes
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

    @property
    def latent_frames(self) -> int:
        return self.data.num_frames // 4

    def enabled_stages(self) -> list[str]:
        on = (self.align_embedder.enabled, self.align_head.enabled, self.finetune.enabled)
        return [name for name, e in zip(STAGES, on) if e]

    def validate(self) -> None:
        d, m = self.data, self.model
        checks = [
            (m.task in ("t2v", "i2v"), f"model.task={m.task!r}: use t2v or i2v"),
            (self.precision in ("fp32", "bf16"), f"precision={self.precision!r}: use fp32 or bf16"),
            (self.parallel in ("ddp", "fsdp"), f"parallel={self.parallel!r}: use ddp or fsdp"),
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
        if m.task == "i2v" and d.val_prompts and len(d.val_images) != len(d.val_prompts):
            raise DCVGError(
                f"adapt config: {len(d.val_prompts)} data.val_prompts but {len(d.val_images)} data.val_images; "
                "I2V sample videos need one first frame per prompt"
            )

    def require(self, *keys: str) -> None:
        """DCVGError naming each empty path setting among `keys` ("model.base", "data.cache", ...)."""
        for key in keys:
            section, name = key.split(".")
            if not getattr(getattr(self, section), name):
                raise DCVGError(f"adapt config: {key} is not set; give it in the YAML or as {key}=PATH")


def load_adapt_config(path: str | Path | None, overrides: list[str] = ()) -> AdaptConfig:
    """AdaptConfig from a YAML file (or the defaults) plus `section.key=value` overrides; validated."""
    return load_typed_config(AdaptConfig, path, overrides, "configs/adapt/")
