"""`dcvg bench ae`: encode and decode time and peak memory of video autoencoders at the same clip sizes.

Autoencoders come through the evaluation adapters (`dcvideogen.evaluation.adapters`), so each pads a clip
to the frame count and size it accepts and normalises its latents as its pipelines do. Named models are
built with random weights straight on the device (weights do not change the time); a path loads trained
weights. Modes: one-shot (the whole clip at once), streaming (piece by piece with cached temporal
context) and tiled (streaming plus spatial tiles); an autoencoder without a mode says so in its row.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch

from ..errors import DCVGError
from ..evaluation.adapters import DCAEVAdapter, VideoAutoencoder, WanAdapter, load_video_autoencoder
from ..models.dcae_v import PRESETS, AutoencoderDCV
from .measure import (
    GIB,
    MIB,
    PeakMemory,
    Timing,
    build_random,
    count_parameters,
    free_memory,
    is_out_of_memory,
    parameter_bytes,
    release_memory,
    time_call,
)
from .report import finish_axes, markdown_table, new_figure
from .sizes import ClipSize

logger = logging.getLogger("dcvg")

FIT_FRACTION = 0.9


class AEMode(str, Enum):
    ONE_SHOT = "one-shot"
    STREAMING = "streaming"
    TILED = "tiled"


# ---- the autoencoders a name stands for ------------------------------------------------------------------


def _wan_tiny():
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
    )


def _wan_21():
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan()  # diffusers' default config is the Wan 2.1 VAE (f8t4c16)


@dataclass(frozen=True)
class AESpec:
    """A named autoencoder with random weights: how to build the model and wrap it in its adapter."""

    name: str
    factory: Callable[[], torch.nn.Module]
    adapter: Callable[[torch.nn.Module, str], VideoAutoencoder]
    description: str


def ae_registry() -> dict[str, AESpec]:
    specs = {
        name: AESpec(
            name, functools.partial(AutoencoderDCV.from_preset, name), DCAEVAdapter, f"DC-AE-V {cfg.name}"
        )
        for name, cfg in PRESETS.items()
    }
    specs["wan-2.1"] = AESpec("wan-2.1", _wan_21, WanAdapter, "Wan 2.1 VAE (diffusers AutoencoderKLWan)")
    specs["wan-tiny"] = AESpec("wan-tiny", _wan_tiny, WanAdapter, "tiny AutoencoderKLWan for tests")
    return specs


def load_bench_autoencoder(spec: str, device: torch.device, dtype: torch.dtype) -> VideoAutoencoder:
    """A registry name (random weights, built on the device) or a model folder / checkpoint (its weights)."""
    registry = ae_registry()
    if spec not in registry:
        try:
            return load_video_autoencoder(spec, device=device, dtype=dtype)
        except (DCVGError, OSError) as e:
            raise DCVGError(
                f"--ae {spec}: not a known autoencoder ({', '.join(registry)}) and not loadable as a model "
                f"folder or checkpoint ({e})"
            ) from e
    entry = registry[spec]
    weights = count_parameters(entry.factory) * (torch.finfo(dtype).bits // 8)
    free = free_memory(device)
    if weights > FIT_FRACTION * free:
        raise DCVGError(
            f"--ae {spec}: its weights need {weights / GIB:.1f} GiB but {free / GIB:.1f} GiB are free on "
            f"{device}; use a smaller autoencoder or a larger device"
        )
    return entry.adapter(build_random(entry.factory, device, dtype), spec)


# ---- modes -----------------------------------------------------------------------------------------------


def configure(ae: VideoAutoencoder, mode: AEMode, tile: int, overlap: int) -> str | None:
    """Put the autoencoder in `mode`; return how it then runs (for the table), or None if it has no such mode."""
    model = getattr(ae, "model", None)
    if model is None:  # an adapter that does not expose its model: only its own default way to run
        return "the adapter's default" if mode is AEMode.ONE_SHOT else None
    if isinstance(ae, DCAEVAdapter):
        model.memory_budget = 2**62  # the bench chooses the mode: no automatic tiling behind its back
        if mode is AEMode.ONE_SHOT:
            model.disable_streaming()
            model.disable_tiling()
            return "whole clip at once"
        model.enable_streaming()
        if mode is AEMode.STREAMING:
            model.disable_tiling()
            return f"{model.stream_frames}-frame pieces, cached context"
        try:
            model.enable_tiling(tile, overlap)
        except ValueError as e:
            raise DCVGError(f"--tile {tile} --tile-overlap {overlap}: {e}") from e
        return f"{model.stream_frames}-frame pieces, {tile} px tiles, overlap {overlap}"
    causal_cache = isinstance(ae, WanAdapter)  # Wan's VAE always runs a few frames at a time with a cache
    if mode is (AEMode.ONE_SHOT if causal_cache else AEMode.STREAMING):
        return None
    if mode is not AEMode.TILED:
        if hasattr(model, "disable_tiling"):
            model.disable_tiling()
        return "causal cache, 4 frames a step" if causal_cache else "the model's own default"
    if not hasattr(model, "enable_tiling"):
        return None
    try:  # the argument names of diffusers' video autoencoders (Wan, LTX, Hunyuan, Cog ...)
        model.enable_tiling(
            tile_sample_min_height=tile,
            tile_sample_min_width=tile,
            tile_sample_stride_height=tile - overlap,
            tile_sample_stride_width=tile - overlap,
        )
    except TypeError:
        model.enable_tiling()
        return "the model's default tiles"
    return f"{tile} px tiles, overlap {overlap}" + (", causal cache" if causal_cache else "")


def estimated_bytes(ae: VideoAutoencoder, mode: AEMode, frames: int, height: int, width: int) -> int | None:
    """Peak activation estimate of a DC-AE-V for one encode or decode in `mode` (None for other models)."""
    if not isinstance(ae, DCAEVAdapter):
        return None
    model = ae.model
    piece = frames if mode is AEMode.ONE_SHOT else min(frames, model.stream_frames)
    if mode is AEMode.TILED:
        height, width = min(height, model.tile_size), min(width, model.tile_size)
    return max(model.activation_bytes(piece, height, width, decoder=d) for d in (False, True))


# ---- the bench -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AEBenchSettings:
    autoencoders: tuple[str, ...]
    clips: tuple[ClipSize, ...]
    modes: tuple[AEMode, ...]
    device: torch.device
    dtype: torch.dtype
    tile: int = 256
    tile_overlap: int = 64
    warmup: int = 1
    repeats: int = 3
    budget_s: float | None = 120.0

    def describe(self) -> dict[str, object]:
        return {
            "autoencoders": ",".join(self.autoencoders),
            "modes": ",".join(m.value for m in self.modes),
            "dtype": str(self.dtype).removeprefix("torch."),
            "tile": f"{self.tile} px, overlap {self.tile_overlap}",
            "warmup": self.warmup,
            "repeats": self.repeats,
            "budget_s": self.budget_s,
        }


def _measure(fn: Callable[[], object], s: AEBenchSettings) -> tuple[Timing, int | None]:
    with PeakMemory(s.device) as mem:
        timing = time_call(fn, s.device, s.warmup, s.repeats, s.budget_s)
    return timing, mem.peak_bytes


def _bench_one(ae: VideoAutoencoder, clip: ClipSize, mode: AEMode, s: AEBenchSettings) -> dict[str, Any]:
    frames = ae.valid_num_frames(clip.frames)
    height, width = ae.valid_size(clip.height, clip.width)
    row: dict[str, Any] = {"autoencoder": ae.name, "notation": ae.notation, "mode": mode.value}
    row.update(height=clip.height, width=clip.width, frames=clip.frames, frames_run=frames)
    row.update(size_run=f"{height}x{width}", how=None, latent_shape=None, status="ok")
    how = configure(ae, mode, s.tile, s.tile_overlap)
    if how is None:
        return {**row, "status": f"n/a: {ae.name} has no {mode.value} mode"}
    row["how"] = how
    need, free = estimated_bytes(ae, mode, frames, height, width), free_memory(s.device)
    if need is not None and need > FIT_FRACTION * free:
        return {
            **row,
            "status": f"skipped: needs ~{need / GIB:.1f} GiB of activations, {free / GIB:.1f} GiB free",
        }
    g = torch.Generator(device=s.device).manual_seed(0)
    x = torch.rand(1, 3, frames, height, width, generator=g, device=s.device, dtype=s.dtype) * 2 - 1
    out: dict[str, torch.Tensor] = {}

    def encode() -> None:
        out.clear()  # the previous call's output is not kept alive during this one
        with torch.inference_mode():
            out["z"] = ae.encode(x)  # (B, Z, T', h, w)

    def decode() -> None:
        out.clear()
        with torch.inference_mode():
            out["y"] = ae.decode(z)  # (B, 3, T, H, W)

    oom = False
    try:
        enc, enc_peak = _measure(encode, s)
        z = out["z"].clone()
        out.clear()
        dec, dec_peak = _measure(decode, s)
    except RuntimeError as e:
        if not is_out_of_memory(e):
            raise
        oom = True  # the error (and its traceback's tensors) is released when this block ends
    if oom:
        out.clear()
        release_memory(s.device, collect=True)
        return {**row, "status": "out of memory"}
    row["latent_shape"] = tuple(z.shape[1:])
    for key, t, peak in (("encode", enc, enc_peak), ("decode", dec, dec_peak)):
        row[f"{key}_median_ms"] = t.median_s * 1e3
        row[f"{key}_min_ms"] = t.min_s * 1e3
        row[f"{key}_repeats"] = len(t.samples)
        row[f"{key}_frames_per_s"] = frames / t.median_s
        row[f"{key}_peak_mib"] = peak / MIB if peak is not None else None
    return row


def run_ae_bench(s: AEBenchSettings) -> list[dict[str, Any]]:
    rows = []
    for spec in s.autoencoders:
        ae = load_bench_autoencoder(spec, s.device, s.dtype)
        model = getattr(ae, "model", None)
        weights = parameter_bytes(model) if isinstance(model, torch.nn.Module) else None
        logger.info(f"{spec}: {ae.notation}" + (f", {weights / GIB:.2f} GiB of weights" if weights else ""))
        for clip in s.clips:
            for mode in s.modes:
                row = _bench_one(ae, clip, mode, s)
                release_memory(s.device)  # the clip, latent and outputs of that measurement
                row["weights_gib"] = weights / GIB if weights is not None else None
                rows.append(row)
                status = (
                    row["status"]
                    if row["status"] != "ok"
                    else (
                        f"encode {row['encode_median_ms']:,.1f} ms, decode {row['decode_median_ms']:,.1f} ms"
                    )
                )
                logger.info(f"  {spec} {clip.label} {mode.value}: {status}")
        del ae
        release_memory(s.device, collect=True)
    return rows


def ae_table(rows: Sequence[dict[str, Any]]) -> str:
    headers = [
        "autoencoder",
        "mode",
        "clip HxWxF",
        "frames run",
        "latent (C,T,H,W)",
        "encode ms",
        "decode ms",
    ]
    headers += ["encode peak MiB", "decode peak MiB", "enc / dec frames/s", "how / status"]
    table = []
    for r in rows:
        ok = r["status"] == "ok"
        peaks = [
            f"{r[k]:,.1f}" if ok and r[k] is not None else "-" for k in ("encode_peak_mib", "decode_peak_mib")
        ]
        table.append(
            [
                f"{r['autoencoder']} ({r['notation']})",
                r["mode"],
                f"{r['height']}x{r['width']}x{r['frames']}",
                r["frames_run"],
                "x".join(map(str, r["latent_shape"])) if r["latent_shape"] else "-",
                f"{r['encode_median_ms']:,.1f}" if ok else "-",
                f"{r['decode_median_ms']:,.1f}" if ok else "-",
                *peaks,
                f"{r['encode_frames_per_s']:,.1f} / {r['decode_frames_per_s']:,.1f}" if ok else "-",
                r["how"] if ok else r["status"],
            ]
        )
    return markdown_table(headers, table)


def ae_figure(rows: Sequence[dict[str, Any]]) -> Any:
    """Encode + decode time against frames, and peak memory against frames, one line per model/mode/size."""
    fig, (ax_time, ax_mem) = new_figure(2)
    groups = sorted(
        {(r["autoencoder"], r["mode"], r["height"], r["width"]) for r in rows if r["status"] == "ok"}
    )
    for name, mode, h, w in groups:
        sel = sorted(
            (r for r in rows if (r["autoencoder"], r["mode"], r["height"], r["width"]) == (name, mode, h, w)),
            key=lambda r: r["frames"],
        )
        sel = [r for r in sel if r["status"] == "ok"]
        label = f"{name} {mode} {h}x{w}"
        frames = [r["frames_run"] for r in sel]
        ax_time.plot(
            frames, [(r["encode_median_ms"] + r["decode_median_ms"]) / 1e3 for r in sel], "o-", label=label
        )
        mem = [
            (f, max(r["encode_peak_mib"], r["decode_peak_mib"]))
            for f, r in zip(frames, sel)
            if r["encode_peak_mib"] is not None and r["decode_peak_mib"] is not None
        ]
        if mem:
            ax_mem.plot(*zip(*mem), "o-", label=label)
    ax_time.set(xlabel="frames", ylabel="encode + decode seconds (median)", title="autoencoder latency")
    ax_mem.set(xlabel="frames", ylabel="peak MiB (max of encode, decode)", title="autoencoder peak memory")
    finish_axes(ax_time, ax_mem)
    return fig
