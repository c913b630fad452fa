"""Video I/O on PyAV: real clips, folders, images, writing, and every kind of bad input."""

import av
import numpy as np
import pytest
import torch

from dcvideogen.video import VideoError, VideoWriter, iter_frames, probe_video, read_video, write_video


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
