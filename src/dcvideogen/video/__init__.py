from .io import (
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    Video,
    VideoError,
    VideoInfo,
    VideoWriter,
    check_output_path,
    iter_frames,
    probe_video,
    read_clip,
    read_video,
    write_video,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "VIDEO_SUFFIXES",
    "Video",
    "VideoError",
    "VideoInfo",
    "VideoWriter",
    "check_output_path",
    "iter_frames",
    "probe_video",
    "read_clip",
    "read_video",
    "write_video",
]
