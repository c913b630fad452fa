"""PSNR and SSIM against scikit-image on random and real frames."""

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from dcvideogen.metrics import psnr, psnr_per_frame, ssim_per_frame
from dcvideogen.video import read_video


def _skimage(a, b):
    """Per-frame (PSNR, SSIM) with skimage on the [0, 1] scale; a, b: (3, T, H, W) in [-1, 1]."""
    out = []
    for t in range(a.shape[1]):
        x = ((a[:, t] + 1) / 2).permute(1, 2, 0).double().numpy()
        y = ((b[:, t] + 1) / 2).permute(1, 2, 0).double().numpy()
        s = structural_similarity(
            x,
            y,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
            channel_axis=2,
        )
        out.append((peak_signal_noise_ratio(x, y, data_range=1.0), s))
    return np.array(out)


def _pairs(clips):
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 3, 37, 53, generator=g) * 2 - 1
    yield a, (a + 0.1 * torch.randn(a.shape, generator=g)).clamp(-1, 1)
    real = read_video(clips / "carphone_pristine.mp4", max_frames=4).frames
    noisy = read_video(clips / "carphone_distorted.mp4", max_frames=4).frames
    yield real, noisy


def test_psnr_and_ssim_agree_with_skimage(clips):
    for a, b in _pairs(clips):
        ref = _skimage(a, b)
        np.testing.assert_allclose(psnr_per_frame(a, b)[0].numpy(), ref[:, 0], rtol=0, atol=1e-4)
        np.testing.assert_allclose(ssim_per_frame(a, b)[0].numpy(), ref[:, 1], rtol=0, atol=1e-4)


def test_identical_videos_and_batching():
    a = torch.rand(2, 3, 2, 16, 16) * 2 - 1
    assert psnr(a, a) == 100.0
    assert torch.allclose(ssim_per_frame(a, a), torch.ones(2, 2))
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(a, a[:, :, :1])
