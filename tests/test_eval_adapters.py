"""Adapters for the diffusers video autoencoders: frame rules (checked against the models themselves),
latent normalisation as the pipelines do it, shape round trips, loading by folder, 'default'."""

import pytest
import torch
from diffusers import (
    AutoencoderDC,
    AutoencoderKLCogVideoX,
    AutoencoderKLHunyuanVideo,
    AutoencoderKLLTXVideo,
    AutoencoderKLWan,
)

from dcvideogen.errors import DCVGError
from dcvideogen.evaluation.adapters import (
    CogVideoXAdapter,
    DCAEVAdapter,
    HunyuanVideoAdapter,
    ImageDCAEAdapter,
    LTXVideoAdapter,
    WanAdapter,
    load_video_autoencoder,
)
from dcvideogen.models.dcae_v import AutoencoderDCV

from conftest import random_video


def tiny_ltx(timestep_conditioning=False):
    model = AutoencoderKLLTXVideo(
        latent_channels=4,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, True, False),
        decoder_spatio_temporal_scaling=(True, True, True, False),
        decoder_inject_noise=(False,) * 5,
        upsample_residual=(False,) * 4,
        upsample_factor=(1,) * 4,
        timestep_conditioning=timestep_conditioning,
        scaling_factor=0.8,
    )
    model.latents_mean.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))  # buffers, as in the released weights
    model.latents_std.copy_(torch.tensor([1.5, 0.5, 2.0, 1.0]))
    return model


def tiny_hunyuan():
    return AutoencoderKLHunyuanVideo(
        latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4
    )


def tiny_cog():
    return AutoencoderKLCogVideoX(
        block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=4,
        scaling_factor=0.7,
        shift_factor=0.25,
    )


def tiny_wan22():
    """Wan 2.2's layout: residual blocks, 2x2 patchify (12 channels in and out), 16x in space."""
    return AutoencoderKLWan(
        base_dim=8,
        z_dim=6,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        is_residual=True,
        in_channels=12,
        out_channels=12,
        patch_size=2,
        scale_factor_spatial=16,
        latents_mean=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
        latents_std=[1.0, 2.0, 0.5, 1.5, 1.0, 3.0],
    )


def tiny_image_dcae():
    return AutoencoderDC(
        latent_channels=4,
        attention_head_dim=4,
        encoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 8, 16),
        decoder_block_out_channels=(8, 8, 16),
        encoder_layers_per_block=(1, 1, 1),
        decoder_layers_per_block=(1, 1, 1),
        encoder_qkv_multiscales=((), (), (5,)),
        decoder_qkv_multiscales=((), (), (5,)),
        scaling_factor=0.41,
    )


# (adapter class, model factory, notation, frame rule, {frames: valid frames}, frame size)
CASES = {
    "ltx": (LTXVideoAdapter, tiny_ltx, "f32t8c4", "1 + 8k", {1: 1, 2: 9, 9: 9, 10: 17}, (32, 64)),
    "hunyuan": (HunyuanVideoAdapter, tiny_hunyuan, "f8t4c4", "1 + 4k", {1: 1, 3: 5, 5: 5, 6: 9}, (16, 24)),
    "cogvideox": (CogVideoXAdapter, tiny_cog, "f8t4c4", "1 + 8k", {1: 1, 2: 9, 5: 9, 9: 9}, (16, 24)),
    "wan2.2": (WanAdapter, tiny_wan22, "f16t4c6", "1 + 4k", {1: 1, 2: 5, 5: 5, 6: 9}, (16, 32)),
    "dc-ae": (ImageDCAEAdapter, tiny_image_dcae, "f4t1c4", "any", {1: 1, 3: 3, 7: 7}, (16, 12)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_frame_rule_and_round_trip(case):
    cls, factory, notation, rule, valid, (h, w) = CASES[case]
    ae = cls(factory())
    assert (ae.notation, ae.frame_rule) == (notation, rule)
    assert {n: ae.valid_num_frames(n) for n in valid} == valid
    with torch.no_grad():
        n = max(valid.values())  # the model itself keeps exactly this count
        x = random_video(t=n, h=h, w=w)
        z = ae.encode(x)
        assert z.shape == (
            1,
            ae.latent_channels,
            (n - 1) // ae.temporal_factor + 1,
            h // ae.spatial_factor,
            w // ae.spatial_factor,
        )
        assert ae.decode(z).shape == x.shape
    # any clip comes back with its own shape, padded frames and pixels cropped away
    x = random_video(t=max(valid) + 1, h=h + 3, w=w - 2)
    assert ae.reconstruct(x).shape == x.shape


def test_the_frame_rules_are_needed():
    """Counts outside the rule do not round trip through the raw models (hence the padding)."""
    with torch.no_grad():
        cog = tiny_cog().eval()
        z = cog.encode(random_video(t=5, h=16, w=16)).latent_dist.mode()
        assert cog.decode(z).sample.shape[2] == 8  # 1 + 4k with k odd: wrong length back
        hy = tiny_hunyuan().eval()
        z = hy.encode(random_video(t=6, h=16, w=16)).latent_dist.mode()
        assert hy.decode(z).sample.shape[2] == 5  # frames dropped
        ltx = tiny_ltx().eval()
        assert ltx.encode(random_video(t=5, h=32, w=32)).latent_dist.mode().shape[2] == 1


def test_latent_normalisation_as_the_pipelines_do_it():
    x = random_video(t=9, h=32, w=32)
    with torch.no_grad():
        ltx = LTXVideoAdapter(tiny_ltx())
        raw = ltx.model.encode(x).latent_dist.mode()
        mean, std = ltx.model.latents_mean.view(1, -1, 1, 1, 1), ltx.model.latents_std.view(1, -1, 1, 1, 1)
        torch.testing.assert_close(ltx.encode(x), (raw - mean) * 0.8 / std)
        torch.testing.assert_close(
            ltx.decode(ltx.encode(x)), ltx.model.decode(raw).sample, rtol=1e-4, atol=1e-5
        )

        cog = CogVideoXAdapter(tiny_cog())
        raw = cog.model.encode(x[..., :16, :16]).latent_dist.mode()
        torch.testing.assert_close(cog.encode(x[..., :16, :16]), (raw - 0.25) * 0.7)

        hy = HunyuanVideoAdapter(tiny_hunyuan())
        raw = hy.model.encode(x[:, :, :5, :16, :16]).latent_dist.mode()
        torch.testing.assert_close(hy.encode(x[:, :, :5, :16, :16]), raw * 0.476986)

        wan = WanAdapter(tiny_wan22())
        raw = wan.model.encode(x[:, :, :5]).latent_dist.mode()
        mean = torch.tensor(wan.model.config.latents_mean).view(1, -1, 1, 1, 1)
        std = torch.tensor(wan.model.config.latents_std).view(1, -1, 1, 1, 1)
        torch.testing.assert_close(wan.encode(x[:, :, :5]), (raw - mean) / std)

        dc = ImageDCAEAdapter(tiny_image_dcae(), frames_per_batch=2)
        z = dc.encode(x[:, :, :3, :16, :16])
        torch.testing.assert_close(z[:, :, 1], dc.model.encode(x[:, :, 1, :16, :16]).latent * 0.41)


def test_ltx_timestep_conditioned_decoder():
    ae = LTXVideoAdapter(tiny_ltx(timestep_conditioning=True))
    x = random_video(t=9, h=32, w=32)
    assert ae.reconstruct(x).shape == x.shape


def test_load_every_kind_by_folder(tmp_path, monkeypatch):
    for key, factory in [
        ("ltx", tiny_ltx),
        ("hunyuan", tiny_hunyuan),
        ("cog", tiny_cog),
        ("dcae", tiny_image_dcae),
    ]:
        factory().save_pretrained(tmp_path / key)
    tiny_wan22().save_pretrained(tmp_path / "wan22-pipeline" / "vae")  # a pipeline folder: vae/ inside
    (tmp_path / "wan22-pipeline" / "model_index.json").write_text("{}")
    loaded = {
        key: load_video_autoencoder(tmp_path / key)
        for key in ["ltx", "hunyuan", "cog", "dcae", "wan22-pipeline"]
    }
    assert [type(a) for a in loaded.values()] == [
        LTXVideoAdapter,
        HunyuanVideoAdapter,
        CogVideoXAdapter,
        ImageDCAEAdapter,
        WanAdapter,
    ]
    assert loaded["ltx"].name == "ltx" and loaded["wan22-pipeline"].name == "wan22-pipeline/vae"
    # the LTX latent statistics are buffers saved with the weights
    torch.testing.assert_close(loaded["ltx"].model.latents_std, torch.tensor([1.5, 0.5, 2.0, 1.0]))

    # 'default' is the bundled DC-AE-V
    AutoencoderDCV.from_preset("dc-ae-v-f32t4c32-tiny").save_pretrained(tmp_path / "bundled")
    monkeypatch.setattr("dcvideogen.models.dcae_v.loading.default_model_dir", lambda: tmp_path / "bundled")
    default = load_video_autoencoder("default")
    assert (
        isinstance(default, DCAEVAdapter)
        and default.name == "dc-ae-v-default"
        and default.notation == "f32t4c32"
    )


def test_load_errors(tmp_path, monkeypatch):
    from diffusers import AutoencoderKL

    AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=4).save_pretrained(
        tmp_path / "sd"
    )
    with pytest.raises(DCVGError, match="AutoencoderKL, which has no adapter"):
        load_video_autoencoder(tmp_path / "sd")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text('{"_class_name": "AutoencoderKLWan"}')
    with pytest.raises(DCVGError, match="cannot load the AutoencoderKLWan"):
        load_video_autoencoder(tmp_path / "broken")
    monkeypatch.setattr("dcvideogen.models.dcae_v.loading.default_model_dir", lambda: tmp_path / "nothing")
    with pytest.raises(DCVGError, match="bundled default model is missing"):
        load_video_autoencoder("default")


def test_naive_codec_keeps_the_latent_s_number_of_values_and_reconstructs_smooth_video():
    from dcvideogen.evaluation.naive import naive_side_factor

    assert naive_side_factor(32, 32) == pytest.approx(9.798, abs=1e-3)
    ae = load_video_autoencoder("naive-f32t4c32")
    assert ae.notation == "f32t4c32" and ae.compression_ratio == 384 and ae.valid_num_frames(9) == 12
    x = torch.zeros(1, 3, 80, 480, 832)
    z = ae.encode(x)  # a DC-AE-V f32t4c32 latent holds 32 x 20 x 15 x 26 = 249,600 values
    assert abs(z.numel() / (32 * 20 * 15 * 26) - 1) < 0.02
    # a smooth, static clip comes back almost exactly; shape and dtype kept
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 96), torch.linspace(-1, 1, 128), indexing="ij")
    clip = torch.stack([yy * 0.5, xx * 0.5, yy * xx * 0.5])[:, None].expand(3, 9, 96, 128)[None].contiguous()
    y = ae.reconstruct(clip)
    assert y.shape == clip.shape and (y - clip).abs().mean() < 0.02
    assert load_video_autoencoder("naive-f64t4c128").model.factor == pytest.approx(64 * (3 / 128) ** 0.5)
