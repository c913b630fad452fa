"""Spatial tiling with blending, for frames too large to run at once (4K).

A frame is covered by overlapping square tiles; each tile is encoded (or decoded) on its own and the
results are combined with weights that ramp linearly across the overlaps and are normalised to sum to
one at every pixel, so tiling a function that acts pixel by pixel changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tile:
    """One tile: rows [y, y + h) and columns [x, x + w), in input units."""

    y: int
    x: int
    h: int
    w: int


def tile_starts(length: int, tile: int, overlap: int, multiple: int) -> list[int]:
    """Start offsets covering [0, length) with tiles of size `tile` overlapping by at least `overlap`.

    All offsets are multiples of `multiple`; the last tile ends exactly at `length` when length >= tile.
    """
    if tile % multiple or overlap % multiple or length % multiple:
        raise ValueError(
            f"tile {tile}, overlap {overlap} and length {length} must be multiples of {multiple}"
        )
    if overlap >= tile:
        raise ValueError(f"tile overlap {overlap} must be smaller than the tile size {tile}")
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def plan_tiles(height: int, width: int, tile: int, overlap: int, multiple: int) -> list[Tile]:
    ys = tile_starts(height, tile, overlap, multiple)
    xs = tile_starts(width, tile, overlap, multiple)
    return [Tile(y, x, min(tile, height - y), min(tile, width - x)) for y in ys for x in xs]


def _ramp(size: int, ramp: int, ramp_start: bool, ramp_end: bool) -> torch.Tensor:
    """1D weights: 1 inside, rising linearly over `ramp` samples at a side that overlaps a neighbour."""
    w = torch.ones(size, dtype=torch.float64)
    ramp = min(ramp, size)
    if ramp > 0:
        r = torch.arange(1, ramp + 1, dtype=torch.float64) / (ramp + 1)
        if ramp_start:
            w[:ramp] = torch.minimum(w[:ramp], r)
        if ramp_end:
            w[size - ramp :] = torch.minimum(w[size - ramp :], r.flip(0))
    return w


def blend_weight(t: Tile, height: int, width: int, ramp: int) -> torch.Tensor:
    """(h, w) weight of tile `t` in a frame of (height, width); ramps only where a neighbour exists."""
    wy = _ramp(t.h, ramp, t.y > 0, t.y + t.h < height)
    wx = _ramp(t.w, ramp, t.x > 0, t.x + t.w < width)
    return wy[:, None] * wx[None, :]


class TileBlender:
    """Accumulates weighted tiles of (B, C, T, h, w) into a (B, C, T, H, W) frame, then normalises."""

    def __init__(self, height: int, width: int, ramp: int) -> None:
        self.height, self.width, self.ramp = height, width, ramp
        self.acc: torch.Tensor | None = None
        self.norm = torch.zeros(height, width, dtype=torch.float64)

    def add(self, t: Tile, value: torch.Tensor) -> None:
        if self.acc is None:
            b, c, frames = value.shape[:3]
            self.acc = value.new_zeros(b, c, frames, self.height, self.width, dtype=torch.float32)
        w = blend_weight(t, self.height, self.width, self.ramp)
        self.norm[t.y : t.y + t.h, t.x : t.x + t.w] += w
        self.acc[..., t.y : t.y + t.h, t.x : t.x + t.w] += value.float() * w.to(value.device, torch.float32)

    def result(self, dtype: torch.dtype) -> torch.Tensor:
        assert self.acc is not None, "no tile was added"
        return (self.acc / self.norm.to(self.acc.device, torch.float32)).to(dtype)
