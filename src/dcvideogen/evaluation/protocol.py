"""The reconstruction protocol (DC-VideoGen Sec. 4.1, after Table 1) and the clips it takes from a folder.

Default: one clip of 80 frames per video, from the first frame, each frame resized so its short side is
256 (bilinear, antialiased) and center-cropped to 256x256. Videos shorter than a clip are skipped and
counted; files that cannot be decoded are skipped and counted. Length generalisation (Fig. 3) takes the
first k x 80 frames of each video long enough for them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DCVGError
from ..video import VIDEO_SUFFIXES, iter_frames
from ..video.transforms import resize_center_crop

READ_CHUNK = 16  # frames decoded and resized at a time, so full-resolution frames never pile up


@dataclass(frozen=True)
class Protocol:
    frames: int = 80  # frames per clip
    size: int = 256  # clips are size x size: short side resized to this, then center-cropped
    clips_per_video: int = 1  # consecutive, non-overlapping clips from the start of each video
    frame_stride: int = 1  # keep every n-th frame of the source
    long_factors: tuple[int, ...] = ()  # also evaluate the first k * frames frames (length generalisation)
    max_videos: int | None = None  # the first N videos (sorted by path), or all

    def __post_init__(self) -> None:
        object.__setattr__(self, "long_factors", tuple(sorted({int(k) for k in self.long_factors})))
        if self.frames < 1:
            raise DCVGError(f"--frames {self.frames}: a clip needs at least 1 frame")
        if self.size < 11:
            raise DCVGError(
                f"--size {self.size}: frames must be at least 11 pixels for the 11x11 SSIM window"
            )
        if self.clips_per_video < 1:
            raise DCVGError(f"--clips-per-video {self.clips_per_video}: must be at least 1")
        if self.frame_stride < 1:
            raise DCVGError(f"--frame-stride {self.frame_stride}: must be at least 1")
        if any(k < 2 for k in self.long_factors):
            raise DCVGError(f"--long {','.join(map(str, self.long_factors))}: factors must be integers >= 2")
        if self.max_videos is not None and self.max_videos < 1:
            raise DCVGError(f"--max-videos {self.max_videos}: must be at least 1")

    @property
    def frames_to_read(self) -> int:
        """Frames (after the stride) needed from each video for every clip and long clip."""
        return max([self.clips_per_video, *self.long_factors]) * self.frames

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["long_factors"] = list(self.long_factors)
        d["metrics_on"] = "reconstructions clamped to [-1, 1], in float (not re-quantised to 8 bits)"
        d["resize"] = "short side to size, bilinear with antialias, then center crop size x size"
        d["padding"] = (
            "frames the autoencoder cannot take are padded at the end (last frame repeated) and excluded from "
            "the metrics; pixels padded by edge replication and cropped away"
        )
        return d


def find_videos(root: str | Path, max_videos: int | None = None) -> list[Path]:
    """Video files under `root` (recursively), sorted by relative path."""
    root = Path(root)
    if not root.is_dir():
        raise DCVGError(f"--data {root}: no such folder; give a folder of video files")
    videos = sorted(
        (p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    if not videos:
        raise DCVGError(f"--data {root}: no video files in it ({', '.join(VIDEO_SUFFIXES)})")
    return videos[:max_videos] if max_videos else videos


def data_fingerprint(root: str | Path, videos: list[Path]) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime in ns) of every video: what the cached FVD statistics depend on."""
    root = Path(root)
    return [(v.relative_to(root).as_posix(), v.stat().st_size, v.stat().st_mtime_ns) for v in videos]


@dataclass
class VideoClips:
    """What one video contributes: its clips at the protocol length and its longer clips."""

    name: str  # path relative to the data folder
    frames_read: int
    clips: list[torch.Tensor]  # each (3, frames, size, size) in [-1, 1]
    long: dict[int, torch.Tensor]  # factor -> (3, factor * frames, size, size)


def read_clips(path: Path, name: str, protocol: Protocol) -> VideoClips:
    """Decode the frames the protocol needs from one video (raises VideoError if it cannot be read)."""
    pieces = [
        resize_center_crop(p, protocol.size)  # (3, t, size, size)
        for p in iter_frames(
            path, chunk_frames=READ_CHUNK, max_frames=protocol.frames_to_read, stride=protocol.frame_stride
        )
    ]
    video = torch.cat(pieces, dim=1)
    n, length = video.shape[1], protocol.frames
    clips = [
        video[:, i * length : (i + 1) * length] for i in range(min(protocol.clips_per_video, n // length))
    ]
    long = {k: video[:, : k * length] for k in protocol.long_factors if n >= k * length}
    return VideoClips(name=name, frames_read=n, clips=clips, long=long)
