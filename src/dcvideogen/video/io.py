"""Video reading and writing on PyAV.

Frames are torch tensors (C, T, H, W), float32 in [-1, 1], RGB. Readers accept video files (mp4,
webm, mov, mkv, avi, gif), single images, and folders of image frames (sorted by name); a file that
breaks off early yields the frames that decode (`missing_frames_note` tells the caller). Writers
produce mp4 (h264, yuv420p) and gif, through a temporary file renamed into place when complete, so a
failure never leaves a partial output behind. Sound is never read or written.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from ..errors import DCVGError
from ..utils.atomic import set_default_mode

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif", ".m4v")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
WRITE_SUFFIXES = (".mp4", ".gif")
DEFAULT_FOLDER_FPS = 24.0
MAX_FPS = 1000.0

logger = logging.getLogger(__name__)


class VideoError(DCVGError):
    """A video that cannot be read or written; the message names the file and what to do."""


@dataclass
class Video:
    frames: torch.Tensor  # (C, T, H, W) float32 in [-1, 1]
    fps: float

    @property
    def num_frames(self) -> int:
        return self.frames.shape[1]


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int  # exact for folders and images; the container's count for files (0: unknown)
    fps: float
    height: int
    width: int
    exact_count: bool = True  # False when num_frames is estimated from the duration (webm, mkv, ...)
    has_audio: bool = False


# ---- tensor <-> uint8 --------------------------------------------------------------------------------


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """(C, T, H, W) in [-1, 1] -> (T, H, W, C) uint8."""
    x = ((frames.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).contiguous().cpu().numpy()


def from_uint8(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, C) uint8 -> (C, T, H, W) float32 in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float() / 127.5 - 1.0


# ---- reading ----------------------------------------------------------------------------------------


def _check_path(path: Path) -> None:
    if not path.exists():
        raise VideoError(f"{path}: no such file or folder")
    if path.is_dir():
        return
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES + IMAGE_SUFFIXES:
        raise VideoError(
            f"{path}: unsupported format {suffix or '(no extension)'!r}; give a video "
            f"({', '.join(VIDEO_SUFFIXES)}), an image or a folder of frames"
        )
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: the file is empty")


def _open(path: Path) -> av.container.InputContainer:
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise VideoError(
            f"{path}: cannot be opened as video ({_reason(e)}); is the file complete and a video?"
        ) from e
    if not container.streams.video:
        container.close()
        kinds = ", ".join(sorted({s.type for s in container.streams})) or "none"
        raise VideoError(f"{path}: has no video stream (streams: {kinds}); give a file with video in it")
    return container


def _reason(e: BaseException) -> str:
    """FFmpeg's own words for an error, without the file name PyAV appends."""
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


def _frame_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise VideoError(f"{folder}: the folder holds no image frames ({', '.join(IMAGE_SUFFIXES)})")
    return files


def _read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 of one image file."""
    container = _open(path)
    try:
        for frame in container.decode(video=0):
            return frame.to_ndarray(format="rgb24")
    except av.error.FFmpegError as e:
        raise VideoError(f"{path}: cannot be decoded as an image ({_reason(e)})") from e
    finally:
        container.close()
    raise VideoError(f"{path}: the image holds no picture")


def probe_video(path: str | Path) -> VideoInfo:
    """Frame count, fps and size without decoding the whole file."""
    path = Path(path)
    _check_path(path)
    if path.is_dir():
        files = _frame_files(path)
        h, w = _read_image(files[0]).shape[:2]
        return VideoInfo(len(files), DEFAULT_FOLDER_FPS, h, w)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        h, w = _read_image(path).shape[:2]
        return VideoInfo(1, DEFAULT_FOLDER_FPS, h, w)
    with _open(path) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or DEFAULT_FOLDER_FPS)
        n = stream.frames
        exact = bool(n)
        if not n and stream.duration and stream.time_base:
            n = round(float(stream.duration * stream.time_base) * fps)
        if not n and container.duration:
            n = round(container.duration / 1e6 * fps)
        h, w = stream.codec_context.height, stream.codec_context.width
        if not (h > 0 and w > 0):
            raise VideoError(f"{path}: the video stream has no picture size ({w}x{h}); is the file a video?")
        has_audio = bool(container.streams.audio)
        return VideoInfo(int(n or 0), fps, h, w, exact_count=exact, has_audio=has_audio)


def missing_frames_note(
    path: str | Path, info: VideoInfo, start: int, max_frames: int | None, decoded: int
) -> str | None:
    """One line when `decoded` frames (read from `start` on, at most `max_frames`) fall short of what the
    container declares, as a truncated or damaged file does; None when the file is complete.

    A count estimated from the duration (exact_count False) is allowed to be 5% (at least 1 frame) off.
    """
    if not info.num_frames:
        return None
    expected = max(0, info.num_frames - start)
    if max_frames is not None:
        expected = min(expected, max_frames)
    slack = 0 if info.exact_count else max(1, expected // 20)
    if decoded + slack >= expected:
        return None
    declared = (
        f"its header declares {info.num_frames}"
        if info.exact_count
        else f"its duration suggests about {info.num_frames}"
    )
    return f"{path}: only {start + decoded} frames decode but {declared}; the file is truncated or damaged"


def iter_frames(
    path: str | Path, chunk_frames: int = 16, start: int = 0, max_frames: int | None = None, stride: int = 1
) -> Iterator[torch.Tensor]:
    """Decode a video (file, image or frame folder) lazily; yields (C, t, H, W) pieces of <= chunk_frames.

    Frames `start`, `start + stride`, ... are kept, at most `max_frames` of them. Raises VideoError on a
    file that cannot be decoded or holds no frame; a file that breaks off after some frames (truncated or
    damaged) ends there: compare the count with `missing_frames_note`.
    """
    path = Path(path)
    _check_path(path)
    if stride < 1 or start < 0 or chunk_frames < 1:
        raise ValueError(
            f"need stride >= 1, start >= 0, chunk_frames >= 1 (got {stride}, {start}, {chunk_frames})"
        )
    buf: list[np.ndarray] = []
    kept = 0
    for i, frame in enumerate(_raw_frames(path)):
        if i < start or (i - start) % stride:
            continue
        if max_frames is not None and kept >= max_frames:
            break
        if buf and frame.shape != buf[0].shape:
            raise VideoError(
                f"{path}: frame {i} has size {frame.shape[:2]}, earlier frames {buf[0].shape[:2]}"
            )
        buf.append(frame)
        kept += 1
        if len(buf) == chunk_frames:
            yield from_uint8(np.stack(buf))
            buf = []
    if buf:
        yield from_uint8(np.stack(buf))
    if kept == 0:
        raise VideoError(f"{path}: contains no frames" + (f" at or after frame {start}" if start else ""))


def _raw_frames(path: Path) -> Iterator[np.ndarray]:
    if path.is_dir():
        for f in _frame_files(path):
            yield _read_image(f)
        return
    if path.suffix.lower() in IMAGE_SUFFIXES:
        yield _read_image(path)
        return
    container = _open(path)
    decoded = 0
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            yield frame.to_ndarray(format="rgb24")
            decoded += 1
    except av.error.FFmpegError as e:
        if not decoded:
            raise VideoError(
                f"{path}: decoding failed ({_reason(e)}); the file may be truncated or corrupt"
            ) from e
        # The file breaks off after `decoded` frames (truncated or damaged): they are what it holds.
        # Callers compare the count with the header's (missing_frames_note).
        logger.debug(f"{path}: decoding stopped after {decoded} frames ({_reason(e)})")
    finally:
        container.close()


def read_clip(path: str | Path, start: int, num_frames: int, stride: int = 1) -> torch.Tensor:
    """Frames start, start + stride, ... (num_frames of them) as (C, T, H, W), seeking instead of
    decoding the file from its beginning. Raises VideoError when the file ends too early."""
    path = Path(path)
    _check_path(path)
    if path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES:
        frames = torch.cat(
            list(iter_frames(path, 64, start=start, max_frames=num_frames, stride=stride)), dim=1
        )
    else:
        frames = _read_clip_seek(path, start, num_frames, stride)
    if frames.shape[1] < num_frames:
        raise VideoError(f"{path}: has fewer than {start + (num_frames - 1) * stride + 1} frames")
    return frames


def _read_clip_seek(path: Path, start: int, num_frames: int, stride: int) -> torch.Tensor:
    container = _open(path)
    try:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        tb = stream.time_base
        t0 = stream.start_time or 0
        if fps <= 0 or tb is None:  # no timing: decode from the start
            container.close()
            pieces = list(iter_frames(path, 64, start=start, max_frames=num_frames, stride=stride))
            return torch.cat(pieces, dim=1)
        if start > 0:  # to the last keyframe at or before the first wanted frame
            container.seek(t0 + int(start / fps / tb), stream=stream, backward=True, any_frame=False)
        out: list[np.ndarray] = []
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            index = round(float((frame.pts - t0) * tb) * fps)
            if index < start or (index - start) % stride:
                continue
            out.append(frame.to_ndarray(format="rgb24"))
            if len(out) == num_frames:
                break
    except av.error.FFmpegError as e:
        raise VideoError(
            f"{path}: decoding failed ({_reason(e)}); the file may be truncated or corrupt"
        ) from e
    finally:
        container.close()
    if not out:
        raise VideoError(f"{path}: contains no frames at or after frame {start}")
    return from_uint8(np.stack(out))


def read_video(path: str | Path, max_frames: int | None = None, start: int = 0, stride: int = 1) -> Video:
    """Whole video (or a part of it) as one tensor, with its fps (divided by `stride`)."""
    info = probe_video(path)
    pieces = list(iter_frames(path, chunk_frames=64, start=start, max_frames=max_frames, stride=stride))
    return Video(torch.cat(pieces, dim=1), info.fps / stride)


# ---- writing ----------------------------------------------------------------------------------------


def check_output_path(path: str | Path, suffixes: tuple[str, ...] = WRITE_SUFFIXES) -> Path:
    """Validate an output path before any work: known suffix, existing writable folder."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise VideoError(
            f"{path}: cannot write {path.suffix or 'files without extension'!r}; use {' or '.join(suffixes)}"
        )
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise VideoError(f"{path}: the folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK):
        raise VideoError(f"{path}: the folder {folder} is not writable; choose another output path")
    if path.is_dir():
        raise VideoError(f"{path}: is a folder; give a file name")
    return path


class _GifPalette:
    """FFmpeg palettegen + paletteuse per frame: rgb24 frames in, pal8 frames out."""

    def __init__(self, height: int, width: int) -> None:
        g = av.filter.Graph()
        src = g.add_buffer(width=width, height=height, format="rgb24", time_base=Fraction(1, 100))
        split = g.add("split")
        gen = g.add("palettegen", "stats_mode=single:reserve_transparent=0")
        use = g.add("paletteuse", "new=1")
        sink = g.add("buffersink")
        src.link_to(split)
        split.link_to(gen, 0, 0)
        split.link_to(use, 1, 0)
        gen.link_to(use, 0, 1)
        use.link_to(sink)
        g.configure()
        self.graph, self.pts = g, 0

    def push(self, frame: av.VideoFrame | None) -> list[av.VideoFrame]:
        if frame is not None:
            frame.pts, frame.time_base = self.pts, Fraction(1, 100)
            self.pts += 1
        self.graph.push(frame)
        out = []
        while True:
            try:
                f = self.graph.pull()
            except (av.error.BlockingIOError, av.error.EOFError):
                return out
            f.pts = None
            out.append(f)


def even_size(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, C) -> (T, H', W', C) with H', W' even, repeating the last row/column: yuv420p (what every
    player decodes) halves the chroma resolution, so h264 needs even sides."""
    h, w = frames.shape[1:3]
    if h % 2 == 0 and w % 2 == 0:
        return frames
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def check_fps(fps: float, path: str | Path) -> float:
    """The frame rate of a video to write, as a float in (0, MAX_FPS]."""
    rate = float(fps)
    if not (math.isfinite(rate) and 0 < rate <= MAX_FPS):
        raise VideoError(
            f"{path}: cannot write at {rate:g} frames per second; use a rate in (0, {MAX_FPS:g}]"
        )
    return rate


class VideoWriter:
    """Streaming writer: `with VideoWriter(path, fps) as w: w.write(frames)`; renamed into place on success.

    mp4 is h264 yuv420p: frames of odd height or width are padded to even by repeating the last row/column
    (logged once), since the 4:4:4 profile that would keep them exact is refused by many players. gif gets
    a 256-colour palette of its own for every frame, at the exact size.
    """

    def __init__(self, path: str | Path, fps: float, crf: int = 18) -> None:
        self.path = check_output_path(path)
        self.fps = check_fps(fps, self.path)
        self.crf = crf
        try:
            fd, tmp = tempfile.mkstemp(
                prefix=f".{self.path.name}.", suffix=self.path.suffix, dir=self.path.parent
            )
        except OSError as e:
            raise VideoError(
                f"{self.path}: cannot write there ({e.strerror}); choose another output path"
            ) from e
        os.close(fd)
        self.tmp = Path(tmp)
        try:
            self.container = av.open(str(self.tmp), mode="w")
        except (av.error.FFmpegError, OSError) as e:
            self.tmp.unlink(missing_ok=True)
            raise VideoError(
                f"{self.path}: cannot write there ({_reason(e)}); choose another output path"
            ) from e
        self.stream = None
        self.palette: _GifPalette | None = None
        self.frames_written = 0
        self.frames_muxed = 0

    def _open_stream(self, height: int, width: int) -> None:
        rate = Fraction(self.fps).limit_denominator(1001)
        if self.path.suffix.lower() == ".gif":
            self.stream = self.container.add_stream("gif", rate=rate)
            self.stream.pix_fmt = "pal8"
            self.palette = _GifPalette(height, width)
        else:
            self.stream = self.container.add_stream("libx264", rate=rate)
            self.stream.pix_fmt = "yuv420p"
            self.stream.options = {"crf": str(self.crf), "preset": "medium"}
            if height % 2 or width % 2:
                logger.info(
                    f"note: {self.path}: frames of {width}x{height} are written as "
                    f"{width + width % 2}x{height + height % 2} (last row/column repeated): h264 yuv420p, "
                    "which every player decodes, needs even sides"
                )
                height, width = height + height % 2, width + width % 2
        self.stream.height, self.stream.width = height, width

    def write(self, frames: torch.Tensor) -> None:
        """Append (C, T, H, W) frames in [-1, 1]."""
        arr = to_uint8(frames)
        if self.stream is None:
            self._open_stream(arr.shape[1], arr.shape[2])
        if self.palette is None:
            arr = even_size(arr)
        try:
            self._encode(arr)
        except av.error.FFmpegError as e:
            raise VideoError(f"{self.path}: writing failed ({_reason(e)})") from e

    def _encode(self, arr: np.ndarray) -> None:
        for img in arr:
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if self.palette is not None:
                for quantized in self.palette.push(frame):
                    self._mux(quantized)
            else:
                self._mux(frame)
            self.frames_written += 1

    def _mux(self, frame: av.VideoFrame | None) -> None:
        if frame is not None:  # frame k is shown at k / fps
            frame.pts, frame.time_base = self.frames_muxed, Fraction(1) / self.stream.codec_context.framerate
            self.frames_muxed += 1
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        if self.stream is None:
            self.abort()
            raise VideoError(f"{self.path}: no frames to write")
        try:
            if self.palette is not None:
                for quantized in self.palette.push(None):
                    self._mux(quantized)
            self._mux(None)
            self.container.close()
            set_default_mode(self.tmp)
            os.replace(self.tmp, self.path)
        except av.error.FFmpegError as e:
            self.abort()
            raise VideoError(f"{self.path}: writing failed ({_reason(e)})") from e
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        with contextlib.suppress(Exception):  # best effort: we are already on an error path
            self.container.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_video(path: str | Path, frames: torch.Tensor, fps: float) -> Path:
    """Write (C, T, H, W) frames in [-1, 1] to mp4 or gif atomically; returns the path."""
    if frames.dim() != 4 or frames.shape[0] != 3:
        raise ValueError(f"expected frames (3, T, H, W), got {tuple(frames.shape)}")
    with VideoWriter(path, fps) as w:
        w.write(frames)
    return w.path
