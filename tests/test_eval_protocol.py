"""The protocol: resize of the short side + center crop, clips taken from real videos, validation."""

import pytest
import torch

from dcvideogen.errors import DCVGError
from dcvideogen.evaluation.protocol import Protocol, find_videos, read_clips
from dcvideogen.video import read_video
from dcvideogen.video.transforms import center_crop, resize_center_crop, resize_short_side


def test_resize_short_side_and_center_crop():
    x = torch.rand(3, 2, 144, 176) * 2 - 1  # carphone's size
    y = resize_short_side(x, 256)
    assert y.shape == (3, 2, 256, 313)  # 176 * 256 / 144 = 312.9
    assert resize_short_side(torch.rand(1, 3, 2, 720, 1280), 256).shape == (1, 3, 2, 256, 455)
    z = resize_center_crop(x, 64)
    assert z.shape == (3, 2, 64, 64)
    ramp = torch.arange(10.0).view(1, 1, 1, 10).expand(1, 1, 4, 10)
    assert center_crop(ramp, 4, 4)[0, 0, 0].tolist() == [3.0, 4.0, 5.0, 6.0]
    with pytest.raises(ValueError, match="cannot crop"):
        center_crop(ramp, 5, 4)


def test_clips_from_a_real_video(clips):
    path = clips / "carphone_pristine.mp4"  # 120 frames
    p = Protocol(frames=8, size=32, clips_per_video=3, long_factors=(2, 20))
    video = read_clips(path, "carphone", p)
    assert p.frames_to_read == 160 and video.frames_read == 120
    assert len(video.clips) == 3 and all(c.shape == (3, 8, 32, 32) for c in video.clips)
    assert list(video.long) == [2] and video.long[2].shape == (3, 16, 32, 32)  # 160 frames: too long
    frames = read_video(path, max_frames=24).frames
    torch.testing.assert_close(video.clips[1], resize_center_crop(frames[:, 8:16], 32))
    strided = read_clips(path, "carphone", Protocol(frames=4, size=32, frame_stride=3))
    torch.testing.assert_close(strided.clips[0], resize_center_crop(frames[:, 0:12:3], 32))


def test_validation_and_discovery(tmp_path):
    for kwargs, message in [
        ({"frames": 0}, "at least 1 frame"),
        ({"size": 8}, "11x11 SSIM window"),
        ({"clips_per_video": 0}, "clips-per-video"),
        ({"frame_stride": 0}, "frame-stride"),
        ({"long_factors": (1,)}, ">= 2"),
        ({"max_videos": 0}, "max-videos"),
    ]:
        with pytest.raises(DCVGError, match=message):
            Protocol(**kwargs)
    assert Protocol(long_factors=(4, 2, 4)).long_factors == (2, 4)
    (tmp_path / "b").mkdir()
    for name in ["b/2.mp4", "a.MP4", "c.webm", "notes.txt"]:
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in find_videos(tmp_path)] == ["a.MP4", "2.mp4", "c.webm"]
    assert [p.name for p in find_videos(tmp_path, max_videos=1)] == ["a.MP4"]
