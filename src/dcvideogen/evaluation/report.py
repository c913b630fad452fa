"""The evaluation report: a table (markdown, CSV, JSON) with one row per autoencoder, the protocol,
software versions and detector hashes, a plot of PSNR against compression ratio, and side-by-side frames.

Everything is rendered in memory and written into a temporary folder renamed into place at the end, so
an error never leaves a partial report.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

from ..errors import DCVGError
from ..utils.atomic import atomic_dir
from .runner import Evaluation, ModelRun, median, summarize

PLOT_FILE = "psnr_vs_compression.png"
FILES = ("report.md", "results.csv", "results.json", PLOT_FILE)


# ---- numbers --------------------------------------------------------------------------------------------


def _mean(scores, metric: str) -> float | None:
    values = [getattr(s, metric) for s in scores]
    return None if not values or any(v is None for v in values) else summarize(values)


def long_rows(run: ModelRun) -> list[dict]:
    """Length generalisation: metrics on the first k x frames of each long-enough video, and the change
    from the protocol length on the same videos (first clip of each)."""
    base = {s.video: s for s in run.scores if s.clip == 0}
    rows = []
    for k, scores in sorted(run.long_scores.items()):
        same = [base[s.video] for s in scores]
        row = {"factor": k, "frames": scores[0].frames, "clips": len(scores)}
        for metric in ("psnr", "ssim", "lpips"):
            at_k, at_1 = _mean(scores, metric), _mean(same, metric)
            row[metric] = at_k
            row[f"{metric}_change"] = None if at_k is None or at_1 is None else at_k - at_1
        rows.append(row)
    return rows


def summary_row(run: ModelRun) -> dict:
    row = {
        "model": run.name,
        "config": run.notation,
        "class": run.kind,
        "compression_ratio": run.compression_ratio,
        "psnr": _mean(run.scores, "psnr"),
        "ssim": _mean(run.scores, "ssim"),
        "lpips": _mean(run.scores, "lpips"),
        "fvd": run.fvd,
        "encode_seconds_per_clip": median(run.encode_seconds),
        "decode_seconds_per_clip": median(run.decode_seconds),
        "clips": len(run.scores),
        "frame_rule": run.frame_rule,
        "padded_frames": run.padded_frames,
        "dtype": run.dtype,
        "device": run.device,
        "spec": run.spec,
    }
    for r in long_rows(run):
        k = r["factor"]
        for key in ("psnr", "psnr_change", "ssim", "ssim_change", "lpips", "lpips_change", "clips"):
            row[f"{key}_{k}x"] = r[key]
    return row


def _fmt(value, digits: int, signed: bool = False) -> str:
    if value is None:
        return "not computed"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _ratio(value: float) -> str:
    return f"{value:g}x"


# ---- markdown ---------------------------------------------------------------------------------------------


def markdown_table(result: Evaluation) -> str:
    lpips = f"LPIPS-{result.lpips['net']}" if result.lpips else "LPIPS"
    lines = [
        f"| model | config | compression | PSNR ↑ | SSIM ↑ | {lpips} ↓ | FVD ↓ | encode s/clip | decode s/clip |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in result.runs:
        r = summary_row(run)
        lines.append(
            f"| {r['model']} | {r['config']} | {_ratio(r['compression_ratio'])} | {_fmt(r['psnr'], 2)} | "
            f"{_fmt(r['ssim'], 4)} | {_fmt(r['lpips'], 4)} | {_fmt(r['fvd'], 2)} | "
            f"{_seconds(r['encode_seconds_per_clip'])} | {_seconds(r['decode_seconds_per_clip'])} |"
        )
    return "\n".join(lines)


def _long_table(result: Evaluation) -> list[str]:
    with_lpips = result.lpips is not None
    head = "| model | config | frames | clips | PSNR | Δ PSNR | SSIM | Δ SSIM |"
    rule = "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    lines = [
        head + " LPIPS | Δ LPIPS |" if with_lpips else head,
        rule + " ---: | ---: |" if with_lpips else rule,
    ]
    for run in result.runs:
        for r in long_rows(run):
            line = (
                f"| {run.name} | {run.notation} | {r['frames']} | {r['clips']} | {_fmt(r['psnr'], 2)} | "
                f"{_fmt(r['psnr_change'], 2, True)} | {_fmt(r['ssim'], 4)} | {_fmt(r['ssim_change'], 4, True)} |"
            )
            if with_lpips:
                line += f" {_fmt(r['lpips'], 4)} | {_fmt(r['lpips_change'], 4, True)} |"
            lines.append(line)
    return lines


def markdown_report(
    result: Evaluation, command: str | None = None, frame_files: list[str] | None = None
) -> str:
    p = result.config.protocol
    out = ["# Video autoencoder evaluation", ""]
    if command:
        out += ["```", command, "```", ""]
    out += [
        f"Data: `{result.data}`: {len(result.videos)} videos, {result.clips} clips evaluated, "
        f"{len(result.skipped)} unreadable (skipped), {len(result.too_short)} shorter than {p.frames} frames "
        f"(skipped). Took {result.seconds:.1f} s.",
        "",
        markdown_table(result),
        "",
    ]
    for metric, why in result.not_computed.items():
        out.append(f"- {metric.upper()}: {why}")
    if result.fvd and result.fvd.get("note"):
        out.append(f"- FVD: {result.fvd['note']}")
    out.append(
        "- Times are medians per clip of encode and decode separately (the first clip includes warm-up), "
        "on the device and dtype listed below."
    )
    out.append("")

    if p.long_factors:
        out += ["## Length generalisation", ""]
        out += [
            f"Each video long enough gives its first k x {p.frames} frames as one clip; Δ is the change from "
            f"the same videos' first {p.frames}-frame clip (PSNR/SSIM: negative is worse; LPIPS: positive is "
            "worse). FVD is computed at the protocol length only.",
            "",
        ]
        if any(run.long_scores for run in result.runs):
            out += [*_long_table(result), ""]
        else:
            out += [f"No video had {min(p.long_factors) * p.frames} frames or more.", ""]

    out += ["## Protocol", ""]
    for key, value in p.to_dict().items():
        out.append(f"- {key}: {value}")
    out += ["", "| model | class | frame rule | padded frames | dtype | device | source |"]
    out.append("| --- | --- | --- | ---: | --- | --- | --- |")
    for run in result.runs:
        out.append(
            f"| {run.name} | {run.kind} | {run.frame_rule} | {run.padded_frames} | {run.dtype} | {run.device} | "
            f"`{run.spec}` |"
        )
    out += ["", "## Metrics", ""]
    out.append(
        "- PSNR: per frame on the [0, 1] scale (data range 1, float64), averaged over frames, then over clips."
    )
    out.append(
        "- SSIM: Wang et al., Gaussian window 11x11, sigma 1.5, per channel, population covariance (matches "
        "`skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`), "
        "averaged over frames, then over clips."
    )
    if result.lpips:
        lp = result.lpips
        out.append(
            f"- LPIPS: {lp['description']}; per frame, averaged over frames then clips. Backbone sha256 "
            f"`{lp['backbone_sha256']}`, linear layers sha256 `{lp['linear_sha256']}`."
        )
    else:
        out.append(f"- LPIPS: {result.not_computed['lpips']}")
    if result.fvd:
        fv = result.fvd
        source = "read from the cache" if fv["reference_from_cache"] else "computed and cached"
        out.append(
            f"- FVD: {fv['description']}; detector sha256 `{fv['detector_sha256']}`. Reference (real clip) statistics "
            f"{source}: `{fv['reference_statistics']}`."
        )
    else:
        out.append(f"- FVD: {result.not_computed['fvd']}")

    if result.skipped or result.too_short:
        out += ["", "## Skipped videos", ""]
        out += [f"- `{name}`: unreadable: {why}" for name, why in result.skipped]
        out += [f"- `{name}`: {n} frames, fewer than {p.frames}" for name, n in result.too_short]

    out += ["", "## Environment", ""]
    out += [f"- {k}: {v}" for k, v in result.environment.items()]
    out += ["", "## Figures", "", f"![PSNR against compression ratio]({PLOT_FILE})", ""]
    for f in frame_files or []:
        out.append(f"![side by side]({f})")
    return "\n".join(out).rstrip() + "\n"


# ---- CSV and JSON ---------------------------------------------------------------------------------------


def csv_text(result: Evaluation) -> str:
    rows = [summary_row(run) for run in result.runs]
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: "" if r.get(k) is None else r[k] for k in columns})
    return buf.getvalue()


def json_report(result: Evaluation, command: str | None = None) -> dict:
    return {
        "command": command,
        "data": {
            "folder": result.data,
            "videos": len(result.videos),
            "clips": result.clips,
            "skipped_unreadable": [{"video": n, "reason": r} for n, r in result.skipped],
            "skipped_too_short": [{"video": n, "frames": f} for n, f in result.too_short],
        },
        "protocol": result.config.protocol.to_dict(),
        "metrics": {
            "psnr": "per frame, [0, 1] scale, data range 1; mean over frames then clips",
            "ssim": "Gaussian 11x11, sigma 1.5, per channel, population covariance; mean over frames then clips",
            "lpips": result.lpips,
            "fvd": result.fvd,
            "not_computed": result.not_computed,
        },
        "environment": result.environment,
        "seconds": result.seconds,
        "models": [
            {
                **summary_row(run),
                "length_generalisation": long_rows(run),
                "clip_scores": [vars(s) for s in run.scores],
                "long_clip_scores": {str(k): [vars(s) for s in v] for k, v in run.long_scores.items()},
                "encode_seconds": run.encode_seconds,
                "decode_seconds": run.decode_seconds,
            }
            for run in result.runs
        ],
    }


# ---- figures --------------------------------------------------------------------------------------------


def _pyplot():
    try:
        import matplotlib
    except ImportError as e:
        raise DCVGError(
            "the report's figures need matplotlib: pip install 'dcvideogen[eval]' (or matplotlib)"
        ) from e

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def check_figures() -> None:
    """Fail before an evaluation when the report's figures could not be drawn."""
    _pyplot()


def plot_psnr_vs_compression(result: Evaluation, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    for run in result.runs:
        psnr = _mean(run.scores, "psnr")
        ax.scatter([run.compression_ratio], [psnr], s=36)
        ax.annotate(
            f"{run.name} ({run.notation})",
            (run.compression_ratio, psnr),
            textcoords="offset points",
            xytext=(5, 4),
            fontsize=8,
        )
    ratios = sorted({run.compression_ratio for run in result.runs})
    ax.set_xscale("log", base=2)
    ax.set_xlim(ratios[0] / 1.6, ratios[-1] * 2.5)  # room for the labels on the right
    ax.set_xticks(ratios, [_ratio(r) for r in ratios])
    ax.minorticks_off()
    ax.margins(y=0.25)
    ax.set_xlabel("compression ratio (3·X²·Y / Z)")
    ax.set_ylabel("PSNR (dB)")
    p = result.config.protocol
    ax.set_title(f"Reconstruction, {result.clips} clips of {p.frames}x{p.size}x{p.size}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_side_by_side(result: Evaluation, clip: str, path: Path) -> None:
    """Rows: frames of the clip; columns: the original, then each autoencoder."""
    plt = _pyplot()
    columns = [("original", result.reference_samples[clip])]
    for run in result.runs:
        score = next(s for s in run.scores if f"{s.video}#{s.clip}" == clip)
        columns.append((f"{run.name} ({run.notation})\nPSNR {score.psnr:.2f} dB", run.samples[clip]))
    rows = len(result.sample_frames)
    fig, axes = plt.subplots(
        rows, len(columns), figsize=(2.2 * len(columns), 2.2 * rows + 0.4), dpi=120, squeeze=False
    )
    for j, (title, frames) in enumerate(columns):
        for i, t in enumerate(result.sample_frames):
            ax = axes[i][j]
            ax.imshow(frames[i].numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=7)
            if j == 0:
                ax.set_ylabel(f"frame {t}", fontsize=7)
    fig.suptitle(clip, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _safe_name(clip: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", clip).strip("_") or "clip"


def write_report(result: Evaluation, out: str | Path, command: str | None = None) -> list[Path]:
    """Write report.md, results.csv, results.json, the plot and frames/*.png into the folder `out`."""
    out = Path(out)
    frame_files = [f"frames/{i:02d}_{_safe_name(c)}.png" for i, c in enumerate(result.reference_samples)]
    with atomic_dir(out) as tmp:
        (tmp / "report.md").write_text(markdown_report(result, command, frame_files))
        (tmp / "results.csv").write_text(csv_text(result))
        (tmp / "results.json").write_text(json.dumps(json_report(result, command), indent=2) + "\n")
        plot_psnr_vs_compression(result, tmp / PLOT_FILE)
        if frame_files:
            (tmp / "frames").mkdir()
        for clip, name in zip(result.reference_samples, frame_files):
            plot_side_by_side(result, clip, tmp / name)
    return [out / f for f in (*FILES, *frame_files)]
