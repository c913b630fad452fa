"""`dcvg generate` and `dcvg convert-pipeline` end to end on tiny models, and every bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dcvideogen.cli.main import build_parser, main
from dcvideogen.video import probe_video, read_video

from pipeline_parts import make_released_folder, sample_image, tiny_transformer

SRC = Path(__file__).resolve().parents[1] / "src"
SMALL = ["--height", 32, "--width", 64, "--frames", 8, "--steps", 2, "--dtype", "float32"]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    return make_released_folder(tmp_path_factory.mktemp("released") / "release")


@pytest.fixture(scope="module")
def first_frame(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "first.png"
    sample_image(48, 80).save(path)
    return path


def test_convert_then_generate_t2v(capsys, caplog, released, tmp_path):
    saved = tmp_path / "t2v"
    code, out, _ = run(capsys, "convert-pipeline", released, saved, "--task", "t2v", "--ae-chunk-size", 8)
    assert code == 0 and "DC-AE-V f32t4c32, chunk 8 frames" in out and "in 32 / out 32 channels" in out
    video = tmp_path / "corgi.mp4"
    caplog.set_level("INFO", logger="dcvg")
    code, out, _ = run(
        capsys, "generate", "--model", saved, "--prompt", "a corgi jumps over a log", "--out", video, "--seed", 3,
        *SMALL, "--width", 70, "--guidance", 1, "--tile", 32, "--tile-overlap", 0,
    )  # fmt: skip
    assert code == 0, out
    assert "width 70 is not a multiple of 32; generating 64 pixels" in caplog.text
    info = probe_video(video)
    assert (info.num_frames, info.height, info.width) == (8, 32, 64) and abs(info.fps - 16) < 1e-6
    record = json.loads(video.with_suffix(".json").read_text())
    assert record["seed"] == 3 and record["task"] == "t2v" and record["model"]["layout"] == "saved"
    assert record["requested"]["width"] == 70 and record["generated"]["width"] == 64
    assert record["generated"]["latent"] == [32, 2, 1, 2]
    assert record["settings"]["steps"] == 2 and record["settings"]["scheduler"] == "UniPCMultistepScheduler"
    assert record["settings"]["decode_tiling"] is True  # --tile 32: two tiles across the 64-pixel width
    timings = record["timings_s"]
    assert {"load", "encode_prompt", "denoise", "seconds_per_step", "decode_and_write", "total"} <= set(
        timings
    )
    # both written rounded to 4 decimals: up to 1.5e-4 apart on a fast machine
    assert timings["seconds_per_step"] * 2 == pytest.approx(timings["denoise"], rel=1e-3, abs=1.5e-4)
    assert "seed         3" in out and str(video.with_suffix(".json")) in out


def test_generate_i2v_from_the_released_layout(capsys, released, first_frame, tmp_path):
    video = tmp_path / "from-image.gif"
    code, _, err = run(
        capsys, "generate", "--model", released, "--prompt", "a red car drives at night", "--out", video,
        "--image", first_frame, "--ae-chunk-size", 8, "--scheduler", "euler", "--flow-shift", 5, *SMALL,
    )  # fmt: skip
    assert code == 0, err
    frames = read_video(video).frames
    assert frames.shape == (3, 8, 32, 64)
    record = json.loads(video.with_suffix(".json").read_text())
    assert (
        record["task"] == "i2v"
        and record["image"] == str(first_frame)
        and record["model"]["layout"] == "released"
    )
    assert (
        record["settings"]["scheduler"] == "FlowMatchEulerDiscreteScheduler"
        and record["settings"]["flow_shift"] == 5
    )
    assert isinstance(record["seed"], int)  # drawn, and written down
    assert record["settings"]["decode_tiling"] is False
    assert {"encode_image", "encode_condition"} <= set(record["timings_s"])


def test_generate_bad_inputs_fail_before_loading(capsys, monkeypatch, released, first_frame, tmp_path):
    import dcvideogen.pipelines.loading as loading

    def no_loading(*a, **k):
        raise AssertionError("weights were loaded before the input was checked")

    monkeypatch.setattr(loading, "load_pipeline", no_loading)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    mismatched = tmp_path / "mismatched"
    mismatched.mkdir()
    for part in ("dc-ae-v-f32t4c32-1.0-bf16.pt", "text_encoder", "tokenizer", "scheduler"):
        src = released / part
        (mismatched / part).symlink_to(src, target_is_directory=src.is_dir())
    tiny_transformer(in_channels=16, out_channels=16).save_pretrained(mismatched / "transformer_t2v")
    out = tmp_path / "out.mp4"
    base = ["generate", "--model", released, "--out", out, *SMALL, "--ae-chunk-size", 8]
    p = ["--prompt", "a corgi"]
    cases = [
        ([*base, *p, "--image", tmp_path / "missing.png"], "missing.png: no such file"),
        ([*base, *p, "--image", tmp_path / "broken.png"], "broken.png: cannot be decoded as an image"),
        ([*base, "--prompt", "   "], "--prompt is empty"),
        (
            [*base, *p, "--height", 40, "--strict"],
            "height 40 is not a multiple of 32; use 32 or drop --strict",
        ),
        ([*base, *p, "--frames", 9, "--strict"], "num_frames 9 is not a multiple of 4; use 8"),
        ([*base, *p, "--frames", 4], "num_frames 4 is below one chunk of the autoencoder (8 frames)"),
        (
            ["generate", "--model", released, "--out", out, *p, *SMALL],
            "below one chunk of the autoencoder (40 frames)",
        ),
        ([*base, *p, "--task", "i2v"], "--task i2v needs --image"),
        ([*base, *p, "--task", "t2v", "--image", first_frame], "but the task is t2v"),
        ([*base, *p, "--offload", "model"], "--offload model moves models between the CPU and a GPU"),
        (
            [*base, *p, "--offload", "sequential", "--compile"],
            "--compile does not work with --offload sequential",
        ),
        ([*base, *p, "--steps", 0], "--steps 0: must be at least 1"),
        ([*base, *p, "--model", tmp_path / "nowhere"], "nowhere: does not exist"),
        ([*base, *p, "--out", tmp_path / "out.avi"], "cannot write '.avi'"),
        (
            [*base, *p, "--model", mismatched],
            "in_channels 16 / out_channels 16 but the autoencoder's latent has 32",
        ),
        (
            [*base, *p, "--task", "i2v", "--image", first_frame, "--model", mismatched],
            "transformer_i2v/ (the I2V",
        ),
    ]
    for argv, message in cases:
        code, _, err = run(capsys, *argv)
        lines = err.strip().splitlines()
        assert code == 2, argv
        assert len(lines) == 1 and message in lines[0] and lines[0].startswith(f"dcvg {argv[0]}: error:"), err
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_console_script_prints_no_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    argv = [
        "generate",
        "--model",
        str(tmp_path / "missing"),
        "--prompt",
        "x",
        "--out",
        str(tmp_path / "x.mp4"),
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "dcvideogen.cli.main", *argv], capture_output=True, text=True, env=env
    )
    assert (
        proc.returncode == 2 and "Traceback" not in proc.stderr and "missing: does not exist" in proc.stderr
    )


@pytest.mark.parametrize("command", ["generate", "convert-pipeline"])
def test_every_flag_has_help(command):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    for action in sub._actions:
        if action.dest != "help":
            assert action.help, f"{command} {action.option_strings or action.dest} has no help"
