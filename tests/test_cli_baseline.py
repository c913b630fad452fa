"""`dcvg reconstruct`'s baseline line: the naive codec of the model's fXtYcZ on the same frames, computed
piece by piece as the reconstruction streams, equal to the whole-clip naive reconstruction."""

import re

import pytest
import torch

from dcvideogen.cli.main import main
from dcvideogen.evaluation.adapters import load_video_autoencoder
from dcvideogen.metrics import psnr_per_frame, ssim_per_frame
from dcvideogen.video import read_video

BASELINE = re.compile(r"^naive codec  PSNR ([\d.]+) dB, SSIM ([\d.]+) \((naive-f\d+t\d+c\d+): .*$", re.M)


def test_reconstruct_prints_the_naive_codec(capsys, clips, tiny_model_dir, tmp_path):
    clip = clips / "carphone_pristine.mp4"
    # 9 frames: pieces of 8 and 1 (the chunk of the tiny model); the codec pads the last one to 4 frames.
    code = main(
        ["reconstruct", str(clip), str(tmp_path / "r.mp4"), "--model", str(tiny_model_dir), "--frames", "9"]
    )
    stdout = capsys.readouterr().out
    assert code == 0
    m = BASELINE.search(stdout)
    assert m, stdout
    assert m.group(3) == "naive-f32t4c32"
    # 9 frames padded to 3 groups of 4, 144x176 area-downsampled by 9.80 to 15x18: 9*144*176 / (3*15*18).
    assert "latent's 384x nominal, 282x for this clip" in m.group(0)
    # The model's lines are unchanged and come before it.
    assert re.search(r"^PSNR         [\d.]+ dB\nSSIM         [\d.]+\nnaive codec ", stdout, re.M)

    x = read_video(clip, max_frames=9).frames[None]  # (1, 3, 9, 144, 176)
    recon = load_video_autoencoder("naive-f32t4c32").reconstruct(x)
    assert recon.shape == x.shape
    assert float(m.group(1)) == pytest.approx(psnr_per_frame(recon, x).mean().item(), abs=0.01)
    assert float(m.group(2)) == pytest.approx(ssim_per_frame(recon, x).mean().item(), abs=1e-4)


def test_no_baseline_flag(capsys, clips, tiny_model_dir, tmp_path):
    argv = ["reconstruct", str(clips / "carphone_pristine.mp4"), str(tmp_path / "r.mp4")]
    code = main([*argv, "--model", str(tiny_model_dir), "--frames", "1", "--no-baseline"])
    stdout = capsys.readouterr().out
    assert code == 0 and "PSNR" in stdout and "naive codec" not in stdout


def test_pieces_of_any_length_give_the_whole_clip_result():
    from dcvideogen.cli.ae import _NaiveBaseline
    from dcvideogen.models.dcae_v import AutoencoderDCV

    x = torch.rand(3, 23, 40, 56) * 2 - 1  # (3, T, H, W)
    with torch.device("meta"):  # only the architecture is read
        model = AutoencoderDCV.from_preset("dc-ae-v-f32t4c32-tiny")
    baseline = _NaiveBaseline(model)
    for piece in x.split([5, 7, 3, 8], dim=1):  # none but the last a multiple of 4
        baseline.add(piece)
    baseline.finish()
    whole = load_video_autoencoder("naive-f32t4c32").reconstruct(x[None])
    torch.testing.assert_close(torch.cat(baseline.psnrs), psnr_per_frame(whole, x[None])[0])
    torch.testing.assert_close(torch.cat(baseline.ssims), ssim_per_frame(whole, x[None])[0])
