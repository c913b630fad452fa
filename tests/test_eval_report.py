"""The report's numbers from synthetic per-clip scores: means, length-generalisation changes measured on
the same videos, medians of timings, the "not computed" notes."""

import pytest

from dcvideogen.evaluation.protocol import Protocol
from dcvideogen.evaluation.report import csv_text, long_rows, markdown_report, summary_row
from dcvideogen.evaluation.runner import NO_FVD, NO_LPIPS, ClipScore, EvalConfig, Evaluation, ModelRun


def make_run() -> ModelRun:
    run = ModelRun("m", "path/m", "AutoencoderDCV", "f32t4c32", 384.0, "multiple of 40", 0, "float32", "cpu")
    run.scores = [
        ClipScore("a.mp4", 0, 8, 30.0, 0.90),
        ClipScore("a.mp4", 1, 8, 32.0, 0.92),  # a second clip of a: not the base of the long clip
        ClipScore("b.mp4", 0, 8, 20.0, 0.80),
        ClipScore("c.mp4", 0, 8, 25.0, 0.85),
    ]
    # only a and b are long enough for 2x; only a for 4x
    run.long_scores = {
        2: [ClipScore("a.mp4", 0, 16, 29.0, 0.89), ClipScore("b.mp4", 0, 16, 18.0, 0.78)],
        4: [ClipScore("a.mp4", 0, 32, 27.5, 0.88)],
    }
    run.encode_seconds = [5.0, 1.0, 2.0, 3.0]  # the first includes warm-up: the median ignores it
    run.decode_seconds = [1.0, 1.0, 1.0, 1.0]
    return run


def test_means_changes_and_medians():
    run = make_run()
    row = summary_row(run)
    assert row["psnr"] == pytest.approx(26.75) and row["ssim"] == pytest.approx(0.8675)
    assert row["lpips"] is None and row["fvd"] is None
    assert row["encode_seconds_per_clip"] == 2.5 and row["decode_seconds_per_clip"] == 1.0
    two, four = long_rows(run)
    assert (two["frames"], two["clips"], four["clips"]) == (16, 2, 1)
    assert two["psnr"] == pytest.approx(23.5) and two["psnr_change"] == pytest.approx(23.5 - 25.0)  # a, b
    assert four["psnr_change"] == pytest.approx(27.5 - 30.0)  # a's first clip only
    assert four["ssim_change"] == pytest.approx(0.88 - 0.90)
    assert row["psnr_change_4x"] == four["psnr_change"] and row["lpips_4x"] is None


def test_markdown_and_csv_say_what_was_not_computed():
    result = Evaluation(
        config=EvalConfig(protocol=Protocol(frames=8, size=32, long_factors=(2, 4))),
        data="clips/",
        videos=["a.mp4", "b.mp4", "c.mp4", "d.mp4"],
        runs=[make_run()],
        clips=4,
        skipped=[("d.mp4", "cannot be opened as video")],
        not_computed={"lpips": NO_LPIPS, "fvd": NO_FVD},
        environment={"torch": "x"},
    )
    md = markdown_report(result, command="dcvg eval-ae ...")
    assert "| m | f32t4c32 | 384x | 26.75 | 0.8675 | not computed | not computed | 2.5 | 1 |" in md
    assert NO_LPIPS in md and NO_FVD in md
    assert "| m | f32t4c32 | 16 | 2 | 23.50 | -1.50 | 0.8350 | -0.0150 |" in md
    assert "Δ LPIPS" not in md and "`d.mp4`: unreadable" in md and "1 unreadable" in md
    header, line = csv_text(result).splitlines()
    cells = dict(zip(header.split(","), line.split(",")))
    assert (
        cells["lpips"] == "" and cells["fvd"] == "" and float(cells["psnr_change_2x"]) == pytest.approx(-1.5)
    )
