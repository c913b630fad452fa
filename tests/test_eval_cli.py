"""`dcvg eval-ae` end to end: two tiny autoencoders on real clips, every report file, the FVD reference
cache, the "not computed" notes, and bad input."""

import csv
import json

import pytest
import torch

from dcvideogen.cli.main import build_parser, main
from dcvideogen.evaluation.adapters import load_video_autoencoder
from dcvideogen.metrics.psnr import psnr_per_frame
from dcvideogen.utils.hashing import file_sha256
from dcvideogen.video import read_video, write_video
from dcvideogen.video.transforms import resize_center_crop
from test_adapters import tiny_wan
from test_eval_fvd import make_tiny_i3d

from test_eval_lpips import save_backbone

SMALL = ["--frames", "8", "--size", "32", "--device", "cpu"]


@pytest.fixture(scope="module")
def setup(clips, tmp_path_factory):
    """A data folder (2 real clips, 1 corrupt file, 1 video too short), two tiny models, LPIPS and I3D files."""
    from dcvideogen.models.dcae_v import AutoencoderDCV

    root = tmp_path_factory.mktemp("eval")
    data = root / "data"
    (data / "sub").mkdir(parents=True)
    (data / "carphone.mp4").symlink_to(clips / "carphone_pristine.mp4")
    (data / "sub" / "bikes.mp4").symlink_to(clips / "bikes.mp4")
    (data / "broken.mp4").write_bytes(b"\x00\x01garbage" * 200)
    write_video(data / "short.mp4", torch.zeros(3, 4, 32, 32), fps=8)
    torch.manual_seed(0)
    AutoencoderDCV.from_preset("dc-ae-v-f32t4c32-tiny").save_pretrained(root / "dcae")
    tiny_wan().save_pretrained(root / "wan")
    return {
        "root": root,
        "data": data,
        "dcae": root / "dcae",
        "wan": root / "wan",
        "alex": save_backbone(root / "alex.pth", "alex", 1),
        "i3d": make_tiny_i3d(root / "i3d.pt"),
    }


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_ae_end_to_end(capsys, setup):
    s = setup
    out = s["root"] / "report"
    cache = s["root"] / "cache"
    metrics = ["--lpips-weights", s["alex"], "--fvd-detector", s["i3d"], "--cache-dir", cache]
    argv = ["eval-ae", "-m", s["dcae"], "-m", s["wan"], "--data", s["data"], *SMALL, "--long", "2", *metrics]
    code, stdout, _ = run(capsys, *argv, "--out", out)
    assert code == 0
    assert "| dcae | f32t4c32 | 384x |" in stdout and "| wan | f8t4c4 | 192x |" in stdout
    for name in ["report.md", "results.csv", "results.json", "psnr_vs_compression.png"]:
        assert (out / name).stat().st_size > 0
    frames = sorted((out / "frames").iterdir())
    assert [f.name for f in frames] == ["00_carphone.mp4_0.png", "01_sub_bikes.mp4_0.png"]
    assert all(f.read_bytes()[:4] == b"\x89PNG" for f in [*frames, out / "psnr_vs_compression.png"])

    report = json.loads((out / "results.json").read_text())
    assert report["data"]["videos"] == 4 and report["data"]["clips"] == 2
    assert [d["video"] for d in report["data"]["skipped_unreadable"]] == ["broken.mp4"]
    assert report["data"]["skipped_too_short"] == [{"video": "short.mp4", "frames": 4}]
    assert report["protocol"]["frames"] == 8 and report["protocol"]["long_factors"] == [2]
    assert report["metrics"]["fvd"]["detector_sha256"] == file_sha256(s["i3d"])
    assert report["metrics"]["lpips"]["backbone_sha256"] == file_sha256(s["alex"])
    assert report["metrics"]["fvd"]["reference_from_cache"] is False
    assert report["environment"]["torch"] == torch.__version__
    dcae, wan = report["models"]
    assert (dcae["padded_frames"], wan["padded_frames"]) == (0, 1)  # Wan takes 1 + 4k: 8 -> 9 frames
    for m in (dcae, wan):
        assert m["clips"] == 2 and m["lpips"] > 0 and m["fvd"] >= 0 and m["encode_seconds_per_clip"] > 0
        assert 0 < m["psnr"] < 60 and -1 < m["ssim"] < 1
        (long,) = m["length_generalisation"]
        assert long["factor"] == 2 and long["frames"] == 16 and long["clips"] == 2
        assert long["psnr_change"] == pytest.approx(long["psnr"] - m["psnr"], abs=1e-6)

    # the per-clip PSNR is that of the clip read, resized, center-cropped and reconstructed by hand
    clip = resize_center_crop(read_video(s["data"] / "carphone.mp4", max_frames=8).frames, 32)[None]
    recon = load_video_autoencoder(s["wan"]).reconstruct(clip).clamp(-1, 1)
    score = next(c for c in wan["clip_scores"] if c["video"] == "carphone.mp4")
    assert score["psnr"] == pytest.approx(psnr_per_frame(recon, clip).mean().item(), abs=1e-4)

    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["model"] for r in rows] == ["dcae", "wan"] and float(rows[1]["psnr"]) == pytest.approx(
        wan["psnr"]
    )
    assert {"fvd", "lpips", "psnr_2x", "psnr_change_2x", "encode_seconds_per_clip"} <= set(rows[0])
    md = (out / "report.md").read_text()
    assert "LPIPS-alex" in md and "## Length generalisation" in md and "1 + 4k" in md
    assert "broken.mp4" in md and "not computed" not in md

    # a second run reads the reference statistics from the cache (key: data, protocol, detector)
    assert len(list(cache.iterdir())) == 1
    argv2 = ["eval-ae", "-m", s["dcae"], "--data", s["data"], *SMALL, *metrics, "--samples", "0"]
    code, _, _ = run(capsys, *argv2, "--out", s["root"] / "report2")
    again = json.loads((s["root"] / "report2" / "results.json").read_text())
    assert code == 0 and again["metrics"]["fvd"]["reference_from_cache"] is True
    assert again["models"][0]["fvd"] == pytest.approx(dcae["fvd"], rel=1e-9)
    assert not (s["root"] / "report2" / "frames").exists()


def test_without_metric_weights_and_default_model(capsys, setup, monkeypatch):
    s = setup
    monkeypatch.setattr("dcvideogen.models.dcae_v.loading.default_model_dir", lambda: s["dcae"])
    out = s["root"] / "plain"
    code, stdout, _ = run(
        capsys, "eval-ae", "-m", "default", "--data", s["data"], *SMALL, "--max-videos", 2, "--out", out
    )
    assert code == 0 and "dc-ae-v-default" in stdout
    md = (out / "report.md").read_text()
    assert "not computed: no LPIPS backbone weights given (--lpips-weights PATH)" in md
    assert "not computed: no FVD detector given (--fvd-detector PATH)" in md
    row = next(csv.DictReader((out / "results.csv").open()))
    assert row["lpips"] == "" and row["fvd"] == "" and float(row["psnr"]) > 0
    report = json.loads((out / "results.json").read_text())
    assert report["data"]["videos"] == 2 and report["data"]["clips"] == 1  # broken.mp4, carphone.mp4
    assert report["metrics"]["lpips"] is None and report["metrics"]["fvd"] is None


def test_bad_input(capsys, setup, tmp_path):
    s = setup
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.mp4").write_bytes(b"junk" * 100)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    out = tmp_path / "out"
    m = ["-m", s["dcae"]]
    cases = [
        (["--data", tmp_path / "missing", *m], "no such folder"),
        (["--data", tmp_path / "empty", *m], "no video files"),
        (
            ["--data", tmp_path / "bad", *m],
            "no clip of 8 frames could be read (video files: 1, unreadable: 1",
        ),
        (["--data", s["data"], "-m", tmp_path / "nomodel"], "no such model folder"),
        (["--data", s["data"], *m, "--lpips-weights", tmp_path / "none.pth"], "no such file"),
        (["--data", s["data"], *m, "--fvd-detector", tmp_path / "none.pt"], "no such FVD detector file"),
        (["--data", s["data"], *m, "--frames", 0], "at least 1 frame"),
    ]
    for argv, message in cases:
        code, _, err = run(capsys, "eval-ae", *SMALL, *argv, "--out", out)
        assert code == 2, (argv, err)
        lines = [line for line in err.splitlines() if line.startswith("dcvg eval-ae: error:")]
        assert len(lines) == 1 and message in lines[0], err
        assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    code, _, err = run(capsys, "eval-ae", *m, "--data", s["data"], "--out", tmp_path / "full")
    assert code == 2 and "not empty" in err
    with pytest.raises(SystemExit):
        main(["eval-ae", *map(str, m), "--data", str(s["data"]), "--out", str(out), "--long", "1"])
    assert "factors >= 2" in capsys.readouterr().err


def test_every_flag_has_help():
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["eval-ae"]
    for action in sub._actions:
        if action.dest != "help":
            assert action.help, f"eval-ae {action.option_strings} has no help"
