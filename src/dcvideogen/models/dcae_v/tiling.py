"""Spatial tiling with blending, for frames too large to run at once (4K), and the memory it must fit in.

A frame is covered by overlapping square tiles; each tile is encoded (or decoded) on its own and the
results are combined with weights that ramp linearly across the overlaps and are normalised to sum to
one at every pixel, so tiling a function that acts pixel by pixel changes nothing.

How finely to tile is decided against a memory budget; `host_memory_available` says how much memory this
process can still allocate on the CPU (the free RAM, the container's limit, the address-space limit).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

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


def tile_spans(length: int, tile: int, overlap: int, multiple: int) -> list[tuple[int, int]]:
    """(start, size) of the tiles covering [0, length) along one axis."""
    return [(s, min(tile, length - s)) for s in tile_starts(length, tile, overlap, multiple)]


def plan_tiles(height: int, width: int, tile: int, overlap: int, multiple: int) -> list[Tile]:
    """The grid of tiles covering a height x width frame, row by row."""
    rows, cols = tile_spans(height, tile, overlap, multiple), tile_spans(width, tile, overlap, multiple)
    return [Tile(y, x, h, w) for y, h in rows for x, w in cols]


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
    """Accumulates weighted tiles of (B, C, T, h, w) into a (B, C, T, H, W) frame, then normalises.

    The tiles must form a grid (the rows of `plan_tiles` times its columns): the normalisation is then the
    product of a row profile and a column profile, so no full-frame weight map is stored.
    """

    def __init__(self, height: int, width: int, ramp: int) -> None:
        self.height, self.width, self.ramp = height, width, ramp
        self.acc: torch.Tensor | None = None
        self.rows: dict[tuple[int, int], torch.Tensor] = {}  # (y, h) -> weights (h,)
        self.cols: dict[tuple[int, int], torch.Tensor] = {}  # (x, w) -> weights (w,)
        self.count = 0

    def add(self, t: Tile, value: torch.Tensor) -> None:
        if self.acc is None:
            b, c, frames = value.shape[:3]
            self.acc = value.new_zeros(b, c, frames, self.height, self.width, dtype=torch.float32)
        wy = self.rows.setdefault((t.y, t.h), _ramp(t.h, self.ramp, t.y > 0, t.y + t.h < self.height))
        wx = self.cols.setdefault((t.x, t.w), _ramp(t.w, self.ramp, t.x > 0, t.x + t.w < self.width))
        w = (wy[:, None] * wx[None, :]).to(value.device, torch.float32)  # (h, w), as `blend_weight`
        self.acc[..., t.y : t.y + t.h, t.x : t.x + t.w] += value.float() * w
        self.count += 1

    def _profile(self, spans: dict[tuple[int, int], torch.Tensor], length: int) -> torch.Tensor:
        total = torch.zeros(length, dtype=torch.float64)
        for (start, size), w in spans.items():
            total[start : start + size] += w
        return total

    def result(self, dtype: torch.dtype, rows_per_step: int = 256) -> torch.Tensor:
        """The blended frame; normalised in place, a few rows at a time (no full-frame temporary)."""
        assert self.acc is not None, "no tile was added"
        assert self.count == len(self.rows) * len(self.cols), "the tiles must form a grid"
        ny, nx = self._profile(self.rows, self.height), self._profile(self.cols, self.width)
        for y in range(0, self.height, rows_per_step):
            norm = ny[y : y + rows_per_step, None] * nx[None, :]  # (rows, W), sum of the tile weights
            self.acc[..., y : y + rows_per_step, :] /= norm.to(self.acc.device, torch.float32)
        return self.acc.to(dtype)


# ---- memory ----------------------------------------------------------------------------------------------


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (no limit) -> None


def _stat_value(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _cgroup_available(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The container's memory limit minus what it uses (not counting reclaimable file cache)."""
    for limit, usage, stat, inactive in (
        ("memory.max", "memory.current", "memory.stat", "inactive_file"),  # cgroup v2
        (
            "memory/memory.limit_in_bytes",
            "memory/memory.usage_in_bytes",
            "memory/memory.stat",
            "total_inactive_file",
        ),
    ):
        cap, used = _read_int(root / limit), _read_int(root / usage)
        if cap is not None and used is not None and cap < 2**60:
            return cap - max(0, used - _stat_value(root / stat, inactive))
    return None


def _rlimit_available() -> int | None:
    """Address space left under `ulimit -v` (RLIMIT_AS) and data left under RLIMIT_DATA, the smaller."""
    try:
        import resource  # POSIX only
    except ImportError:
        return None
    try:
        status = dict(
            line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line
        )
    except OSError:
        return None
    left = []
    for limit, field in ((resource.RLIMIT_AS, "VmSize"), (resource.RLIMIT_DATA, "VmData")):
        soft, _ = resource.getrlimit(limit)
        if soft != resource.RLIM_INFINITY and field in status:
            left.append(soft - int(status[field].split()[0]) * 1024)
    return min(left) if left else None


def host_memory_available() -> tuple[int, str]:
    """Bytes this process can still allocate in host memory, and what limits it (for messages)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 32 * 2**30
    found = [(total, "the RAM")]
    for value, what in (
        (_meminfo_available(), "the free RAM"),
        (_cgroup_available(), "the container's memory limit"),
        (_rlimit_available(), "the address-space limit (ulimit -v)"),
    ):
        if value is not None:
            found.append((max(0, value), what))
    return min(found)
