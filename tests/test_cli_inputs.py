"""`dcvg` on inputs a new user meets: truncated clips, latents that do not fit the model, bad frame rates, an
output that is the input, tiny and odd-sized frames, sound; errors the machine raises; and `--help` without
torch (issue 12, items 3-6 and 8)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import av
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dcvideogen.cli import ae as cli_ae
from dcvideogen.cli.main import main
from dcvideogen.models.dcae_v import AutoencoderDCV
from dcvideogen.video import probe_video

from test_video_io import write_image, write_mp4

SRC = Path(__file__).resolve().parents[1] / "src"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"dcvg {command}: error: "), err
    return lines[0]


def no_leftovers(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(".")]


# ---- dcvg --help without torch ---------------------------------------------------------------------------

HELP_SCRIPT = """
import argparse, runpy, sys
from dcvideogen.cli.main import build_parser, main

def subcommands(parser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from subcommands(sub, (*prefix, name))

for argv in [[], *map(list, subcommands(build_parser()))]:
    try:
        main([*argv, "--help"])
    except SystemExit as e:
        assert e.code == 0, (argv, e.code)
sys.argv = ["dcvg", "--help"]
try:
    runpy.run_module("dcvideogen.cli.main", run_name="__main__")
except SystemExit as e:
    assert e.code == 0
import dcvideogen
assert dcvideogen.__version__
heavy = [m for m in ("torch", "diffusers", "transformers", "av", "numpy", "safetensors") if m in sys.modules]
assert not heavy, f"--help imported {heavy}"
"""


def test_help_imports_no_heavy_library():
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.run([sys.executable, "-c", HELP_SCRIPT], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "dcvg reconstruct" in proc.stdout and "dcvg bench ae" in proc.stdout and "--strict" in proc.stdout


def test_lazy_package_attributes():
    import dcvideogen

    assert dcvideogen.AutoencoderDCV is AutoencoderDCV
    assert dcvideogen.get_preset("f32t4c32-tiny").latent_channels == 32
    assert "DCAEVConfig" in dir(dcvideogen)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = dcvideogen.nope


def test_cli_constants_match_the_library():
    """The values --help shows without importing the library are the library's."""
    from dcvideogen.bench.autoencoder import AEMode
    from dcvideogen.bench.cost_model import GridRounding
    from dcvideogen.bench.paper import PAPER_STEPS
    from dcvideogen.bench.sizes import PAPER_SIZES
    from dcvideogen.bench.transformer import ATTENTION_BACKENDS
    from dcvideogen.bench.wan import WAN_CONFIGS
    from dcvideogen.cli import bench, common
    from dcvideogen.cli import eval as cli_eval
    from dcvideogen.metrics.lpips import BACKBONES
    from dcvideogen.video import io

    assert bench.PAPER_SIZES == PAPER_SIZES and bench.PAPER_STEPS == PAPER_STEPS
    assert bench.ATTENTION_BACKENDS == ATTENTION_BACKENDS
    assert tuple(m.value for m in AEMode) == bench.AE_MODES
    assert tuple(r.value for r in GridRounding) == bench.GRID_ROUNDINGS
    assert tuple(WAN_CONFIGS) == bench.WAN_MODELS
    assert set(cli_eval.LPIPS_NETS) == set(BACKBONES)
    assert all(isinstance(common.torch_dtype(d), torch.dtype) for d in common.DTYPES)
    assert common.MAX_FPS == io.MAX_FPS


# ---- 3. truncated clips -----------------------------------------------------------------------------------


def test_truncated_clip_is_read_up_to_where_it_breaks_with_a_warning(
    capsys, caplog, tiny_model_dir, tmp_path
):
    data = write_mp4(tmp_path / "full.mp4").read_bytes()
    clip = tmp_path / "half.mp4"
    clip.write_bytes(data[: len(data) // 2])  # the header still says 24 frames
    out = tmp_path / "out.mp4"
    with caplog.at_level(logging.INFO, logger="dcvg"):
        code, stdout, _ = run(capsys, "reconstruct", clip, out, "--model", tiny_model_dir)
    assert code == 0
    decoded = probe_video(out).num_frames
    assert 0 < decoded < 24 and f"frames       {decoded} (48x32)" in stdout
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(clip) in warnings[0]
    assert f"only {decoded} frames decode but its header declares 24" in warnings[0]

    for command, target in (("reconstruct", tmp_path / "strict.mp4"), ("encode", tmp_path / "s.safetensors")):
        code, _, err = run(capsys, command, clip, target, "--model", tiny_model_dir, "--strict")
        line = one_error_line(err, command)
        assert code == 2 and "header declares 24" in line and "drop --strict" in line
        assert not target.exists() and no_leftovers(tmp_path)
    # --frames within what decodes is no shortfall
    caplog.clear()
    assert (
        run(capsys, "encode", clip, tmp_path / "ok.safetensors", "--model", tiny_model_dir, "--frames", 2)[0]
        == 0
    )
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


# ---- 4. latents checked against their metadata and the model before decoding -------------------------------


@pytest.fixture(scope="module")
def encoded(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("latent")
    clip, path = write_mp4(root / "clip.mp4", frames=5, h=32, w=48), root / "clip.safetensors"
    assert main(["encode", str(clip), str(path), "--model", str(tiny_model_dir)]) == 0
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    return load_file(str(path))["latent"], meta  # (1, 32, 2, 1, 2): 5 frames of 48x32 padded to 8 of 64x32


def test_decode_checks_the_latent_first(capsys, encoded, tiny_model_dir, tmp_path, monkeypatch):
    latent, meta = encoded

    def never(*args, **kwargs):
        raise AssertionError("decoding started on a latent that does not fit")

    monkeypatch.setattr(AutoencoderDCV, "decode_stream", never)
    cases = {
        "16 channels": (latent[:, :16], {}, "has 16 channels but the f32t4c32 model decodes 32"),
        "4-D": (latent[0], {}, "has shape (32, 2, 1, 2), not (1, C, T, h, w)"),
        "3x3 grid": (torch.randn(1, 32, 2, 3, 3), {}, "grid 2x3x3 (T x h x w) does not match its metadata"),
        "size": (
            latent,
            {"height": "272", "width": "640"},
            "(5 frames of 640x272 give 2x9x20 in a f32t4c32)",
        ),
        "negative frames": (latent, {"num_frames": "-5"}, "num_frames='-5' is not a positive whole number"),
        "too many frames": (latent, {"num_frames": "100"}, "100 frames of 48x32 give 26x1x2"),
        "bad fps": (latent, {"fps": "-3"}, "fps='-3' is not a frame rate; give one with --fps"),
        "NaN": (latent * float("nan"), {}, "holds NaN or infinite values"),
        "integers": (latent.to(torch.int32), {}, "is torch.int32, not floating point"),
        "config": (latent, {"config": "{"}, "metadata config is not a DC-AE-V architecture"),
        "no metadata": (latent, {"height": None}, "not a latent written by dcvg encode"),
    }
    out = tmp_path / "out.mp4"
    for name, (tensor, changes, message) in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.safetensors"
        m = {k: v for k, v in {**meta, **changes}.items() if v is not None}
        save_file({"latent": tensor.contiguous()}, str(path), metadata=m)
        code, _, err = run(capsys, "decode", path, out, "--model", tiny_model_dir)
        line = one_error_line(err, "decode")
        assert code == 2 and str(path) in line and message in line, (name, line)
    assert not out.exists() and no_leftovers(tmp_path)


def test_decode_with_a_good_latent_writes_its_size(capsys, encoded, tiny_model_dir, tmp_path):
    latent, meta = encoded
    path = tmp_path / "bf16.safetensors"  # another float dtype is fine
    save_file({"latent": latent.to(torch.bfloat16)}, str(path), metadata={**meta, "fps": "nan"})
    code, stdout, _ = run(capsys, "decode", path, tmp_path / "o.mp4", "--model", tiny_model_dir, "--fps", 8)
    info = probe_video(tmp_path / "o.mp4")
    assert code == 0 and (info.num_frames, info.height, info.width, info.fps) == (5, 32, 48, 8.0)
    assert "frames       5 (48x32) at 8 fps" in stdout


# ---- 5. frame rates --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fps", ["-3", "0", "nan", "inf", "1e9", "fast"])
def test_bad_fps_is_refused_by_the_parser(capsys, fps, tmp_path):
    for argv in (
        ["decode", "x.safetensors", "x.mp4", "--fps", fps],
        ["generate", "-m", "m", "-p", "a cat", "-o", "x.mp4", "--fps", fps],
    ):
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and "argument --fps" in err and "Traceback" not in err


# ---- 6. an output that is the input ----------------------------------------------------------------------


def test_output_that_is_the_input_is_refused(capsys, tiny_model_dir, tmp_path):
    clip = write_mp4(tmp_path / "x.mp4", frames=4)
    before = clip.read_bytes()
    (tmp_path / "sym.mp4").symlink_to(clip)
    os.link(clip, tmp_path / "hard.mp4")
    (tmp_path / "lat.safetensors").symlink_to(clip)
    cases = [
        ("reconstruct", clip),
        ("reconstruct", tmp_path / "sym.mp4"),
        ("reconstruct", tmp_path / "hard.mp4"),
        ("encode", tmp_path / "lat.safetensors"),
    ]
    for command, out in cases:
        code, _, err = run(capsys, command, clip, out, "--model", tiny_model_dir)
        line = one_error_line(err, command)
        assert code == 2 and "would replace the input" in line and str(clip) in line
    assert clip.read_bytes() == before and no_leftovers(tmp_path)


# ---- 8. compression of padded clips, odd sizes, sound ----------------------------------------------------


def test_tiny_image_reports_its_real_compression(capsys, tiny_model_dir, tmp_path):
    image = write_image(tmp_path / "dot.png", 1, 1)
    code, stdout, _ = run(capsys, "reconstruct", image, tmp_path / "dot.mp4", "--model", tiny_model_dir)
    # 3 input values, a latent of 32 x 2 x 1 x 1 (padded to 8 frames of 32x32): 3 / 64
    assert (
        code == 0
        and "compression 0.0469x for this clip (384x nominal; padded to 8 frames of 32x32)" in stdout
    )


def test_odd_frames_are_written_as_yuv420p_and_sound_is_noted(capsys, caplog, tiny_model_dir, tmp_path):
    image = write_image(tmp_path / "odd.png", 33, 47)
    with caplog.at_level(logging.INFO):
        assert run(capsys, "reconstruct", image, tmp_path / "odd.mp4", "--model", tiny_model_dir)[0] == 0
    with av.open(str(tmp_path / "odd.mp4")) as c:
        s = c.streams.video[0]
        assert (s.codec_context.pix_fmt, s.width, s.height) == ("yuv420p", 48, 34)
    assert any("47x33 are written as 48x34" in r.message for r in caplog.records)

    clip = write_mp4(tmp_path / "talk.mp4", frames=4, audio=True)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert (
            run(capsys, "reconstruct", clip, tmp_path / "talk.recon.mp4", "--model", tiny_model_dir)[0] == 0
        )
    notes = [r.message for r in caplog.records if "sound" in r.message]
    assert notes == [f"note: {clip} has sound; the reconstruction is written without it"]


# ---- errors of the machine: memory, disk, Ctrl-C ----------------------------------------------------------


@pytest.mark.parametrize(
    "error, code, message",
    [
        (MemoryError(), 2, "out of memory (MemoryError); tile the frames (--tile 256"),
        (
            RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried 9 GB"),
            2,
            "out of memory (Default",
        ),
        (OSError(28, "No space left on device", "out.mp4"), 2, "error: out.mp4: No space left on device"),
        (KeyboardInterrupt(), 130, "dcvg reconstruct: interrupted"),
    ],
)
def test_machine_errors_are_one_line(
    capsys, monkeypatch, tiny_model_dir, clips, tmp_path, error, code, message
):
    def fail(args, allow_random=False):
        raise error

    monkeypatch.setattr(cli_ae, "load_model_from_args", fail)
    out = tmp_path / "out.mp4"
    got, _, err = run(capsys, "reconstruct", clips / "bikes.mp4", out, "--model", tiny_model_dir)
    assert got == code and len(err.strip().splitlines()) == 1 and message in err
    assert not out.exists() and no_leftovers(tmp_path)


def test_a_bug_keeps_its_traceback(monkeypatch, clips, tmp_path):
    def fail(args, allow_random=False):
        raise RuntimeError("an internal error")

    monkeypatch.setattr(cli_ae, "load_model_from_args", fail)
    with pytest.raises(RuntimeError, match="an internal error"):
        main(["reconstruct", str(clips / "bikes.mp4"), str(tmp_path / "o.mp4")])


def test_flags_and_non_streaming_models_are_checked(capsys, clips, tiny_model_dir, tmp_path):
    flags = {
        "--start -1": "--start -1: must be 0 or more",
        "--chunk-size 0": "--chunk-size 0: must be a positive number of frames",
        "--memory-budget nan": "--memory-budget nan: give the memory to stay under in GiB",
        "--memory-budget -1": "--memory-budget -1.0: give the memory to stay under in GiB",
    }
    for flag, message in flags.items():
        argv = ["encode", clips / "bikes.mp4", tmp_path / "x.safetensors", "--model", tiny_model_dir]
        code, _, err = run(capsys, *argv, *flag.split())
        assert code == 2 and message in one_error_line(err, "encode")
    folder = tmp_path / "whole"
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    AutoencoderDCV.from_preset("dc-ae-v-f32t4c32-tiny", temporal_mode="non_causal").save_pretrained(folder)
    assert json.loads((folder / "config.json").read_text()) != cfg
    code, _, err = run(capsys, "encode", clips / "bikes.mp4", tmp_path / "x.safetensors", "--model", folder)
    assert code == 2 and "needs a causal or chunk-causal model" in one_error_line(err, "encode")
