"""Training data for DC-AE-V: random clips from a folder tree of videos and images.

Every sample is a pure function of (seed, global sample index): which file, where the clip starts,
its frame stride, crop scale, crop position and flip are drawn from a generator seeded by both. So
the data stream is the same with any number of DataLoader workers, ranks shard it by index, and
resuming at step s continues exactly where the stream was (the position is the sample counter).
Images become static clips (the image repeated), mixed in with probability `image_ratio`.
"""

from __future__ import annotations

import fnmatch
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from ..errors import DCVGError
from ..video import IMAGE_SUFFIXES, VIDEO_SUFFIXES, VideoError, probe_video, read_clip
from ..video.transforms import camera_move, resize_short_side
from .config import DataConfig

logger = logging.getLogger(__name__)

MAX_RETRIES = 16


@dataclass(frozen=True)
class MediaFile:
    path: Path
    num_frames: int  # 1 for images
    is_image: bool


@dataclass
class ScanReport:
    videos: int = 0
    images: int = 0
    unreadable: int = 0
    too_short: int = 0
    excluded: int = 0


def scan_media(root: str | Path, cfg: DataConfig) -> tuple[list[MediaFile], ScanReport]:
    """Index the videos and images under `root` (recursively), probing each once.

    Unreadable files and videos shorter than one clip are left out with one warning each.
    """
    root = Path(root)
    if not root.exists():
        raise DCVGError(f"{root}: no such data folder")
    paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    need = (cfg.num_frames - 1) * cfg.frame_stride + 1
    report, files = ScanReport(), []
    for p in paths:
        suffix = p.suffix.lower()
        if suffix not in VIDEO_SUFFIXES + IMAGE_SUFFIXES:
            continue
        if any(fnmatch.fnmatch(p.name, pat) or fnmatch.fnmatch(str(p), pat) for pat in cfg.exclude):
            report.excluded += 1
            continue
        try:
            info = probe_video(p)
        except VideoError as e:
            logger.warning(f"skipping unreadable file: {e}")
            report.unreadable += 1
            continue
        if suffix in IMAGE_SUFFIXES:
            files.append(MediaFile(p, 1, True))
            report.images += 1
        elif info.num_frames < need:
            logger.warning(f"skipping {p}: {info.num_frames} frames, a clip needs {need}")
            report.too_short += 1
        else:
            files.append(MediaFile(p, info.num_frames, False))
            report.videos += 1
    if not files:
        raise DCVGError(
            f"{root}: no usable videos or images ({report.unreadable} unreadable, {report.too_short} too short "
            f"for {cfg.num_frames} frames); add files or lower data.num_frames"
        )
    return files, report


def sample_generator(seed: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + index) % (2**63 - 1))


def random_crop_resize(clip: torch.Tensor, size: int, scale: float, fy: float, fx: float) -> torch.Tensor:
    """(C, T, H, W) -> (C, T, size, size): resize the short side to size*scale, crop at relative (fy, fx)."""
    h, w = clip.shape[-2:]
    short = max(size, round(size * scale))
    if min(h, w) != short:
        nh, nw = (
            (short, max(short, round(w * short / h))) if h <= w else (max(short, round(h * short / w)), short)
        )
        clip = F.interpolate(
            clip.transpose(0, 1), size=(nh, nw), mode="bilinear", antialias=True, align_corners=False
        )
        clip = clip.transpose(0, 1).clamp(-1, 1)  # (C, T, nh, nw)
        h, w = nh, nw
    y, x = round(fy * (h - size)), round(fx * (w - size))
    return clip[:, :, y : y + size, x : x + size]


# RGB <-> YIQ (NTSC): hue is the angle of the (I, Q) chroma vector, saturation its length.
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


def color_matrix(hue_turns: float, saturation: float) -> torch.Tensor:
    """(3, 3) RGB -> RGB: rotate the chroma by `hue_turns` of a full turn and scale it by `saturation`."""
    a = 2 * math.pi * hue_turns
    rot = torch.tensor([[1.0, 0.0, 0.0], [0.0, math.cos(a), -math.sin(a)], [0.0, math.sin(a), math.cos(a)]])
    rot[1:, 1:] *= saturation
    return _YIQ_TO_RGB @ rot @ _RGB_TO_YIQ


def color_augment(
    clip: torch.Tensor, hue_turns: float, saturation: float, contrast: float, brightness: float
) -> torch.Tensor:
    """(3, T, H, W) in [-1, 1] -> the same clip with its colours changed, clamped to [-1, 1]: chroma rotated and
    scaled (`color_matrix`), contrast scaled about the clip's mean, then `brightness` added."""
    x = torch.einsum("ij,jthw->ithw", color_matrix(hue_turns, saturation), clip.float())
    mean = x.mean()
    x = (x - mean) * contrast + mean + brightness
    return x.clamp(-1, 1).to(clip.dtype)


def draw_camera_move(g: torch.Generator, max_zoom: float) -> tuple[tuple, tuple]:
    """Random start and end windows (cy, cx, zoom) of a camera move (`video.transforms.camera_move`)."""
    u = torch.rand(6, generator=g).tolist()
    start = (u[0], u[1], 1 + (max_zoom - 1) * u[2])
    end = (u[3], u[4], 1 + (max_zoom - 1) * u[5])
    return start, end


class ClipDataset(Dataset):
    """Map-style dataset over an infinite index space: item i is the i-th random clip of the stream."""

    def __init__(self, files: list[MediaFile], cfg: DataConfig, seed: int) -> None:
        self.cfg, self.seed = cfg, seed
        self.videos = [f for f in files if not f.is_image]
        self.images = [f for f in files if f.is_image]
        self._warned: set[Path] = set()

    def __len__(self) -> int:  # the stream is infinite; samplers provide the indices
        return 2**62

    def _draw(self, g: torch.Generator) -> tuple[MediaFile, int, int]:
        cfg = self.cfg
        use_image = bool(self.images) and (
            not self.videos or torch.rand((), generator=g).item() < cfg.image_ratio
        )
        pool = self.images if use_image else self.videos
        f = pool[int(torch.randint(len(pool), (), generator=g))]
        if f.is_image:
            return f, 0, 1
        hi = max(cfg.frame_stride, cfg.max_frame_stride)
        stride = int(torch.randint(cfg.frame_stride, hi + 1, (), generator=g))
        stride = max(1, min(stride, (f.num_frames - 1) // max(cfg.num_frames - 1, 1)))
        span = (cfg.num_frames - 1) * stride + 1
        start = int(torch.randint(f.num_frames - span + 1, (), generator=g))
        return f, start, stride

    def _camera_clip(self, image: torch.Tensor, scale: float, g: torch.Generator) -> torch.Tensor:
        """(C, H, W) -> (C, T, size, size): a camera move over the image, resized like a video (short side
        size * scale) first."""
        cfg = self.cfg
        image = resize_short_side(image, max(cfg.size, round(cfg.size * scale))).clamp(-1, 1)
        start, end = draw_camera_move(g, cfg.max_zoom)
        return camera_move(image, cfg.num_frames, cfg.size, cfg.size, start, end)

    def _recolor(self, clip: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        cfg = self.cfg
        if not (cfg.hue or cfg.saturation or cfg.contrast or cfg.brightness):
            return clip
        u = (2 * torch.rand(4, generator=g) - 1).tolist()  # four draws in [-1, 1]
        return color_augment(
            clip, cfg.hue * u[0], 1 + cfg.saturation * u[1], 1 + cfg.contrast * u[2], cfg.brightness * u[3]
        )

    def __getitem__(self, index: int) -> dict:
        cfg = self.cfg
        g = sample_generator(self.seed, index)
        skipped = 0
        for _ in range(MAX_RETRIES):
            f, start, stride = self._draw(g)
            try:  # an image is read once and repeated after cropping: a static clip
                clip = (
                    read_clip(f.path, 0, 1)
                    if f.is_image
                    else read_clip(f.path, start, cfg.num_frames, stride)
                )
            except VideoError as e:
                if f.path not in self._warned:
                    logger.warning(f"skipping a clip: {e}")
                    self._warned.add(f.path)
                skipped += 1
                continue
            scale = cfg.min_scale + (cfg.max_scale - cfg.min_scale) * torch.rand((), generator=g).item()
            fy, fx = torch.rand(2, generator=g).tolist()
            if f.is_image and cfg.camera_ratio > 0 and torch.rand((), generator=g).item() < cfg.camera_ratio:
                clip = self._camera_clip(clip[:, 0], scale, g)
            else:
                clip = random_crop_resize(clip, cfg.size, scale, fy, fx)
                if f.is_image:
                    clip = clip.expand(-1, cfg.num_frames, -1, -1)
            if cfg.hflip and torch.rand((), generator=g).item() < 0.5:
                clip = clip.flip(-1)
            clip = self._recolor(clip, g)
            return {"video": clip.contiguous(), "index": index, "skipped": skipped}
        raise DCVGError(
            f"{MAX_RETRIES} clips in a row could not be read (last: {f.path}); check the data folder"
        )


class StreamSampler(Sampler[int]):
    """Global sample indices of this rank, from `start_step` on: step s, micro-batch m, rank r, slot j
    reads sample ((s * accum + m) * world + r) * batch + j. Infinite."""

    def __init__(self, start_step: int, batch: int, accum: int = 1, rank: int = 0, world: int = 1) -> None:
        self.start_step, self.batch, self.accum, self.rank, self.world = start_step, batch, accum, rank, world

    def __iter__(self) -> Iterator[int]:
        micro = self.start_step * self.accum
        while True:
            base = (micro * self.world + self.rank) * self.batch
            yield from range(base, base + self.batch)
            micro += 1

    def __len__(self) -> int:
        return 2**62


def collate(items: list[dict]) -> dict:
    return {
        "video": torch.stack([it["video"] for it in items]),  # (B, C, T, S, S)
        "index": torch.tensor([it["index"] for it in items]),
        "skipped": sum(it["skipped"] for it in items),
    }


def iter_batches(loader: torch.utils.data.DataLoader) -> Iterator[dict]:
    """`iter(loader)` without a draw from the global RNG (a DataLoader seeds its workers from it): a run resumed
    at step s must leave the RNG where the uninterrupted run did. The samples do not depend on that seed."""
    with torch.random.fork_rng(devices=[]):
        return iter(loader)


def make_loader(
    files, cfg: DataConfig, seed: int, start_step: int, batch: int, accum: int, rank: int, world: int
):
    dataset = ClipDataset(files, cfg, seed)
    sampler = StreamSampler(start_step, batch, accum, rank, world)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch,
        sampler=sampler,
        num_workers=cfg.workers,
        collate_fn=collate,
        persistent_workers=cfg.workers > 0,
        prefetch_factor=2 if cfg.workers > 0 else None,
        # Spawned, not forked: a fork copies locks that the parent's FFmpeg decoder threads may hold, and a
        # worker then hangs in its first read (seen once in the test suite).
        multiprocessing_context="spawn" if cfg.workers > 0 else None,
    )
