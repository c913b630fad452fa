"""Bench outputs: a printed markdown table with the machine and settings, and CSV + JSON + PNG files,
each written atomically. The PNG needs matplotlib (the eval extra); without it the rest is still written."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import DCVGError
from ..utils.atomic import atomic_file


def fmt(value: object, digits: int = 2) -> str:
    """A table cell: floats with `digits` significant decimals, None and NaN as '-'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        if value != 0 and abs(value) < 10 ** (-digits):
            return f"{value:.{digits}g}"
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A pipe table with aligned columns (cells already formatted as strings, or formatted by `fmt`)."""
    cells = [[c if isinstance(c, str) else fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda items: "| " + " | ".join(s.ljust(w) for s, w in zip(items, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in cells)])


def describe_run(title: str, machine: dict[str, object], settings: dict[str, object]) -> str:
    """Header printed above a result table: what ran, where, with which versions and settings."""
    lines = [f"## {title}", ""]
    lines.append("machine   " + "; ".join(f"{k} {v}" for k, v in machine.items()))
    lines.append("settings  " + "; ".join(f"{k} {v}" for k, v in settings.items()))
    return "\n".join(lines)


def prepare_out_dir(out: Path) -> Path:
    """The output folder, created if missing (its parent must exist)."""
    if out.exists() and not out.is_dir():
        raise DCVGError(f"--out {out}: exists and is a file; give a folder")
    if not out.exists():
        if not out.parent.is_dir():
            raise DCVGError(f"--out {out}: the folder {out.parent} does not exist; create it first")
        out.mkdir()
    return out


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_cell(v) for k, v in row.items()})


def _csv_cell(value: object) -> object:
    if isinstance(value, (tuple, list)):
        return "x".join(str(v) for v in value)
    return "" if value is None else value


def write_json(path: Path, payload: dict[str, Any]) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def write_png(path: Path, figure: Any) -> None:
    import matplotlib.pyplot as plt

    with atomic_file(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)


PNG_SKIPPED = "PNG skipped: matplotlib is not installed (pip install 'dcvideogen[eval]' to get it)"


def have_matplotlib() -> bool:
    """Whether the PNG plots can be drawn (matplotlib is imported here, not at module load)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def new_figure(panels: int) -> tuple[Any, list[Any]]:
    """A figure with `panels` side-by-side axes, drawn off-screen (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.2), squeeze=False)
    return fig, list(axes[0])


def write_outputs(
    out: Path, stem: str, rows: Sequence[dict[str, Any]], payload: dict[str, Any], figure: Any | None
) -> list[Path]:
    """`<out>/<stem>.csv`, `.json` (payload + rows) and `.png` (not when `figure` is None); returns the
    paths written."""
    out = prepare_out_dir(out)
    paths = [out / f"{stem}.csv", out / f"{stem}.json"]
    write_csv(paths[0], rows)
    write_json(paths[1], {**payload, "rows": list(rows)})
    if figure is not None:
        paths.append(out / f"{stem}.png")
        write_png(paths[2], figure)
    return paths


def plot_ratios(
    ax_res: Any, ax_frames: Any, rows: Sequence[dict[str, Any]], series: Sequence[tuple[str, str, str]]
) -> None:
    """Ratio columns against resolution (one line per frame count) and against frames (one line per
    resolution). `series`: (column, matplotlib style, label); rows where the column is None are left out."""
    for frames in sorted({r["frames"] for r in rows}):
        sel = sorted((r for r in rows if r["frames"] == frames), key=lambda r: r["height"] * r["width"])
        for column, style, label in series:
            pts = [(f"{r['height']}x{r['width']}", r[column]) for r in sel if r.get(column)]
            if pts:
                ax_res.plot(*zip(*pts), style, label=f"{label}, {frames} frames")
    for h, w in sorted({(r["height"], r["width"]) for r in rows}):
        sel = sorted((r for r in rows if (r["height"], r["width"]) == (h, w)), key=lambda r: r["frames"])
        for column, style, label in series:
            pts = [(r["frames"], r[column]) for r in sel if r.get(column)]
            if pts:
                ax_frames.plot(*zip(*pts), style, label=f"{label}, {h}x{w}")
    ax_res.set(xlabel="resolution (HxW)", ylabel="base / DC-VideoGen")
    ax_frames.set(xlabel="frames", ylabel="base / DC-VideoGen")
    finish_axes(ax_res, ax_frames)


def finish_axes(*axes: Any) -> None:
    """Grid, and a legend where something was drawn (an all-skipped run draws nothing)."""
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
