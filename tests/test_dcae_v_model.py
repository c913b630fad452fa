"""AutoencoderDCV: presets, official parity, causality properties, streaming, shapes, save/load, dtypes."""

import pytest
import torch
from safetensors.torch import load_file

from dcvideogen.models.dcae_v import AutoencoderDCV, CheckpointError, DCAEVConfig, get_preset, load_official
from dcvideogen.models.dcae_v.official import infer_config, official_key_map, read_official_checkpoint

from conftest import random_video

FIXTURES = {"f32t4c32_tiny": "checkpoint_ema.pt", "f64t4c128_tiny": "checkpoint.pt"}


# ---- presets and config ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,notation,ratio",
    [
        ("dc-ae-v-f32t4c32", "f32t4c32", 384),
        ("dc-ae-v-f32t4c64", "f32t4c64", 192),
        ("dc-ae-v-f32t4c128", "f32t4c128", 96),
        ("dc-ae-v-f32t4c256", "f32t4c256", 48),
        ("dc-ae-v-f64t4c128", "f64t4c128", 384),
    ],
)
def test_paper_presets(name, notation, ratio):
    cfg = get_preset(name)
    assert cfg.name == notation and cfg.compression_ratio == ratio and cfg.chunk_size == 40


def test_f32t4c32_parameter_count_matches_release():
    with torch.device("meta"):
        model = AutoencoderDCV.from_preset("dc-ae-v-f32t4c32")
    enc = sum(p.numel() for p in model.encoder.parameters())
    dec = sum(p.numel() for p in model.decoder.parameters())
    assert round(enc / 1e9, 2) == 0.92 and round(dec / 1e9, 2) == 1.22  # FACTS.md: ~0.92B + 1.22B
    assert model.config.scaling_factor == 0.7241


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(block_out_channels=(8, 16), layers_per_block=(1,)), "one width and one depth"),
        (dict(layers_per_block=(0, 5, 0, 4, 4, 4, 4)), "only the first stage may be empty"),
        (dict(chunk_size=42), "multiple of temporal_compression"),
        (dict(kernel_size=4), "odd"),
    ],
)
def test_config_errors_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DCAEVConfig(**kwargs)


# ---- official parity --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_matches_official_outputs(official_fixtures, name):
    folder = official_fixtures / name
    io = load_file(folder / "io.safetensors")
    model = load_official(folder / FIXTURES[name], chunk_size=8)
    assert model.arch.name == name.split("_")[0]
    with torch.no_grad():
        model.disable_streaming()
        assert (model.encode(io["video"]).latent - io["latent_oneshot"]).abs().max() <= 1e-4
        assert (model.decode(io["latent_oneshot"]).sample - io["recon_oneshot"]).abs().max() <= 1e-4
        model.enable_streaming()  # one chunk (8 frames / 2 latent frames) at a time, as the official tiles
        assert (model.encode(io["video"]).latent - io["latent_streamed"]).abs().max() <= 1e-4
        assert (model.decode(io["latent_streamed"]).sample - io["recon_streamed"]).abs().max() <= 1e-4


def test_both_official_layouts_and_the_key_map(official_fixtures):
    for name, file in FIXTURES.items():
        sd = read_official_checkpoint(official_fixtures / name / file)
        cfg = infer_config(sd, chunk_size=8)
        assert set(official_key_map(cfg)) == set(sd)


def test_wrong_preset_names_first_mismatched_key(official_fixtures):
    path = official_fixtures / "f32t4c32_tiny" / "checkpoint_ema.pt"
    c128 = get_preset("dc-ae-v-f32t4c32-tiny", latent_channels=128)
    with pytest.raises(
        CheckpointError,
        match=r"first mismatched key 'encoder\.project_out\.conv\.weight' has checkpoint shape \(32, 64, 3, 3, 3\) "
        r"but the model expects \(128, 64, 3, 3, 3\)",
    ):
        load_official(path, preset=c128)
    with pytest.raises(CheckpointError, match="is missing"):
        load_official(path, preset="dc-ae-v-f64t4c128-tiny")


def test_unreadable_checkpoints(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        read_official_checkpoint(bad)
    other = tmp_path / "other.pt"
    torch.save({"weights": {}}, other)
    with pytest.raises(CheckpointError, match="no 'model_state_dict' or 'ema_model_state_dict'"):
        read_official_checkpoint(other)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        read_official_checkpoint(tmp_path / "missing.pt")


# ---- temporal causality properties (Sec. 3.2) -----------------------------------------------------------


def _latent(model, x):
    with torch.no_grad():
        return model.encode(x).latent


def test_chunk_causal_latents_do_not_see_later_chunks():
    model = AutoencoderDCV.from_preset("dc-ae-v-f32t4c32-tiny").eval()  # chunk 8 frames = 2 latent frames
    x = random_video(t=24, h=64, w=64)
    base = _latent(model, x)
    y = x.clone()
    y[:, :, 16:] = random_video(t=8, seed=1)  # change chunk 2 only
    changed = _latent(model, y)
    assert torch.equal(changed[:, :, :4], base[:, :, :4])  # chunks 0 and 1: bit for bit
    assert not torch.allclose(changed[:, :, 4:], base[:, :, 4:])
    y = x.clone()
    y[:, :, 9] += 0.5  # inside chunk 1: changes chunk 1 and (causally) chunk 2, never chunk 0
    changed = _latent(model, y)
    assert torch.equal(changed[:, :, :2], base[:, :, :2])
    assert not torch.allclose(changed[:, :, 2:4], base[:, :, 2:4])
    # within a chunk the model is bidirectional: the last frame of chunk 1 changes its first latent frame
    y = x.clone()
    y[:, :, 15] += 0.5
    assert not torch.allclose(_latent(model, y)[:, :, 2], base[:, :, 2])


def test_decoder_chunk_causality():
    model = AutoencoderDCV.from_preset("dc-ae-v-f32t4c32-tiny").eval()
    z = torch.randn(1, 32, 6, 2, 2)
    with torch.no_grad():
        base = model.decode(z).sample
        z2 = z.clone()
        z2[:, :, 4:] += 1.0
        changed = model.decode(z2).sample
    assert torch.equal(changed[:, :, :16], base[:, :, :16]) and not torch.allclose(
        changed[:, :, 16:], base[:, :, 16:]
    )


def test_causal_mode_changing_frame_t_leaves_earlier_latents():
    model = AutoencoderDCV.from_preset("dc-ae-v-f32t4c32-tiny", temporal_mode="causal").eval()
    x = random_video(t=16)
    base = _latent(model, x)
    for t in (5, 9, 12):
        y = x.clone()
        y[:, :, t] += 0.5
        changed = _latent(model, y)
        first_affected = t // 4  # latent frame j holds frames 4j..4j+3
        assert torch.equal(changed[:, :, :first_affected], base[:, :, :first_affected])
        assert not torch.allclose(changed[:, :, first_affected], base[:, :, first_affected])


def test_non_causal_mode_lacks_the_property():
    model = AutoencoderDCV.from_preset("dc-ae-v-f32t4c32-tiny", temporal_mode="non_causal").eval()
    x = random_video(t=16)
    y = x.clone()
    y[:, :, 15] += 0.5
    assert not torch.allclose(_latent(model, y)[:, :, 0], _latent(model, x)[:, :, 0])
    with pytest.raises(ValueError, match="cannot stream"):
        model.enable_streaming()


# ---- streaming ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["chunk_causal", "causal"])
@pytest.mark.parametrize("piece", [8, 16, 24])
def test_streaming_equals_one_shot(mode, piece):
    model = AutoencoderDCV.from_preset("dc-ae-v-f32t4c32-tiny", temporal_mode=mode).eval()
    x = random_video(t=40, h=64, w=96)
    with torch.no_grad():
        model.disable_streaming()
        z1, r1 = model.encode(x).latent, None
        r1 = model.decode(z1).sample
        model.enable_streaming(piece)
        z2 = model.encode(x).latent
        r2 = model.decode(z1).sample
    assert (z1 - z2).abs().max() <= 1e-5 and (r1 - r2).abs().max() <= 1e-5


def test_stream_iterators_accept_ragged_pieces():
    model = AutoencoderDCV.from_preset("dc-ae-v-f32t4c32-tiny").eval()
    x = random_video(t=30, h=40, w=72)
    with torch.no_grad():
        z = model.encode(x).latent
        z_stream = torch.cat(list(model.encode_stream([x[:, :, :3], x[:, :, 3:17], x[:, :, 17:]])), dim=2)
        assert torch.equal(z, z_stream)
        pieces = list(model.decode_stream([z[:, :, :3], z[:, :, 3:]], num_frames=30, height=40, width=72))
        assert all(p.shape[2] <= 8 for p in pieces)
        video = torch.cat(pieces, dim=2)
        assert video.shape == x.shape
        assert (video - model(x).sample).abs().max() <= 1e-5
        pairs = list(model.reconstruct_stream(x[:, :, s : s + 8] for s in range(0, 30, 8)))
        assert torch.equal(torch.cat([p[0] for p in pairs], 2), x)
        assert (torch.cat([p[1] for p in pairs], 2) - video).abs().max() <= 1e-5


# ---- shapes, save/load, dtypes ---------------------------------------------------------------------


@pytest.mark.parametrize("t,h,w", [(1, 33, 47), (13, 64, 64), (17, 70, 31)])
def test_odd_sizes_round_trip_to_the_input_shape(t, h, w):
    model = AutoencoderDCV.from_preset("dc-ae-v-f32t4c32-tiny").eval()
    x = random_video(t=t, h=h, w=w)
    with torch.no_grad():
        z = model.encode(x).latent
        assert tuple(z.shape[1:]) == model.latent_shape(t, h, w)
        assert model(x).sample.shape == x.shape


def test_frame_padding_policy_repeats_the_last_frame():
    model = AutoencoderDCV.from_preset("dc-ae-v-f32t4c32-tiny").eval()
    x = random_video(t=5)
    padded = torch.cat([x, x[:, :, -1:].repeat(1, 1, 3, 1, 1)], dim=2)
    with torch.no_grad():
        assert torch.equal(model.encode(x).latent, model.encode(padded).latent)


def test_save_load_round_trip(tmp_path):
    model = AutoencoderDCV.from_preset("dc-ae-v-f64t4c128-tiny", scaling_factor=0.5)
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = AutoencoderDCV.from_pretrained(tmp_path / "m")
    assert loaded.arch == model.arch
    x = random_video(t=8)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x).sample, model.eval()(x).sample)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_runs_close_to_float32(dtype):
    model = AutoencoderDCV.from_preset("dc-ae-v-f32t4c32-tiny").eval()
    x = random_video(t=8, h=32, w=32)
    with torch.no_grad():
        ref = model(x).sample
        out = model.to(dtype)(x).sample
    assert out.dtype == dtype and out.shape == ref.shape
    assert (out.float() - ref).abs().mean() < 0.05 * ref.abs().mean() + 0.02


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = AutoencoderDCV.from_preset("dc-ae-v-f32t4c32-tiny")
    x = random_video(t=16, h=32, w=32)
    model(x).sample.square().mean().backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.enable_gradient_checkpointing()
    model(x).sample.square().mean().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], msg=n)


# ---- spatial tiling ------------------------------------------------------------------------------------


def test_tiling_never_changes_shapes_and_is_a_no_op_for_one_tile():
    model = AutoencoderDCV.from_preset("dc-ae-v-f32t4c32-tiny").eval()
    x = random_video(t=8, h=96, w=160)
    with torch.no_grad():
        ref = model(x).sample
        model.enable_tiling(256, 64)  # larger than the frame: one tile
        assert torch.equal(model(x).sample, ref)
        model.enable_tiling(64, 32)
        tiled = model(x).sample
        assert model.last_run_tiled and tiled.shape == ref.shape


def test_auto_tiling_switches_on_above_the_memory_budget():
    model = AutoencoderDCV.from_preset("dc-ae-v-f32t4c32-tiny").eval()
    x = random_video(t=8, h=128, w=128)
    with torch.no_grad():
        model.memory_budget = 1 << 40
        model(x)
        assert not model.last_run_tiled
        # enough for 64 px tiles, not for the whole 128 px frame
        model.memory_budget = max(
            model.memory_needed(8, 128, 128, decoder=d, tile=(64, 32), carry=False).total
            for d in (False, True)
        )
        out = model(x).sample
        assert model.last_run_tiled and out.shape == x.shape


def test_latent_scale_estimate_gives_unit_variance():
    from dcvideogen.models.dcae_v.latents import (
        estimate_scaling_factor,
        from_diffusion_space,
        to_diffusion_space,
    )

    model = AutoencoderDCV.from_preset("dc-ae-v-f32t4c32-tiny").eval()
    clips = [random_video(t=8, seed=s) for s in range(3)]
    scale = estimate_scaling_factor(model, clips)
    with torch.no_grad():
        z = torch.cat([model.encode(c).latent.flatten() for c in clips])
    assert abs(to_diffusion_space(z, scale).std(unbiased=False).item() - 1) < 1e-4
    torch.testing.assert_close(from_diffusion_space(to_diffusion_space(z, scale), scale), z)
