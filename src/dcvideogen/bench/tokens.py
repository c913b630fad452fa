"""`dcvg bench tokens`: the cost model's table (tokens, TFLOP per forward, FLOP ratio) over clip sizes,
with the paper's measured speedups beside it. Pure arithmetic: instant, no GPU."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .cost_model import WAN_VAE_LAYOUT, GridRounding, LatentLayout, compare, video_seconds
from .paper import PAPER_STEPS, paper_latency
from .report import finish_axes, markdown_table, new_figure, plot_ratios
from .sizes import ClipSize
from .wan import WanConfig

TERA = 1e12


def token_rows(
    model: WanConfig,
    clips: Sequence[ClipSize],
    adapted: LatentLayout,
    rounding: GridRounding = GridRounding.PAD,
    text_tokens: int = 512,
    steps: int = PAPER_STEPS,
    cfg: bool = False,
    peak_tflops: float | None = None,
) -> list[dict[str, Any]]:
    """One row per clip size; with `peak_tflops`, the FLOP-bound minutes per video (all FLOPs at the
    peak rate: a lower bound no implementation can beat)."""
    dims = model.dims(text_tokens)
    rows = []
    for clip in clips:
        c = compare(dims, clip.height, clip.width, clip.frames, WAN_VAE_LAYOUT, adapted, rounding)
        paper = paper_latency(model.name, clip.height, clip.width, clip.frames)
        row: dict[str, Any] = {
            "model": model.name,
            "height": clip.height,
            "width": clip.width,
            "frames": clip.frames,
            "base_frames": c.base_frames,
            "adapted_frames": c.adapted_frames,
            "base_token_grid": c.base_grid,
            "adapted_token_grid": c.adapted_grid,
            "base_tokens": c.base_tokens,
            "adapted_tokens": c.adapted_tokens,
            "token_ratio": c.base_tokens / c.adapted_tokens,
            "base_tflop": c.base_flops.total / TERA,
            "adapted_tflop": c.adapted_flops.total / TERA,
            "flop_ratio": c.flop_ratio,
            "base_attention_share": c.base_flops.attention_share,
            "adapted_attention_share": c.adapted_flops.attention_share,
            "paper_speedup": paper.speedup if paper else None,
        }
        if paper:  # the rate the paper's runs reached if each step made `cfg`-many forwards of these FLOPs
            for key, flops, minutes in (
                ("base", c.base_flops.total, paper.base_minutes),
                ("adapted", c.adapted_flops.total, paper.ours_minutes),
            ):
                forwards = video_seconds(1.0, PAPER_STEPS, cfg)
                row[f"paper_{key}_tflops_per_s"] = flops * forwards / (minutes * 60) / TERA
        if peak_tflops:
            for key, flops in (("base", c.base_flops.total), ("adapted", c.adapted_flops.total)):
                row[f"{key}_bound_minutes"] = video_seconds(flops / (peak_tflops * TERA), steps, cfg) / 60
        rows.append(row)
    return rows


def token_table(rows: Sequence[dict[str, Any]]) -> str:
    bound = "base_bound_minutes" in rows[0] if rows else False
    paper_rate = any("paper_base_tflops_per_s" in r for r in rows)
    headers = [
        "clip HxWxF",
        "frames base/ours",
        "token grid base",
        "token grid ours",
        "tokens base",
        "tokens ours",
    ]
    headers += ["TFLOP/fwd base", "TFLOP/fwd ours", "FLOP ratio", "attn share base/ours", "paper speedup"]
    if paper_rate:
        headers += ["paper TFLOP/s base / ours"]
    if bound:
        headers += ["bound min base", "bound min ours"]
    table = []
    for r in rows:
        line = [
            f"{r['height']}x{r['width']}x{r['frames']}",
            f"{r['base_frames']}/{r['adapted_frames']}",
            "x".join(map(str, r["base_token_grid"])),
            "x".join(map(str, r["adapted_token_grid"])),
            r["base_tokens"],
            r["adapted_tokens"],
            f"{r['base_tflop']:,.1f}",
            f"{r['adapted_tflop']:,.1f}",
            f"{r['flop_ratio']:.2f}x",
            f"{r['base_attention_share']:.0%}/{r['adapted_attention_share']:.0%}",
            f"{r['paper_speedup']:.1f}x" if r["paper_speedup"] else "-",
        ]
        if paper_rate:
            rates = (r.get("paper_base_tflops_per_s"), r.get("paper_adapted_tflops_per_s"))
            line += [f"{rates[0]:.0f} / {rates[1]:.0f}" if rates[0] else "-"]
        if bound:
            line += [f"{r['base_bound_minutes']:.2f}", f"{r['adapted_bound_minutes']:.2f}"]
        table.append(line)
    return markdown_table(headers, table)


def token_figure(rows: Sequence[dict[str, Any]]) -> Any:
    """FLOP ratio (and the paper's speedup) against resolution and frames; TFLOP per forward against frames."""
    fig, (ax_res, ax_frames, ax_flops) = new_figure(3)
    series = [("flop_ratio", "o-", "FLOP ratio"), ("paper_speedup", "s--", "paper speedup")]
    plot_ratios(ax_res, ax_frames, rows, series)
    ax_res.set_title("FLOP ratio per forward")
    ax_frames.set_title("FLOP ratio per forward")
    for res in sorted({(r["height"], r["width"]) for r in rows}):
        sel = sorted((r for r in rows if (r["height"], r["width"]) == res), key=lambda r: r["frames"])
        frames = [r["frames"] for r in sel]
        line = ax_flops.plot(frames, [r["base_tflop"] for r in sel], "o-", label=f"base {res[0]}x{res[1]}")
        color = line[0].get_color()
        ax_flops.plot(
            frames, [r["adapted_tflop"] for r in sel], "o--", color=color, label=f"ours {res[0]}x{res[1]}"
        )
    ax_flops.set(xlabel="frames", ylabel="TFLOP per forward", title="cost per forward", yscale="log")
    finish_axes(ax_flops)
    return fig
