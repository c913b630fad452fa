"""The floor every video autoencoder must beat: a codec with no learning that keeps as many values as an
fXtYcZ latent.

    encode: average every Y frames, area-downsample each side by s = X * sqrt(3 / Z)   (3 channels kept)
    decode: bicubic upsample back to the frame size, repeat each frame Y times

An fXtYcZ latent holds Z * (T / Y) * (H / X) * (W / X) values; the naive code holds 3 * (T / Y) * (H / s) *
(W / s), the same when s = X * sqrt(3 / Z) (f32t4c32: s = 9.80, f32t4c128: 4.90, f64t4c128: 9.80).
`dcvg eval-ae --model naive-f32t4c32` evaluates it like any autoencoder.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DCVGError

NAIVE_RE = re.compile(r"^naive-f(\d+)t(\d+)c(\d+)$")


def naive_side_factor(spatial: int, channels: int) -> float:
    """s = X * sqrt(3 / Z): the area downsampling that keeps the latent's number of values."""
    return spatial * math.sqrt(3.0 / channels)


def naive_size(height: int, width: int, factor: float) -> tuple[int, int]:
    """The downsampled frame size (at least 1 x 1)."""
    return max(1, round(height / factor)), max(1, round(width / factor))


def naive_encode(x: torch.Tensor, temporal: int, factor: float) -> torch.Tensor:
    """(B, 3, T, H, W), T a multiple of `temporal` -> (B, 3, T / Y, h, w): frame means, area-downsampled."""
    b, c, t, h, w = x.shape
    if t % temporal:
        raise ValueError(f"{t} frames: the naive codec takes a multiple of {temporal}")
    x = x.view(b, c, t // temporal, temporal, h, w).mean(dim=3)  # (B, 3, T/Y, H, W)
    size = naive_size(h, w, factor)
    frames = x.transpose(1, 2).reshape(-1, c, h, w)  # (B T/Y, 3, H, W)
    small = F.interpolate(frames, size=size, mode="area")  # (B T/Y, 3, h, w)
    return small.view(b, t // temporal, c, *size).transpose(1, 2)  # (B, 3, T/Y, h, w)


def naive_decode(z: torch.Tensor, temporal: int, height: int, width: int) -> torch.Tensor:
    """(B, 3, T', h, w) -> (B, 3, T' Y, H, W): bicubic upsampling, each frame repeated Y times."""
    b, c, t, h, w = z.shape
    frames = z.transpose(1, 2).reshape(-1, c, h, w)  # (B T', 3, h, w)
    big = F.interpolate(frames, size=(height, width), mode="bicubic", align_corners=False).clamp(-1, 1)
    big = big.view(b, t, c, height, width).transpose(1, 2)  # (B, 3, T', H, W)
    return big.repeat_interleave(temporal, dim=2)  # (B, 3, T' Y, H, W)


class NaiveCodec(nn.Module):
    """The naive fXtYcZ codec as a module (no weights; a buffer carries the device and dtype)."""

    def __init__(self, spatial: int, temporal: int, channels: int) -> None:
        super().__init__()
        if min(spatial, temporal, channels) < 1:
            raise DCVGError(f"naive-f{spatial}t{temporal}c{channels}: every factor must be at least 1")
        self.spatial, self.temporal, self.channels = spatial, temporal, channels
        self.factor = naive_side_factor(spatial, channels)
        self.register_buffer("anchor", torch.zeros(()), persistent=False)
        self._size: tuple[int, int] | None = None

    @property
    def device(self) -> torch.device:
        return self.anchor.device

    @property
    def dtype(self) -> torch.dtype:
        return self.anchor.dtype

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Remembers the frame size for the next `decode` (the code itself does not hold it)."""
        self._size = tuple(x.shape[-2:])
        return naive_encode(x, self.temporal, self.factor)

    def decode(self, z: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        size = size or self._size
        if size is None:
            raise ValueError("decode needs the frame size: pass size=(H, W) or encode first")
        return naive_decode(z, self.temporal, *size)


def parse_naive(spec: str) -> tuple[int, int, int] | None:
    """(X, Y, Z) of 'naive-fXtYcZ', or None when `spec` is not such a name."""
    m = NAIVE_RE.match(str(spec))
    return tuple(int(v) for v in m.groups()) if m else None
