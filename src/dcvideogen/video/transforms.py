"""Spatial transforms of videos (C, T, H, W) or (B, C, T, H, W): resize the short side, center crop, resize to
cover a size."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resize_short_side(video: torch.Tensor, size: int, antialias: bool = True) -> torch.Tensor:
    """Bilinear resize so that min(H, W) == size, keeping the aspect ratio (long side rounded)."""
    h, w = video.shape[-2:]
    if min(h, w) == size:
        return video
    nh, nw = (size, max(size, round(w * size / h))) if h <= w else (max(size, round(h * size / w)), size)
    lead = video.shape[:-2]
    frames = video.reshape(-1, 1, h, w).float()  # every channel of every frame as one image
    frames = F.interpolate(frames, size=(nh, nw), mode="bilinear", align_corners=False, antialias=antialias)
    return frames.reshape(*lead, nh, nw).to(video.dtype)


def center_crop(video: torch.Tensor, height: int, width: int) -> torch.Tensor:
    h, w = video.shape[-2:]
    if height > h or width > w:
        raise ValueError(f"cannot crop {height}x{width} from frames of {h}x{w}")
    top, left = (h - height) // 2, (w - width) // 2
    return video[..., top : top + height, left : left + width]


def resize_center_crop(video: torch.Tensor, size: int, antialias: bool = True) -> torch.Tensor:
    """Resize the short side to `size`, then take the central size x size square."""
    return center_crop(resize_short_side(video, size, antialias), size, size)


def resize_cover(video: torch.Tensor, height: int, width: int, antialias: bool = True) -> torch.Tensor:
    """Bilinear resize, keeping the aspect ratio, to the smallest size that covers height x width, then the
    central height x width crop: (..., H, W) -> (..., height, width)."""
    h, w = video.shape[-2:]
    if (h, w) == (height, width):
        return video
    scale = max(height / h, width / w)
    nh, nw = max(height, round(h * scale)), max(width, round(w * scale))
    lead = video.shape[:-2]
    frames = video.reshape(-1, 1, h, w).float()  # every channel of every frame as one image
    frames = F.interpolate(frames, size=(nh, nw), mode="bilinear", align_corners=False, antialias=antialias)
    return center_crop(frames.reshape(*lead, nh, nw).to(video.dtype), height, width)
