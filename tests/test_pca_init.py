"""The patch shortcut (DCAEVConfig.patch_shortcut) and its PCA fit (training/pca_init.py): the fitted model
reconstructs exactly as the PCA block codec does, streams, tiles, saves and loads like any DC-AE-V, and the
AE trainer fits it before step 0 only. With patch_shortcut_kernel 3 the decoder's side is the least-squares
lapped decoder over 3x3 neighbourhoods of latents."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dcvideogen.errors import DCVGError
from dcvideogen.models.dcae_v import AutoencoderDCV
from dcvideogen.training.config import load_config
from dcvideogen.training.pca_init import (
    blocks_of,
    fit_lapped_decoder,
    fit_patch_shortcut,
    neighbourhoods,
    principal_components,
)
from dcvideogen.training.trainer_ae import train_ae
from dcvideogen.video import read_video

from conftest import sample_clip_dir


@pytest.fixture(scope="module")
def footage() -> torch.Tensor:
    """Real frames: bikes, 16 frames, 128x192 (6 x 4 x 4 blocks of 4 x 32 x 32)."""
    x = read_video(sample_clip_dir() / "bikes.mp4", max_frames=16).frames  # (3, 16, H, W)
    return x[None, :, :, :128, :192].contiguous()


@pytest.fixture(scope="module")
def fitted(footage) -> AutoencoderDCV:
    torch.manual_seed(0)
    model = AutoencoderDCV.from_preset("dc-ae-v-f32t4c32-tiny", patch_shortcut=True).eval()
    fit_patch_shortcut(model, blocks_of(footage, 32, 4))
    return model


def test_principal_components_match_the_covariance_eigenvectors():
    torch.manual_seed(0)
    rows = torch.randn(500, 40) @ torch.randn(40, 40)  # correlated
    mean, top, std = principal_components(rows, 5)
    c = (rows - rows.mean(0)).double()
    values, vectors = torch.linalg.eigh(c.T @ c / (rows.shape[0] - 1))
    torch.testing.assert_close(mean, rows.mean(0))
    torch.testing.assert_close(std.double(), values[-5:].flip(0).sqrt(), rtol=1e-4, atol=1e-4)
    cosines = (top.double().T @ vectors[:, -5:].flip(1)).diagonal().abs()
    assert (cosines > 0.9999).all(), cosines


def test_fitted_model_is_the_pca_codec_with_whitened_latents(fitted, footage):
    with torch.no_grad():
        y = fitted(footage).sample
        z = fitted.encode(footage).latent  # (1, 32, 4, 4, 6)
    rows = blocks_of(footage, 32, 4)
    mean, top, _ = principal_components(rows, 32)
    want = (rows - mean) @ top @ top.T + mean  # the least-squares linear codec of these blocks
    torch.testing.assert_close(blocks_of(y, 32, 4), want, atol=1e-4, rtol=0)
    assert z.shape == (1, 32, 4, 4, 6)
    torch.testing.assert_close(
        z.flatten(2).std(-1, correction=1).squeeze(0), torch.ones(32), atol=1e-3, rtol=0
    )
    # Better than a mean-only codec by far on its own footage (a broken fit would not be).
    assert (y - footage).square().mean() < 0.2 * (
        footage - footage.mean((2, 3, 4), keepdim=True)
    ).square().mean()


def test_shortcut_streams_tiles_and_round_trips(fitted, footage, tmp_path):
    """The shortcut only sees its own cell: tiles (64-pixel, which change a network's output) and one shot
    agree exactly on the fitted model; with the networks' share too, streaming = one shot; save/load keeps
    it."""
    with torch.no_grad():
        whole = fitted(footage).sample
        fitted.enable_tiling(64, 32)
        tiled = fitted(footage).sample
        fitted.use_tiling = False
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=0)
    for p in fitted.parameters():  # the networks' share, not only the shortcut
        p.data.add_(0.01 * torch.randn_like(p))
    with torch.no_grad():
        fitted.disable_streaming()
        whole = fitted(footage).sample
        fitted.enable_streaming()
        streamed = fitted(footage).sample
    torch.testing.assert_close(streamed, whole, atol=1e-4, rtol=0)
    fitted.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["patch_shortcut"] is True
    loaded = AutoencoderDCV.from_pretrained(tmp_path / "m").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(footage).sample, streamed)


def test_an_old_model_folder_loads_without_the_shortcut(tmp_path):
    model = AutoencoderDCV.from_preset("dc-ae-v-f32t4c32-tiny")
    model.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    del config["patch_shortcut"]  # as every folder written before the field existed
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    loaded = AutoencoderDCV.from_pretrained(tmp_path / "m")
    assert not loaded.arch.patch_shortcut and loaded.encoder.patch_in is None


def test_neighbourhoods_read_each_cells_3x3_with_replicated_edges():
    z = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(1, 2, 1, 3, 4)  # (B, Z, T', h, w)
    cols = neighbourhoods(z, 3).view(3, 4, 2, 3, 3)  # (h, w, Z, dy, dx)
    torch.testing.assert_close(cols[1, 1], z[0, :, 0, 0:3, 0:3])  # an inner cell: its neighbours as they are
    corner = cols[0, 0, 0]  # the top-left cell, channel 0: the frame's edge repeated
    torch.testing.assert_close(corner, torch.tensor([[0.0, 0, 1], [0, 0, 1], [4, 4, 5]]))
    assert neighbourhoods(z, 1).tolist() == z[0, :, 0].flatten(1).T.tolist()  # kernel 1: the cell itself


@pytest.fixture(scope="module")
def long_footage() -> torch.Tensor:
    """bikes, 32 frames of 256x640: 8 x 8 x 20 = 1,280 cells, more than the 289 features of a 3x3 fit."""
    x = read_video(sample_clip_dir() / "bikes.mp4", max_frames=32).frames  # (3, 32, 272, 640)
    return x[None, :, :, :256].contiguous()


def test_lapped_decoder_is_the_least_squares_fit_and_streams(long_footage, tmp_path):
    torch.manual_seed(0)
    model = AutoencoderDCV.from_preset("dc-ae-v-f32t4c32-tiny", patch_shortcut=True, patch_shortcut_kernel=3)
    model.eval()
    fit_patch_shortcut(model, blocks_of(long_footage, 32, 4))
    with torch.no_grad():
        own = model(long_footage).sample  # the centre taps hold the PCA decoder: the per-cell codec
        fit_lapped_decoder(model, [long_footage], ridge=0.0)
        y = model(long_footage).sample
        z = model.encode(long_footage).latent
    # The convolution reads the neighbourhoods in the order the fit wrote them: its output is the
    # least-squares prediction, computed here without it.
    x = torch.cat([neighbourhoods(z, 3), torch.ones(z[0, 0].numel(), 1)], 1).double()
    blocks = blocks_of(long_footage, 32, 4).double()
    want = x @ torch.linalg.lstsq(x, blocks).solution
    torch.testing.assert_close(blocks_of(y, 32, 4).double(), want, atol=2e-3, rtol=0)
    # A superset of the per-cell decoder's inputs: it cannot do worse on its own footage; here it is better.
    assert (y - long_footage).square().mean() < 0.97 * (own - long_footage).square().mean()
    with torch.no_grad():  # space-only kernel: streaming (chunk by chunk) is still exactly one shot
        model.disable_streaming()
        whole = model(long_footage[:, :, :16]).sample
        model.enable_streaming()
        streamed = model(long_footage[:, :, :16]).sample
    torch.testing.assert_close(streamed, whole, atol=1e-4, rtol=0)
    model.save_pretrained(tmp_path / "m")
    loaded = AutoencoderDCV.from_pretrained(tmp_path / "m").eval()
    assert loaded.arch.patch_shortcut_kernel == 3
    with torch.no_grad():
        torch.testing.assert_close(loaded(long_footage[:, :, :16]).sample, streamed)
    with pytest.raises(ValueError, match="patch_shortcut_kernel must be odd"):
        AutoencoderDCV.from_preset("dc-ae-v-f32t4c32-tiny", patch_shortcut=True, patch_shortcut_kernel=2)


TRAIN = [
    "model.preset=dc-ae-v-f32t4c32-tiny",
    "model.arch={patch_shortcut: true}",
    "model.pca_clips=6",  # 8 blocks each (2 x 2 x 2 cells of 8x64x64), 48 > 32 latent channels
    "data.workers=0",
    "data.num_frames=8",
    "data.size=64",
    "tensorboard=false",
    "optim.ema_decay=0",
    "checkpoint_every=1",
    "log_every=1",
]


@pytest.fixture
def data(bikes_data) -> Path:
    return bikes_data


def test_trainer_fits_the_shortcut_before_step_zero(data, tmp_path):
    cfg = load_config(None, [*TRAIN, "steps=1", "optim.lr=0"])  # lr 0: the export is the fitted model
    model = AutoencoderDCV.from_pretrained(train_ae(cfg, data, tmp_path / "run"))
    assert torch.count_nonzero(model.decoder.conv_out.weight) == 0  # zeroed by the fit, unchanged at lr 0
    assert model.decoder.patch_out.bias.abs().sum() > 0  # the mean block
    few = load_config(None, [*TRAIN, "steps=1", "model.pca_clips=3"])
    with pytest.raises(DCVGError, match=r"model.pca_clips=3: 24 pixel blocks .* raise model.pca_clips"):
        train_ae(few, data, tmp_path / "few")
    assert not (tmp_path / "few").exists()
    with pytest.raises(DCVGError, match="pca_clips"):  # the shortcut is missing: one line, nothing written
        train_ae(load_config(None, [*TRAIN[:1], *TRAIN[2:], "steps=1"]), data, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_trainer_resume_keeps_the_checkpoint_not_a_new_fit(data, tmp_path, monkeypatch):
    import dcvideogen.training.trainer_ae as trainer

    cfg = load_config(None, [*TRAIN, "steps=2"])
    train_ae(cfg, data, tmp_path / "run", stop_after=1)
    calls = []
    monkeypatch.setattr(trainer, "fit_patch_shortcut", lambda *a: calls.append(a))
    train_ae(cfg, data, tmp_path / "run", resume="auto")
    assert calls == []  # a refit would overwrite the trained weights
    assert (tmp_path / "run" / "model").is_dir()


def test_trainer_fits_the_lapped_decoder_when_the_kernel_is_3(data, tmp_path):
    arch = "model.arch={patch_shortcut: true, patch_shortcut_kernel: 3}"
    cfg = load_config(None, [TRAIN[0], arch, *TRAIN[2:], "steps=1", "optim.lr=0"])
    model = AutoencoderDCV.from_pretrained(train_ae(cfg, data, tmp_path / "run"))
    weight = model.decoder.patch_out.weight  # (D, Z, 1, 3, 3)
    assert weight.shape[2:] == (1, 3, 3)
    assert weight[..., 0, 0].abs().sum() > 0  # a neighbour's tap: refitted, not the PCA's centre only
    even = "model.arch={patch_shortcut: true, patch_shortcut_kernel: 2}"
    with pytest.raises(DCVGError, match="patch_shortcut_kernel must be odd"):  # one line, nothing written
        train_ae(load_config(None, [TRAIN[0], even, *TRAIN[2:], "steps=1"]), data, tmp_path / "even")
    assert not (tmp_path / "even").exists()
