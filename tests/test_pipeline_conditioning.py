"""The pure conventions of the pipelines: frames, sizes, the I2V condition and mask, per-token timesteps."""

import pytest
import torch

from dcvideogen.errors import DCVGError
from dcvideogen.pipelines.conditioning import (
    check_transformer_channels,
    expected_transformer_channels,
    first_frames_mask,
    i2v_transformer_input,
    image_condition_pieces,
    image_condition_video,
    resolve_geometry,
    round_num_frames,
    token_timesteps,
)

RELEASED = dict(temporal_factor=4, spatial_factor=32, patch_size=(1, 1, 1), min_frames=40)


def test_released_frame_and_size_conventions():
    assert (
        round_num_frames(81, 4) == 80 and round_num_frames(80, 4) == 80 and round_num_frames(83, 4, 2) == 80
    )
    g, notes = resolve_geometry(81, 480, 832, **RELEASED)
    assert (g.num_frames, g.height, g.width) == (80, 480, 832)
    assert g.latent_grid == (20, 15, 26)  # 81 -> 80 frames -> 20 latent frames (FACTS section 2)
    assert notes == ["num_frames 81 is not a multiple of 4; generating 80 frames"]
    g, notes = resolve_geometry(80, 720, 1280, **RELEASED)  # the release's "720p" is 704 rows
    assert (g.height, g.width, g.latent_grid) == (704, 1280, (20, 22, 40))
    assert notes == ["height 720 is not a multiple of 32; generating 704 pixels"]
    g, notes = resolve_geometry(80, 480, 832, **RELEASED)
    assert notes == []
    g, _ = resolve_geometry(
        80, 480, 832, temporal_factor=4, spatial_factor=32, patch_size=(1, 2, 2), min_frames=40
    )
    assert (g.height, g.width) == (448, 832)  # patch 2 needs multiples of 64


def test_strict_refuses_rounding_and_short_clips_are_refused():
    with pytest.raises(DCVGError, match="height 720 is not a multiple of 32; use 704 or drop --strict"):
        resolve_geometry(80, 720, 1280, strict=True, **RELEASED)
    with pytest.raises(DCVGError, match="num_frames 81 is not a multiple of 4; use 80"):
        resolve_geometry(81, 480, 832, strict=True, **RELEASED)
    with pytest.raises(DCVGError, match=r"num_frames 36 is below one chunk of the autoencoder \(40 frames\)"):
        resolve_geometry(36, 480, 832, **RELEASED)
    with pytest.raises(DCVGError, match="below one chunk"):
        resolve_geometry(39, 480, 832, **RELEASED)  # rounds to 36 first
    with pytest.raises(DCVGError, match="width 0: must be a positive"):
        resolve_geometry(80, 480, 0, **RELEASED)


def test_first_frames_mask_pattern():
    # 12 frames -> 3 latent frames; channel c of latent frame j is pixel frame 4j + c; frames 0-3 are known.
    mask = first_frames_mask(2, 12, latent_height=2, latent_width=3)
    assert mask.shape == (2, 4, 3, 2, 3)
    expected = torch.tensor([[1.0, 0.0, 0.0]] * 4)  # (channel, latent frame)
    for b in range(2):
        for y in range(2):
            for x in range(3):
                torch.testing.assert_close(mask[b, :, :, y, x], expected, rtol=0, atol=0)
    # The same construction by hand: a per-frame mask (B, 1, T, h, w) viewed (B, T/4, 4, h, w), moved to channels.
    per_frame = torch.zeros(2, 1, 12, 2, 3)
    per_frame[:, :, :4] = 1
    by_hand = per_frame.view(2, 3, 4, 2, 3).transpose(1, 2)
    torch.testing.assert_close(mask, by_hand, rtol=0, atol=0)
    with pytest.raises(ValueError, match="multiple of the temporal factor"):
        first_frames_mask(1, 10, 2, 2)


def test_image_condition_video_repeats_the_image_then_zeros():
    image = torch.rand(2, 3, 5, 7) * 2 - 1
    clip = image_condition_video(image, 12)
    assert clip.shape == (2, 3, 12, 5, 7)
    for t in range(4):
        torch.testing.assert_close(clip[:, :, t], image, rtol=0, atol=0)
    assert clip[:, :, 4:].abs().sum() == 0
    for piece_frames in (1, 3, 5, 12, 40):  # the streamed version is the same clip
        pieces = list(image_condition_pieces(image, 12, piece_frames))
        assert all(p.shape[2] <= piece_frames for p in pieces)
        torch.testing.assert_close(torch.cat(pieces, dim=2), clip, rtol=0, atol=0)


def test_transformer_input_channel_order():
    latents, mask, cond = (
        torch.full((1, 32, 2, 1, 1), 1.0),
        torch.full((1, 4, 2, 1, 1), 2.0),
        torch.full((1, 32, 2, 1, 1), 3.0),
    )
    x = i2v_transformer_input(latents, mask, cond)
    assert x.shape[1] == 68 == expected_transformer_channels(32, "i2v")
    assert (x[:, :32] == 1).all() and (x[:, 32:36] == 2).all() and (x[:, 36:] == 3).all()


def test_token_timesteps_use_the_configured_patch_size():
    mask = torch.ones(3, 4, 6)
    mask[0] = 0  # the first latent frame is given
    t = torch.tensor(700.0)
    ts = token_timesteps(mask, t, (1, 1, 1))
    assert ts.shape == (3 * 4 * 6,)
    assert (ts[: 4 * 6] == 0).all() and (ts[4 * 6 :] == 700).all()  # tokens ordered frame-major
    ts2 = token_timesteps(mask, t, (1, 2, 2))  # Wan 2.2's stride
    assert ts2.shape == (3 * 2 * 3,) and (ts2[:6] == 0).all() and (ts2[6:] == 700).all()


def test_transformer_channel_check():
    check_transformer_channels(32, 32, 32, "t2v")
    check_transformer_channels(68, 32, 32, "i2v")
    check_transformer_channels(32, None, 32, "i2v", expand_timesteps=True)
    with pytest.raises(
        DCVGError, match=r"in_channels 16 / out_channels 16 .* 32 channels, so T2V needs in 32"
    ):
        check_transformer_channels(16, 16, 32, "t2v")
    with pytest.raises(DCVGError, match=r"I2V needs in 68 \(32 latent \+ 4 mask \+ 32 condition\) / out 32"):
        check_transformer_channels(36, 16, 32, "i2v")
