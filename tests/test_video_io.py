"""Video I/O on PyAV: real clips, folders, images, writing, and every kind of bad input."""

from pathlib import Path

import av
import numpy as np
import pytest
import torch

from dcvideogen.video import (
    VideoError,
    VideoInfo,
    VideoWriter,
    iter_frames,
    missing_frames_note,
    probe_video,
    read_video,
    write_video,
)


def make_audio_only(path):
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=16000)
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate = 16000
            frame.pts = i * 1024
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def write_mp4(path: Path, frames: int = 24, h: int = 32, w: int = 48, audio: bool = False) -> Path:
    """A faststart h264 clip of noise (the index before the data, as web video), optionally with sound."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", options={"movflags": "faststart"}) as c:
        video = c.add_stream("libx264", rate=24)
        video.height, video.width, video.pix_fmt = h, w, "yuv420p"
        video.options = {"g": "4"}
        sound = c.add_stream("aac", rate=16000) if audio else None
        for _ in range(frames):
            img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            for p in video.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in video.encode():
            c.mux(p)
        for i in range(4 if sound else 0):
            a = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            a.sample_rate, a.pts = 16000, i * 1024
            for p in sound.encode(a):
                c.mux(p)
        for p in sound.encode() if sound else ():
            c.mux(p)
    return path


def write_image(path: Path, h: int, w: int) -> Path:
    with av.open(str(path), "w") as c:
        s = c.add_stream("png")
        s.width, s.height, s.pix_fmt = w, h, "rgb24"
        for p in s.encode(av.VideoFrame.from_ndarray(np.full((h, w, 3), 90, np.uint8), format="rgb24")):
            c.mux(p)
    return path


def test_reads_a_real_clip_with_fps(clips):
    info = probe_video(clips / "carphone_pristine.mp4")
    assert (info.num_frames, info.height, info.width) == (120, 144, 176)
    assert abs(info.fps - 29.97) < 0.01
    video = read_video(clips / "carphone_pristine.mp4", max_frames=10, start=5, stride=2)
    assert video.frames.shape == (3, 10, 144, 176) and video.frames.dtype == torch.float32
    assert -1 <= video.frames.min() < video.frames.max() <= 1
    assert abs(video.fps - 29.97 / 2) < 0.01
    full = read_video(clips / "carphone_pristine.mp4", max_frames=25)
    torch.testing.assert_close(video.frames[:, 0], full.frames[:, 5])
    torch.testing.assert_close(video.frames[:, 9], full.frames[:, 23])


def test_iter_frames_yields_pieces(clips):
    pieces = list(iter_frames(clips / "bikes.mp4", chunk_frames=16, max_frames=40))
    assert [p.shape[1] for p in pieces] == [16, 16, 8]


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
@pytest.mark.parametrize("size", [(32, 48), (33, 47)])
def test_write_and_read_back(tmp_path, suffix, size):
    g = torch.Generator().manual_seed(0)
    frames = (torch.rand(3, 6, *size, generator=g) * 0.2 - 0.1).repeat(1, 1, 1, 1)  # smooth-ish, low contrast
    path = write_video(tmp_path / f"v{suffix}", frames, fps=12)
    back = read_video(path)
    if suffix == ".mp4":  # yuv420p: odd sides padded to even, repeating the last row/column
        with av.open(str(path)) as c:
            assert c.streams.video[0].codec_context.pix_fmt == "yuv420p"
        frames = torch.cat([frames, frames[:, :, -1:]], dim=2) if size[0] % 2 else frames
        frames = torch.cat([frames, frames[..., -1:]], dim=3) if size[1] % 2 else frames
    assert back.frames.shape == frames.shape
    assert (back.frames - frames).abs().mean() < 0.1
    assert not list(tmp_path.glob(".*"))  # no temporary file left


def test_folder_of_frames_and_single_image(tmp_path, clips):
    video = read_video(clips / "carphone_pristine.mp4", max_frames=3)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(3):
        img = ((video.frames[:, i].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
        with av.open(str(folder / f"{i:03d}.png"), "w") as c:
            s = c.add_stream("png")
            s.width, s.height, s.pix_fmt = 176, 144, "rgb24"
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
    back = read_video(folder)
    assert back.frames.shape == (3, 3, 144, 176)
    torch.testing.assert_close(back.frames, video.frames, atol=1 / 127.5, rtol=0)
    assert read_video(folder / "001.png").frames.shape == (3, 1, 144, 176)


def test_bad_inputs_give_one_clear_error(tmp_path, clips):
    cases = {}
    cases["missing"] = (tmp_path / "missing.mp4", "no such file")
    (tmp_path / "empty.mp4").write_bytes(b"")
    cases["empty"] = (tmp_path / "empty.mp4", "the file is empty")
    (tmp_path / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    cases["corrupt"] = (tmp_path / "corrupt.mp4", "cannot be opened as video")
    (tmp_path / "trunc.mp4").write_bytes((clips / "bikes.mp4").read_bytes()[:100_000])
    cases["truncated"] = (tmp_path / "trunc.mp4", "cannot be opened as video")
    make_audio_only(tmp_path / "audio.mp4")
    cases["audio only"] = (tmp_path / "audio.mp4", "has no video stream")
    (tmp_path / "notes.txt").write_text("hello")
    cases["unsupported"] = (tmp_path / "notes.txt", "unsupported format '.txt'")
    (tmp_path / "nothing").mkdir()
    cases["empty folder"] = (tmp_path / "nothing", "holds no image frames")
    for name, (path, message) in cases.items():
        with pytest.raises(VideoError, match=message) as err:
            read_video(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value), name
    with pytest.raises(VideoError, match="contains no frames at or after frame 500"):
        read_video(clips / "carphone_pristine.mp4", start=500)


def test_writer_leaves_nothing_on_failure_and_checks_paths(tmp_path):
    with pytest.raises(RuntimeError), VideoWriter(tmp_path / "out.mp4", fps=10) as w:
        w.write(torch.zeros(3, 2, 16, 16))
        raise RuntimeError("crash while writing")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(VideoError, match="does not exist"):
        VideoWriter(tmp_path / "no" / "out.mp4", fps=10)
    with pytest.raises(VideoError, match=r"cannot write '\.avi'"):
        VideoWriter(tmp_path / "out.avi", fps=10)


def test_truncated_file_yields_what_decodes_and_says_what_is_missing(tmp_path):
    data = write_mp4(tmp_path / "full.mp4", frames=24, audio=True).read_bytes()
    info = probe_video(tmp_path / "full.mp4")
    assert (info.num_frames, info.exact_count, info.has_audio) == (24, True, True)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    info = probe_video(cut)
    assert info.num_frames == 24  # the header still promises them
    n = sum(p.shape[1] for p in iter_frames(cut))
    assert 0 < n < 24
    assert missing_frames_note(cut, info, 0, None, n) == (
        f"{cut}: only {n} frames decode but its header declares 24; the file is truncated or damaged"
    )
    assert missing_frames_note(cut, info, 0, n, n) is None  # asked for no more than it holds
    assert f"only {n} frames decode" in missing_frames_note(cut, info, 2, None, n - 2)
    estimate = VideoInfo(100, 24.0, 32, 48, exact_count=False)  # from the duration: 5% slack
    assert missing_frames_note(cut, estimate, 0, None, 96) is None
    assert "its duration suggests about 100" in missing_frames_note(cut, estimate, 0, None, 90)
    assert missing_frames_note(cut, VideoInfo(0, 24.0, 32, 48), 0, None, 3) is None  # unknown count


@pytest.mark.parametrize("fps", [-3, 0, float("nan"), float("inf"), 1e6])
def test_writer_refuses_a_bad_frame_rate(tmp_path, fps):
    with pytest.raises(VideoError, match="frames per second"):
        VideoWriter(tmp_path / "out.mp4", fps=fps)
    assert list(tmp_path.iterdir()) == []
