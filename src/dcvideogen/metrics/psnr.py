"""PSNR of videos, per frame (Sec. 4.1 protocol: averaged over frames, then over clips)."""

from __future__ import annotations

import torch

MAX_PSNR = 100.0  # reported for identical frames (MSE 0)


def _as_batch(x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 4:
        return x.unsqueeze(0)
    if x.dim() != 5:
        raise ValueError(f"expected video (B, C, T, H, W) or (C, T, H, W), got {tuple(x.shape)}")
    return x


def psnr_per_frame(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, T) PSNR in dB of videos in [-1, 1], on the [0, 1] scale (data range 1, float64)."""
    x, y = _as_batch(x).double(), _as_batch(y).double()
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    mse = ((x - y) / 2).square().mean(dim=(1, 3, 4))  # (B, T)
    return (10 * torch.log10(1.0 / mse.clamp_min(10 ** (-MAX_PSNR / 10)))).float()


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean over frames, then over clips."""
    return psnr_per_frame(x, y).mean(dim=1).mean().item()
