"""The autoencoder adapters: frame rules, padding, shape round trips, loading by folder."""

import pytest
import torch
from diffusers import AutoencoderKLWan

from dcvideogen.evaluation.adapters import DCAEVAdapter, WanAdapter, load_video_autoencoder
from dcvideogen.models.dcae_v import AutoencoderDCV

from conftest import random_video


def tiny_wan():
    return AutoencoderKLWan(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.1, 0.2, 0.3, 0.4],
        latents_std=[1.0, 2.0, 0.5, 1.5],
    )


def test_dcaev_adapter_round_trip_and_scaling():
    model = AutoencoderDCV.from_preset("dc-ae-v-f32t4c32-tiny", scaling_factor=0.5)
    ae = DCAEVAdapter(model)
    assert ae.notation == "f32t4c32" and ae.compression_ratio == 384 and ae.valid_num_frames(9) == 16
    x = random_video(t=9, h=40, w=50)
    with torch.no_grad():
        z = ae.encode(ae.pad(x))
        torch.testing.assert_close(z, model.encode(x).latent * 0.5)
    assert ae.reconstruct(x).shape == x.shape


@pytest.mark.parametrize("frames,valid", [(1, 1), (8, 9), (9, 9), (10, 13)])
def test_wan_adapter_frame_rule(frames, valid):
    ae = WanAdapter(tiny_wan())
    assert ae.valid_num_frames(frames) == valid and ae.notation == "f8t4c4"
    x = random_video(t=frames, h=20, w=28)
    assert ae.reconstruct(x).shape == x.shape


def test_load_by_folder(tmp_path):
    tiny_wan().save_pretrained(tmp_path / "wan")
    AutoencoderDCV.from_preset("dc-ae-v-f32t4c32-tiny").save_pretrained(tmp_path / "dcae")
    assert isinstance(load_video_autoencoder(tmp_path / "wan"), WanAdapter)
    assert isinstance(load_video_autoencoder(tmp_path / "dcae"), DCAEVAdapter)
