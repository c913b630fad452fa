"""The luma filter (DCAEVConfig.luma_filter_width, layers.LumaFilter): the identity until trained, a correction
of luma only (R, G and B move by one step per pixel), per frame (streaming gives the one-shot result), the same
in every decoded tile; saved and loaded with the model; and trained alone by the AE trainer on a frozen model
it grows from (model.init_from + model.trainable)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dcvideogen.errors import DCVGError
from dcvideogen.models.dcae_v import AutoencoderDCV
from dcvideogen.models.dcae_v.layers import LumaFilter, block_phase, luma
from dcvideogen.training.config import load_config
from dcvideogen.training.trainer_ae import train_ae
from dcvideogen.video import read_video

from conftest import sample_clip_dir

TINY = "dc-ae-v-f32t4c32-tiny"


@pytest.fixture(scope="module")
def clip() -> torch.Tensor:
    """bikes, 16 frames, 64x96, in [-1, 1]."""
    return (
        read_video(sample_clip_dir() / "bikes.mp4", max_frames=16).frames[None, :, :, :64, :96].contiguous()
    )


def trained_like(model: AutoencoderDCV) -> AutoencoderDCV:
    torch.manual_seed(1)
    for p in model.decoder.luma_filter.parameters():
        torch.nn.init.normal_(p, std=0.05)  # a filter that does something
    return model.eval()


def test_luma_weights_and_block_phase():
    rgb = torch.rand(2, 3, 8, 8)
    step = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(luma(rgb + step), luma(rgb) + step)  # one step on R, G, B moves luma by it
    phase = block_phase(16, 24, 8, rgb)  # (1, 4, 16, 24)
    assert phase.shape == (1, 4, 16, 24)
    torch.testing.assert_close(phase[..., :8, :8], phase[..., 8:16, 16:24])  # periodic in the cell
    assert not torch.allclose(phase[..., :8, :8], phase[..., 4:12, :8])


def test_filter_is_the_identity_until_trained_and_moves_luma_only(clip):
    torch.manual_seed(0)
    plain = AutoencoderDCV.from_preset(TINY).eval()
    grown = AutoencoderDCV.from_preset(TINY, luma_filter_width=16, luma_filter_blocks=2).eval()
    missing, unexpected = grown.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == [] and all(k.startswith("decoder.luma_filter.") for k in missing)
    with torch.no_grad():
        torch.testing.assert_close(grown(clip).sample, plain(clip).sample, rtol=0, atol=0)
        trained_like(grown)
        delta = grown(clip).sample - plain(clip).sample  # (1, 3, T, H, W)
    assert delta.abs().max() > 1e-3
    torch.testing.assert_close(delta[:, 0], delta[:, 1], rtol=0, atol=1e-6)  # R, G, B: one step per pixel
    torch.testing.assert_close(delta[:, 0], delta[:, 2], rtol=0, atol=1e-6)


def test_filter_streams_exactly(clip):
    model = trained_like(AutoencoderDCV.from_preset(TINY, luma_filter_width=16, luma_filter_blocks=2))
    with torch.no_grad():
        z = model.encode(clip).latent
        streamed = model.decode(z).sample
        model.disable_streaming()
        torch.testing.assert_close(model.decode(z).sample, streamed, rtol=0, atol=1e-5)


def test_a_tile_starting_on_a_cell_edge_sees_the_frames_block_phase(clip):
    """Decoded tiles start on latent-cell edges (multiples of 32 pixels): the filter of such a tile equals the
    filter of the whole frame away from the tile's edges (its reach: 6 convolutions of 4-pixel cells)."""
    torch.manual_seed(2)
    f = LumaFilter(16, 2, cell=32)
    for p in f.parameters():
        torch.nn.init.normal_(p, std=0.05)
    frames = clip[..., :64, :96]  # (1, 3, 16, 64, 96)
    with torch.no_grad():
        whole = f(frames)
        on_edge = f(frames[..., 32:])  # columns 32 ... 95
        off_edge = f(frames[..., 16:])
    inside = slice(24, -24)  # columns the tile's own edges do not reach
    torch.testing.assert_close(on_edge[..., 24:40], whole[..., 32:][..., 24:40], rtol=0, atol=1e-5)
    assert (off_edge[..., inside] - whole[..., 16:][..., inside]).abs().max() > 1e-3


def test_config_refuses_a_filter_it_cannot_run():
    with pytest.raises(ValueError, match="luma_filter_width -1"):
        AutoencoderDCV.from_preset(TINY, luma_filter_width=-1)
    with pytest.raises(ValueError, match="needs RGB frames"):
        AutoencoderDCV.from_preset(TINY, in_channels=1, luma_filter_width=8)


def test_filter_saves_and_loads(tmp_path, clip):
    model = trained_like(AutoencoderDCV.from_preset(TINY, luma_filter_width=16, luma_filter_blocks=2))
    model.save_pretrained(tmp_path / "m")
    loaded = AutoencoderDCV.from_pretrained(tmp_path / "m").eval()
    assert isinstance(loaded.decoder.luma_filter, LumaFilter) and loaded.arch.luma_filter_blocks == 2
    with torch.no_grad():
        torch.testing.assert_close(loaded(clip).sample, model(clip).sample, rtol=0, atol=0)


# ---- trained alone by the AE trainer ---------------------------------------------------------------------

TRAIN = [
    f"model.preset={TINY}",
    "data.workers=0",
    "data.num_frames=8",
    "data.size=64",
    "tensorboard=false",
    "optim.ema_decay=0",
    "checkpoint_every=2",
    "log_every=1",
]


@pytest.fixture
def data(bikes_data) -> Path:
    return bikes_data


def test_trainer_grows_a_model_by_the_filter_and_trains_it_alone(data, tmp_path, clip):
    torch.manual_seed(0)
    base = AutoencoderDCV.from_preset(TINY)
    base.save_pretrained(tmp_path / "base")
    grow = [
        *TRAIN,
        f"model.init_from={tmp_path / 'base'}",
        "model.arch={luma_filter_width: 16, luma_filter_blocks: 2}",
        "model.trainable=[decoder.luma_filter.]",
        "optim.lr=1e-3",
        "steps=2",
    ]
    out = train_ae(load_config(None, grow), data, tmp_path / "run")
    trained = AutoencoderDCV.from_pretrained(out)
    before, after = base.state_dict(), trained.state_dict()
    for name, value in before.items():  # everything but the filter is frozen
        torch.testing.assert_close(after[name], value, rtol=0, atol=0, msg=name)
    assert trained.decoder.luma_filter.conv_out.weight.abs().sum() > 0  # the filter was trained
    # The filter's run resumes like any other (its checkpoint holds only the filter's optimiser state).
    more = load_config(None, [*grow[:-1], "steps=3"])
    train_ae(more, data, tmp_path / "run", resume="auto")

    with pytest.raises(DCVGError, match=r"model.trainable: 'decoder.nothing' names no parameter"):
        train_ae(load_config(None, [*grow, "model.trainable=[decoder.nothing]"]), data, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    wider = [*TRAIN, f"model.init_from={tmp_path / 'base'}", "model.arch={chunk_size: 16}", "steps=1"]
    with pytest.raises(DCVGError, match=r"model.init_from=.* fix model.preset/arch"):  # not only a new filter
        train_ae(load_config(None, wider), data, tmp_path / "wider")


def test_the_adaptive_gan_weight_needs_a_trained_last_layer(data, tmp_path):
    frozen = [*TRAIN, "model.trainable=[encoder.]", "loss.gan_weight=0.1", "steps=1"]
    with pytest.raises(DCVGError, match=r"freezes the decoder's last layer.*adaptive_gan_weight: false"):
        train_ae(load_config(None, frozen), data, tmp_path / "gan")
    assert not (tmp_path / "gan").exists()
