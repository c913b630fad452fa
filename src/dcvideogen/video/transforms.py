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


def camera_move(
    image: torch.Tensor,
    num_frames: int,
    height: int,
    width: int,
    start: tuple[float, float, float],
    end: tuple[float, float, float],
) -> torch.Tensor:
    """A camera pan/zoom over a still image: (C, H, W) -> (C, num_frames, height, width).

    `start` and `end` are crop windows (cy, cx, zoom): the window's centre in [0, 1] of the image and its
    size relative to the largest height x width window that fits (zoom 1: that window; 2: half its side).
    The window moves linearly from `start` to `end`; each frame is resampled bilinearly (antialiased when
    the window is larger than the output) from the full image, so a move is one crop-resize per frame.
    """
    h, w = image.shape[-2:]
    fit = min(h / height, w / width)  # the largest window of this aspect that fits: fit*height x fit*width
    frames = []
    for i in range(num_frames):
        a = i / max(num_frames - 1, 1)
        cy, cx, zoom = (s + (e - s) * a for s, e in zip(start, end))
        wh, ww = fit * height / max(zoom, 1.0), fit * width / max(zoom, 1.0)  # window size, pixels
        top = min(max(cy * h - wh / 2, 0.0), h - wh)
        left = min(max(cx * w - ww / 2, 0.0), w - ww)
        t0, l0 = int(top), int(left)
        t1, l1 = min(h, int(top + wh) + 2), min(w, int(left + ww) + 2)
        patch = image[None, :, t0:t1, l0:l1].float()  # (1, C, h', w'), the window plus a margin
        ph = patch.shape[-2]
        scale_y, scale_x = (t1 - t0) / wh, (l1 - l0) / ww  # the margin in output pixels
        big = (round(height * scale_y), round(width * scale_x))
        patch = F.interpolate(patch, size=big, mode="bilinear", align_corners=False, antialias=ph > big[0])
        oy, ox = round((top - t0) / wh * height), round((left - l0) / ww * width)
        frames.append(patch[0, :, oy : oy + height, ox : ox + width])  # (C, height, width)
    return torch.stack(frames, dim=1).to(image.dtype)  # (C, T, height, width)
