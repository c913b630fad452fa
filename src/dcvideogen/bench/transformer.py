"""`dcvg bench transformer`: measured latency per forward of a Wan transformer on the base layout (Wan
VAE latents, patch 1x2x2) against the DC-VideoGen layout (DC-AE-V latents, patch 1), in one run.

Both are diffusers' `WanTransformer3DModel` as is, with random weights (weights do not change the time),
attention through PyTorch SDPA. Each layout's model is built straight on the device in the bench dtype,
used for every clip size, and freed before the next. A size whose estimated memory does not fit is
skipped with a line saying so; an out-of-memory error marks that size and the run goes on.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import DCVGError
from .cost_model import WAN_VAE_LAYOUT, GridRounding, LatentLayout, forward_flops, video_seconds
from .measure import (
    GIB,
    MIB,
    PeakMemory,
    Timing,
    build_random,
    count_parameters,
    free_memory,
    is_out_of_memory,
    release_memory,
    time_call,
)
from .paper import PAPER_STEPS, paper_latency
from .report import finish_axes, markdown_table, new_figure, plot_ratios
from .sizes import ClipSize
from .wan import WanConfig

logger = logging.getLogger("dcvg")

TERA = 1e12
FIT_FRACTION = 0.9  # use at most this share of the free memory

ATTENTION_BACKENDS = ("auto", "flash", "efficient", "cudnn", "math")


@dataclass(frozen=True)
class TransformerBenchSettings:
    model: WanConfig
    adapted: LatentLayout  # DC-AE-V layout; the base is always WAN_VAE_LAYOUT
    clips: tuple[ClipSize, ...]
    device: torch.device
    dtype: torch.dtype
    warmup: int = 2
    repeats: int = 5
    budget_s: float | None = 120.0  # per clip size and layout
    compile: bool = False
    compile_mode: str = "default"
    attention: str = "auto"
    text_tokens: int = 512
    rounding: GridRounding = GridRounding.PAD
    steps: int = PAPER_STEPS
    cfg: bool = False
    peak_tflops: float | None = None  # the device's FLOP bound; None: no fraction reported

    def describe(self) -> dict[str, object]:
        return {
            "model": self.model.name,
            "adapted": self.adapted.name,
            "dtype": str(self.dtype).removeprefix("torch."),
            "attention": f"SDPA ({self.attention})",
            "compile": self.compile_mode if self.compile else "off",
            "warmup": self.warmup,
            "repeats": self.repeats,
            "budget_s": self.budget_s,
            "text_tokens": self.text_tokens,
            "rounding": self.rounding.value,
            "steps": self.steps,
            "cfg": self.cfg,
            "peak_tflops": float(f"{self.peak_tflops:.4g}") if self.peak_tflops else None,
        }


@dataclass(frozen=True)
class PointResult:
    """One layout at one clip size."""

    latent_grid: tuple[int, int, int]
    tokens: int
    flops: float
    status: str  # "ok", or why it was not measured
    timing: Timing | None = None
    peak_bytes: int | None = None


def activation_bytes(
    cfg: WanConfig, tokens: int, text_tokens: int, itemsize: int, attention: str = "auto"
) -> int:
    """Rough peak activation memory of one inference forward (bytes): one block's tensors live at a time.

    In `dtype`: the residual stream, the normalised input, q, k, v, the attention output and the block
    output (8·N·D), the feed-forward hidden before and after GELU (2·N·F); in float32: the LayerNorm
    temporaries (2·N·D) and the RoPE tables (2·N·head_dim). SDPA's fused kernels keep no N² matrix; the
    math kernel keeps two (scores and weights, heads·N² each).
    """
    n, d = tokens, cfg.hidden_dim
    dtype_part = (8 * n * d + 2 * n * cfg.ffn_dim + 2 * text_tokens * d) * itemsize
    if attention == "math":
        dtype_part += 2 * cfg.num_attention_heads * n * n * itemsize
    fp32_part = (2 * n * d + 2 * n * cfg.attention_head_dim) * 4
    return int(1.2 * (dtype_part + fp32_part))


def sdpa_context(attention: str) -> contextlib.AbstractContextManager:
    """Restrict PyTorch SDPA to one kernel family ('auto': let PyTorch choose)."""
    if attention == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "math": SDPBackend.MATH,
    }[attention]
    return sdpa_kernel([backend])


def _factory(cfg: WanConfig) -> Callable[[], torch.nn.Module]:
    from diffusers import WanTransformer3DModel

    kwargs = cfg.diffusers_kwargs()
    return lambda: WanTransformer3DModel(**kwargs)


def _cost(
    cfg: WanConfig, layout: LatentLayout, clip: ClipSize, s: TransformerBenchSettings
) -> tuple[tuple[int, int, int], int, float]:
    """(latent grid, tokens, FLOPs per forward) of one layout at one clip size."""
    grid = layout.latent_grid(clip.frames, clip.height, clip.width, s.rounding)
    tokens = layout.num_tokens(clip.frames, clip.height, clip.width, s.rounding)
    return grid, tokens, forward_flops(cfg.dims(s.text_tokens), tokens).total


def _bench_point(
    model: torch.nn.Module, cfg: WanConfig, layout: LatentLayout, clip: ClipSize, s: TransformerBenchSettings
) -> PointResult:
    grid, tokens, flops = _cost(cfg, layout, clip, s)
    itemsize = torch.finfo(s.dtype).bits // 8
    need = activation_bytes(cfg, tokens, s.text_tokens, itemsize, s.attention)
    free = free_memory(s.device)
    if need > FIT_FRACTION * free:
        return PointResult(
            grid,
            tokens,
            flops,
            f"skipped: needs ~{need / GIB:.1f} GiB of activations, {free / GIB:.1f} GiB free",
        )
    g = torch.Generator(device=s.device).manual_seed(0)
    x = torch.randn(1, cfg.in_channels, *grid, generator=g, device=s.device, dtype=s.dtype)  # (B, C, T, H, W)
    text = torch.randn(
        1, s.text_tokens, cfg.text_dim, generator=g, device=s.device, dtype=s.dtype
    )  # (B, L, C)
    timestep = torch.full((1,), 500.0, device=s.device)
    forward = model
    if s.compile:
        torch.compiler.reset()  # a fresh graph per size: no silent fall-back to eager at the recompile limit
        forward = torch.compile(
            model, mode=None if s.compile_mode == "default" else s.compile_mode, dynamic=False
        )

    def call() -> None:
        with torch.inference_mode(), sdpa_context(s.attention):
            forward(hidden_states=x, timestep=timestep, encoder_hidden_states=text, return_dict=False)

    try:
        with PeakMemory(s.device) as mem:
            timing = time_call(call, s.device, s.warmup, s.repeats, s.budget_s)
    except RuntimeError as e:
        if "No available kernel" in str(e):
            raise DCVGError(
                f"--attention {s.attention}: PyTorch has no such SDPA kernel for this device/dtype/shape; "
                "use --attention auto"
            ) from e
        if not is_out_of_memory(e):
            raise
        timing = None  # the error (and its traceback's tensors) is released when this block ends
    if timing is None:
        del x, text, call, forward
        release_memory(s.device, collect=True)
        return PointResult(grid, tokens, flops, "out of memory")
    return PointResult(grid, tokens, flops, "ok", timing, mem.peak_bytes)


def run_layout(
    cfg: WanConfig, layout: LatentLayout, s: TransformerBenchSettings
) -> dict[ClipSize, PointResult]:
    """Build the model for one layout and time it at every clip size."""
    factory = _factory(cfg)
    itemsize = torch.finfo(s.dtype).bits // 8
    weights, free = count_parameters(factory) * itemsize, free_memory(s.device)
    if weights > FIT_FRACTION * free:
        reason = f"skipped: weights need {weights / GIB:.1f} GiB, {free / GIB:.1f} GiB free"
        logger.warning(f"{cfg.name} on {layout.name}: {reason}")
        return {c: PointResult(*_cost(cfg, layout, c, s), reason) for c in s.clips}
    logger.info(f"building {cfg.name} for {layout.name}: {weights / itemsize / 1e9:.2f}B parameters, random")
    model = build_random(factory, s.device, s.dtype)
    results = {}
    for clip in s.clips:
        r = _bench_point(model, cfg, layout, clip, s)
        results[clip] = r
        timing = f"{r.timing.median_s * 1e3:,.1f} ms median" if r.timing else r.status
        logger.info(f"  {layout.name} {clip.label}: {r.tokens:,} tokens, {timing}")
    del model
    release_memory(s.device, collect=True)
    return results


def run_transformer_bench(s: TransformerBenchSettings) -> list[dict[str, Any]]:
    """Both layouts at every clip size; one row per clip size with base_*, adapted_* and the comparison."""
    base = run_layout(s.model, WAN_VAE_LAYOUT, s)
    adapted = run_layout(s.model.with_layout(s.adapted), s.adapted, s)
    rows = []
    for clip in s.clips:
        row: dict[str, Any] = {"model": s.model.name, "height": clip.height, "width": clip.width}
        row["frames"] = clip.frames
        for key, layout, r in (("base", WAN_VAE_LAYOUT, base[clip]), ("adapted", s.adapted, adapted[clip])):
            row.update(_layout_columns(key, layout, clip, r, s))
        row["flop_ratio"] = base[clip].flops / adapted[clip].flops
        b, a = base[clip].timing, adapted[clip].timing
        row["speedup"] = b.median_s / a.median_s if a and b else None
        paper = paper_latency(s.model.name, clip.height, clip.width, clip.frames)
        row["paper_base_minutes"] = paper.base_minutes if paper else None
        row["paper_adapted_minutes"] = paper.ours_minutes if paper else None
        row["paper_speedup"] = paper.speedup if paper else None
        rows.append(row)
    return rows


def _layout_columns(
    key: str, layout: LatentLayout, clip: ClipSize, r: PointResult, s: TransformerBenchSettings
) -> dict[str, Any]:
    t = r.timing
    achieved = r.flops / t.median_s / TERA if t else None
    return {
        f"{key}_frames": layout.pixel_frames(clip.frames),
        f"{key}_latent_grid": r.latent_grid,
        f"{key}_tokens": r.tokens,
        f"{key}_tflop": r.flops / TERA,
        f"{key}_status": r.status,
        f"{key}_median_ms": t.median_s * 1e3 if t else None,
        f"{key}_min_ms": t.min_s * 1e3 if t else None,
        f"{key}_max_ms": t.max_s * 1e3 if t else None,
        f"{key}_repeats": len(t.samples) if t else None,
        f"{key}_first_call_s": t.first_call_s if t else None,
        f"{key}_peak_mib": r.peak_bytes / MIB if r.peak_bytes is not None else None,
        f"{key}_tflops_per_s": achieved,
        f"{key}_bound_fraction": achieved / s.peak_tflops if achieved and s.peak_tflops else None,
        f"{key}_minutes_per_video": video_seconds(t.median_s, s.steps, s.cfg) / 60 if t else None,
    }


def _pair(row: dict[str, Any], column: str, spec: str) -> str:
    values = [row.get(f"{k}_{column}") for k in ("base", "adapted")]
    return " / ".join("-" if v is None else format(v, spec) for v in values)


def transformer_table(rows: Sequence[dict[str, Any]], steps: int, cfg: bool) -> str:
    per_video = f"min/video @{steps} steps{' x2 CFG' if cfg else ''} base / ours"
    headers = [
        "clip HxWxF",
        "tokens base / ours",
        "ms/fwd base / ours",
        "speedup",
        "FLOP ratio",
        "TFLOP/s base / ours",
    ]
    headers += [
        "% of bound base / ours",
        "peak MiB base / ours",
        per_video,
        "paper min base / ours",
        "paper speedup",
    ]
    table = []
    for r in rows:
        paper = (
            f"{r['paper_base_minutes']:.2f} / {r['paper_adapted_minutes']:.2f}" if r["paper_speedup"] else "-"
        )
        table.append(
            [
                f"{r['height']}x{r['width']}x{r['frames']}",
                _pair(r, "tokens", ","),
                _pair(r, "median_ms", ",.1f"),
                f"{r['speedup']:.2f}x" if r["speedup"] else "-",
                f"{r['flop_ratio']:.2f}x",
                _pair(r, "tflops_per_s", ",.3g"),
                _pair(r, "bound_fraction", ".0%"),
                _pair(r, "peak_mib", ",.1f"),
                _pair(r, "minutes_per_video", ",.3g"),
                paper,
                f"{r['paper_speedup']:.1f}x" if r["paper_speedup"] else "-",
            ]
        )
    return markdown_table(headers, table)


def skipped_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    lines = []
    for r in rows:
        for key in ("base", "adapted"):
            if r[f"{key}_status"] != "ok":
                lines.append(f"{key} {r['height']}x{r['width']}x{r['frames']}: {r[f'{key}_status']}")
    return lines


def transformer_figure(rows: Sequence[dict[str, Any]]) -> Any:
    """Speedup (measured, FLOP ratio, paper) against resolution and frames; latency per forward against frames."""
    fig, (ax_res, ax_frames, ax_lat) = new_figure(3)
    series = [
        ("speedup", "o-", "measured"),
        ("flop_ratio", "x:", "FLOP ratio"),
        ("paper_speedup", "s--", "paper (H100, TensorRT)"),
    ]
    plot_ratios(ax_res, ax_frames, rows, series)
    ax_res.set_title("transformer speedup")
    ax_frames.set_title("transformer speedup")
    for res in sorted({(r["height"], r["width"]) for r in rows}):
        sel = sorted((r for r in rows if (r["height"], r["width"]) == res), key=lambda r: r["frames"])
        color = None
        for key, style, name in (("base", "o-", "base"), ("adapted", "o--", "ours")):
            pts = [(r["frames"], r[f"{key}_median_ms"]) for r in sel if r[f"{key}_median_ms"] is not None]
            if pts:
                line = ax_lat.plot(*zip(*pts), style, color=color, label=f"{name} {res[0]}x{res[1]}")
                color = line[0].get_color()
    ax_lat.set(xlabel="frames", ylabel="ms per forward (median)", title="latency per forward", yscale="log")
    finish_axes(ax_lat)
    return fig
