"""Camera moves, colour augmentation, the footage splits and the naive-codec comparison."""

from __future__ import annotations

import math

import pytest
import torch

from dcvideogen.evaluation.adapters import NaiveCodecAdapter
from dcvideogen.evaluation.footage import (
    CAMERA_CLIPS,
    TRAIN_PHOTOS,
    VIDEO_CUTS,
    channel_mean_error,
    score_clip,
    score_table,
    write_camera_clip,
)
from dcvideogen.training.config import DataConfig
from dcvideogen.training.data import ClipDataset, color_augment, color_matrix, scan_media
from dcvideogen.video import read_video
from dcvideogen.video.transforms import camera_move


def test_camera_move_identity_pan_and_zoom():
    img = torch.rand(3, 64, 96)
    still = camera_move(img, 3, 64, 96, (0.5, 0.5, 1.0), (0.5, 0.5, 1.0))  # the whole image, unchanged
    assert still.shape == (3, 3, 64, 96) and torch.equal(still[:, 0], img) and torch.equal(still[:, 2], img)
    # a 2x zoom pan from the left edge to the right edge of a horizontal ramp: the mean brightness rises
    ramp = torch.linspace(0, 1, 96).expand(3, 64, 96).clone()
    pan = camera_move(ramp, 5, 32, 48, (0.5, 0.0, 2.0), (0.5, 1.0, 2.0))
    means = pan.mean(dim=(0, 2, 3))
    assert pan.shape == (3, 5, 32, 48) and bool((means[1:] >= means[:-1]).all())  # clamped at the edges
    assert means[0] < 0.3 and means[-1] > 0.7  # the first window is the left half, the last the right half
    # odd sizes and windows clamped inside the image
    odd = camera_move(torch.rand(3, 301, 451), 4, 57, 83, (0.0, 1.0, 1.0), (1.0, 0.0, 3.0))
    assert odd.shape == (3, 4, 57, 83)


def test_color_matrix_keeps_luma_and_is_the_identity_without_change():
    torch.testing.assert_close(color_matrix(0.0, 1.0), torch.eye(3), atol=1e-6, rtol=0)
    luma = torch.tensor([0.299, 0.587, 0.114])
    for hue, sat in ((0.25, 1.0), (0.1, 0.5), (0.5, 1.3)):
        m = color_matrix(hue, sat)
        torch.testing.assert_close(luma @ m, luma, atol=1e-5, rtol=0)  # Y is unchanged
    gray = torch.full((3, 2, 4, 4), 0.3)
    torch.testing.assert_close(color_augment(gray, 0.3, 1.2, 1.0, 0.0), gray, atol=1e-5, rtol=0)
    x = torch.rand(3, 2, 8, 8) * 2 - 1
    y = color_augment(x, 0.2, 1.4, 1.3, 0.2)
    assert y.min() >= -1 and y.max() <= 1 and not torch.allclose(x, y)
    assert math.isclose(
        color_augment(x, 0.0, 1.0, 1.0, 0.1).mean().item(), x.mean().item() + 0.1, abs_tol=0.02
    )


def test_camera_moves_and_colour_jitter_in_the_data_stream_are_deterministic(tmp_path):
    img = torch.linspace(-1, 1, 200 * 300).reshape(1, 200, 300).expand(3, -1, -1)
    from PIL import Image

    arr = ((img.permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
    Image.fromarray(arr).save(tmp_path / "ramp.png")
    cfg = DataConfig(
        num_frames=6, size=32, image_ratio=1.0, camera_ratio=1.0, hue=0.1, saturation=0.2, workers=0
    )
    files, _ = scan_media(tmp_path, cfg)
    ds = ClipDataset(files, cfg, seed=3)
    a, b = ds[7]["video"], ds[7]["video"]
    assert a.shape == (3, 6, 32, 32) and torch.equal(a, b)
    assert (a[:, 1:] - a[:, :-1]).abs().mean() > 1e-3  # it moves
    static = ClipDataset(files, DataConfig(num_frames=6, size=32, image_ratio=1.0, workers=0), seed=3)[7][
        "video"
    ]
    assert torch.equal(static[:, 0], static[:, -1])  # camera_ratio 0: a still image, as before


def test_splits_are_disjoint():
    photos = {c.photo for rows in CAMERA_CLIPS.values() for c in rows}
    assert not photos & set(TRAIN_PHOTOS)
    assert len(photos) == sum(len(rows) for rows in CAMERA_CLIPS.values())
    spans: dict[str, list[tuple[str, int, int]]] = {}
    for split, cuts in VIDEO_CUTS.items():
        for c in cuts:
            spans.setdefault(c.source, []).append((split, c.start, c.start + c.frames))
    for rows in spans.values():  # frames of one video in two splits are at least 8 apart
        for s1, a1, b1 in rows:
            for s2, a2, b2 in rows:
                if s1 != s2:
                    assert b1 + 8 <= a2 or b2 + 8 <= a1


def test_naive_codec_scores_and_table(tmp_path):
    pytest.importorskip("skimage")
    [rocket] = [c for c in CAMERA_CLIPS["test"] if c.photo == "rocket.jpg"]
    path = write_camera_clip(rocket, tmp_path)
    x = read_video(path).frames
    assert x.shape == (3, 32, 192, 320)
    naive = NaiveCodecAdapter(32, 4, 32)
    s = score_clip(naive, naive, path, frames=8)
    assert s.psnr == s.naive_psnr and 15 < s.psnr < 40 and s.color_error < 3
    table = score_table([s, s])
    assert "| **mean of 2** |" in table and "+0.00" in table
    shifted = x[None] + torch.tensor([0.1, 0.0, 0.0]).view(1, 3, 1, 1, 1)
    assert math.isclose(channel_mean_error(shifted, x[None]), 12.75, rel_tol=1e-4)
