"""SSIM of videos (Wang et al. 2004): Gaussian window 11x11, sigma 1.5, per channel, per frame.

Matches scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1, channel_axis=...)``: the mean is taken over the positions
where the window fits entirely inside the frame, then over channels.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .psnr import _as_batch

K1, K2 = 0.01, 0.03


@functools.lru_cache(maxsize=8)
def gaussian_kernel_1d(sigma: float = 1.5, truncate: float = 3.5) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)  # 5 for sigma 1.5: an 11-tap window
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _filter(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' Gaussian filter of (N, 1, H, W)."""
    n = k.numel()
    x = F.conv2d(x, k.view(1, 1, n, 1))
    return F.conv2d(x, k.view(1, 1, 1, n))


def ssim_per_frame(x: torch.Tensor, y: torch.Tensor, sigma: float = 1.5) -> torch.Tensor:
    """(B, T) SSIM of videos in [-1, 1], computed on the [0, 1] scale in float64."""
    x, y = _as_batch(x), _as_batch(y)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    b, c, t, h, w = x.shape
    k = gaussian_kernel_1d(sigma).to(x.device)
    if min(h, w) < k.numel():
        raise ValueError(f"frames of {h}x{w} are smaller than the {k.numel()}x{k.numel()} SSIM window")
    # (B, C, T, H, W) -> (B*C*T, 1, H, W) on the [0, 1] scale
    a = ((x.double() + 1) / 2).reshape(b * c * t, 1, h, w)
    bb = ((y.double() + 1) / 2).reshape(b * c * t, 1, h, w)
    mu_a, mu_b = _filter(a, k), _filter(bb, k)
    var_a = _filter(a * a, k) - mu_a**2
    var_b = _filter(bb * bb, k) - mu_b**2
    cov = _filter(a * bb, k) - mu_a * mu_b
    c1, c2 = K1**2, K2**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean(dim=(1, 2, 3)).reshape(b, c, t).mean(dim=1).float()  # (B, T)


def ssim(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean over frames, then over clips."""
    return ssim_per_frame(x, y).mean(dim=1).mean().item()
