"""`dcvg reconstruct / encode / decode / convert / info` end to end on real clips, and on bad input."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dcvideogen.cli.main import main
from dcvideogen.video import probe_video, read_video

from test_video_io import make_audio_only


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_reconstruct_real_clip(capsys, clips, tiny_model_dir, tmp_path):
    out = tmp_path / "recon.mp4"
    code, stdout, _ = run(
        capsys, "reconstruct", clips / "carphone_pristine.mp4", out, "--model", tiny_model_dir, "--frames", 20
    )
    assert code == 0
    assert "PSNR" in stdout and "SSIM" in stdout
    # 20 frames of 144x176 are padded to 24 frames of 160x192: 3*20*144*176 / (32*6*5*6) = 264x
    assert "compression 264x for this clip (384x nominal; padded to 24 frames of 192x160)" in stdout
    info = probe_video(out)
    assert (info.num_frames, info.height, info.width) == (20, 144, 176)
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # not the 0600 of the temporary file
    code, _, _ = run(
        capsys,
        "reconstruct",
        clips / "carphone_pristine.mp4",
        tmp_path / "sbs.gif",
        "--model",
        tiny_model_dir,
        "--frames",
        9,
        "--side-by-side",
    )
    assert code == 0 and read_video(tmp_path / "sbs.gif").frames.shape == (3, 9, 144, 352)


def test_encode_decode_round_trip(capsys, clips, tiny_model_dir, tmp_path):
    latent = tmp_path / "clip.safetensors"
    code, stdout, _ = run(
        capsys, "encode", clips / "bikes.mp4", latent, "--model", tiny_model_dir, "--frames", 13
    )
    assert code == 0 and "(1, 32, 4, 9, 20)" in stdout  # 13 frames -> 16 (chunk 8) -> 4 latent frames
    code, _, _ = run(capsys, "decode", latent, tmp_path / "back.mp4", "--model", tiny_model_dir)
    assert code == 0
    info = probe_video(tmp_path / "back.mp4")
    assert (info.num_frames, info.height, info.width) == (13, 272, 640) and abs(info.fps - 25) < 0.01


def test_convert_and_info(capsys, official_fixtures, tmp_path):
    ckpt = official_fixtures / "f64t4c128_tiny" / "checkpoint.pt"
    code, stdout, _ = run(capsys, "convert", ckpt, tmp_path / "conv", "--preset", "dc-ae-v-f64t4c128-tiny")
    assert code == 0 and "f64t4c128" in stdout
    code, stdout, _ = run(capsys, "info", tmp_path / "conv")
    assert code == 0 and "compression 384x" in stdout and "chunk 8 frames" in stdout
    code, stdout, _ = run(capsys, "info", "dc-ae-v-f32t4c32")
    assert code == 0 and "0.917B encoder + 1.222B decoder" in stdout and "0.7241" in stdout


def test_bad_inputs(capsys, clips, tiny_model_dir, official_fixtures, tmp_path):
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00\x01garbage" * 500)
    (tmp_path / "trunc.mp4").write_bytes((clips / "bikes.mp4").read_bytes()[:100_000])
    (tmp_path / "notes.txt").write_text("x")
    make_audio_only(tmp_path / "audio.mp4")
    clip = clips / "carphone_pristine.mp4"
    out = tmp_path / "out.mp4"
    m = ["--model", tiny_model_dir]
    cases = [
        (["reconstruct", tmp_path / "missing.mp4", out, *m], "no such file"),
        (["reconstruct", tmp_path / "corrupt.mp4", out, *m], "cannot be opened as video"),
        (["reconstruct", tmp_path / "trunc.mp4", out, *m], "cannot be opened as video"),
        (["reconstruct", tmp_path / "audio.mp4", out, *m], "has no video stream"),
        (["reconstruct", tmp_path / "notes.txt", out, *m], "unsupported format"),
        (["reconstruct", clip, out, *m, "--start", 1000], "contains no frames"),
        (["reconstruct", clip, out, *m, "--frames", 0], "must be at least 1"),
        (["reconstruct", clip, tmp_path / "no" / "out.mp4", *m], "does not exist"),
        (["reconstruct", clip, "/proc/out.mp4", *m], "cannot write there"),
        (["reconstruct", clip, tmp_path / "out.webm", *m], "cannot write '.webm'"),
        (["reconstruct", clip, out, "--model", "dc-ae-v-f32t4c32"], "architecture preset without weights"),
        (["reconstruct", clip, out, "--model", tmp_path / "nope"], "no such model folder"),
        (
            [
                "convert",
                official_fixtures / "f32t4c32_tiny" / "checkpoint_ema.pt",
                tmp_path / "conv",
                "--preset",
                "dc-ae-v-f64t4c128-tiny",
            ],
            "is missing",
        ),
        (["convert", tmp_path / "corrupt.mp4", tmp_path / "conv"], "not a readable torch checkpoint"),
        (["decode", tmp_path / "notes.txt", out, *m], "not a readable .safetensors"),
    ]
    for argv, message in cases:
        code, _, err = run(capsys, *argv)
        lines = err.strip().splitlines()
        assert code == 2, argv
        assert len(lines) == 1 and message in lines[0] and lines[0].startswith(f"dcvg {argv[0]}: error:"), err
    assert not out.exists() and not (tmp_path / "conv").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_decode_with_the_wrong_model(capsys, clips, tiny_model_dir, tmp_path):
    latent = tmp_path / "clip.safetensors"
    assert (
        run(capsys, "encode", clips / "bikes.mp4", latent, "--model", tiny_model_dir, "--frames", 4)[0] == 0
    )
    other = tmp_path / "other"
    from dcvideogen.models.dcae_v import AutoencoderDCV

    AutoencoderDCV.from_preset("dc-ae-v-f32t4c32-tiny", chunk_size=16).save_pretrained(other)
    code, _, err = run(capsys, "decode", latent, tmp_path / "x.mp4", "--model", other)
    assert code == 2 and "decode with the model that encoded it" in err


def test_console_script_prints_no_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "dcvideogen.cli.main", "reconstruct", str(tmp_path / "missing.mp4")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "no such file" in proc.stderr


@pytest.mark.parametrize("command", ["reconstruct", "encode", "decode", "convert", "info"])
def test_every_flag_has_help(command):
    from dcvideogen.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    for action in sub._actions:
        if action.dest != "help":
            assert action.help, f"{command} {action.option_strings or action.dest} has no help"
