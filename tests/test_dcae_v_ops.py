"""Pure functions of DC-AE-V: rearrangements, shortcuts, RMS norm, chunked temporal padding, tiling."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from dcvideogen.models.dcae_v.config import TemporalMode
from dcvideogen.models.dcae_v.ops import (
    TemporalPadding,
    channel_average_shortcut,
    channel_duplicate_shortcut,
    channel_to_space_time,
    merge_temporal_chunks,
    pad_temporal_chunks,
    rms_norm_channels,
    space_time_to_channel,
    split_chunks,
)
from dcvideogen.models.dcae_v.tiling import TileBlender, plan_tiles, tile_starts


@pytest.mark.parametrize("s,t", [(2, 1), (1, 4), (2, 2)])
def test_space_time_rearrangements_are_inverse(s, t):
    x = torch.randn(2, 5, 8, 6, 4)
    y = space_time_to_channel(x, s, t)
    assert y.shape == (2, 5 * s * s * t, 8 // t, 6 // s, 4 // s)
    torch.testing.assert_close(channel_to_space_time(y, s, t), x, rtol=0, atol=0)


def test_space_to_channel_layout():
    # channel index = ((c*t + dt)*s + dh)*s + dw, as in the official pixel_unshuffle_3d
    x = torch.arange(1 * 2 * 4 * 2 * 2, dtype=torch.float32).reshape(1, 2, 4, 2, 2)
    y = space_time_to_channel(x, 2, 2)  # (1, 16, 2, 1, 1)
    c, dt, dh, dw = 1, 1, 0, 1
    assert y[0, ((c * 2 + dt) * 2 + dh) * 2 + dw, 1, 0, 0] == x[0, c, 2 + dt, dh, dw]


def test_shortcuts_average_and_duplicate():
    x = torch.randn(1, 4, 4, 4, 4)
    down = channel_average_shortcut(x, 8, 2, 1)  # 4*4 = 16 channels averaged in pairs
    ref = space_time_to_channel(x, 2, 1).reshape(1, 8, 2, 4, 2, 2).mean(2)
    torch.testing.assert_close(down, ref)
    up = channel_duplicate_shortcut(down, 4, 2, 1)  # 8 channels -> repeat x2 -> 16 -> 4 channels at 2x
    assert up.shape == x.shape
    # duplicating then averaging is the identity
    torch.testing.assert_close(channel_average_shortcut(up, 8, 2, 1), down)


def test_rms_norm_matches_definition():
    x = torch.randn(2, 6, 3, 4, 5)
    w, b = torch.randn(6), torch.randn(6)
    xp = x.permute(0, 2, 3, 4, 1)
    ref = (xp / torch.sqrt(xp.square().mean(-1, keepdim=True) + 1e-5) * w + b).permute(0, 4, 1, 2, 3)
    torch.testing.assert_close(rms_norm_channels(x, w, b, 1e-5), ref)


def test_split_chunks():
    assert split_chunks(10, 4) == [(0, 4), (4, 4), (8, 2)]
    assert split_chunks(8, None) == [(0, 8)]
    assert split_chunks(3, 8) == [(0, 3)]


def reference_chunk_causal_conv(x, weight, chunk):
    """Loop-by-loop definition: chunk i sees the last frame of chunk i-1 on the left and zeros on the right."""
    outs = []
    for s in range(0, x.shape[2], chunk):
        c = x[:, :, s : s + chunk]
        left = x[:, :, s - 1 : s] if s > 0 else torch.zeros_like(c[:, :, :1])
        right = torch.zeros_like(c[:, :, :1])
        outs.append(F.conv3d(torch.cat([left, c, right], 2), weight, padding=(0, 1, 1)))
    return torch.cat(outs, 2)


def conv_with(pad, x, weight, context=None):
    groups, ctx = pad_temporal_chunks(x, pad, context)
    return merge_temporal_chunks([F.conv3d(g, weight, padding=(0, 1, 1)) for g in groups], x.shape[0]), ctx


@pytest.mark.parametrize("frames", [12, 14, 3])
def test_chunk_causal_padding_matches_loop_definition(frames):
    x, weight = torch.randn(2, 3, frames, 5, 5), torch.randn(4, 3, 3, 3, 3)
    pad = TemporalPadding.for_mode(TemporalMode.CHUNK_CAUSAL, 3, 4)
    y, _ = conv_with(pad, x, weight)
    torch.testing.assert_close(y, reference_chunk_causal_conv(x, weight, 4))


def test_causal_and_non_causal_padding():
    x, weight = torch.randn(1, 2, 9, 4, 4), torch.randn(3, 2, 3, 3, 3)
    causal = TemporalPadding.for_mode(TemporalMode.CAUSAL, 3, 4)
    y, _ = conv_with(causal, x, weight)
    ref = F.conv3d(F.pad(x, (0, 0, 0, 0, 2, 0)), weight, padding=(0, 1, 1))
    torch.testing.assert_close(y, ref)
    non_causal = TemporalPadding.for_mode(TemporalMode.NON_CAUSAL, 3, 4)
    y, ctx = conv_with(non_causal, x, weight)
    torch.testing.assert_close(y, F.conv3d(x, weight, padding=1))
    assert ctx is None


@pytest.mark.parametrize("mode", [TemporalMode.CHUNK_CAUSAL, TemporalMode.CAUSAL])
def test_carried_context_equals_whole_sequence(mode):
    x, weight = torch.randn(1, 2, 16, 4, 4), torch.randn(3, 2, 3, 3, 3)
    pad = TemporalPadding.for_mode(mode, 3, 4)
    whole, _ = conv_with(pad, x, weight)
    ctx, pieces = None, []
    for s in (0, 4, 12):  # pieces of 4, 8, 4 frames (chunk multiples)
        e = {0: 4, 4: 12, 12: 16}[s]
        y, ctx = conv_with(pad, x[:, :, s:e], weight, ctx)
        pieces.append(y)
    torch.testing.assert_close(torch.cat(pieces, 2), whole)


def test_tile_starts_cover_and_align():
    assert tile_starts(100, 200, 40, 4) == [0]
    starts = tile_starts(256, 96, 32, 32)
    assert starts[0] == 0 and starts[-1] + 96 == 256 and all(s % 32 == 0 for s in starts)
    assert all(b - a <= 96 - 32 for a, b in itertools.pairwise(starts))
    with pytest.raises(ValueError, match="smaller than the tile size"):
        tile_starts(256, 64, 64, 32)


def test_tile_blending_is_exact_for_pointwise_functions():
    x = torch.randn(1, 2, 3, 70, 90)
    tiles = plan_tiles(70, 90, 32, 12, 2)
    assert len(tiles) > 4
    blender = TileBlender(70, 90, ramp=12)
    for t in tiles:
        blender.add(t, torch.tanh(x[..., t.y : t.y + t.h, t.x : t.x + t.w]))
    torch.testing.assert_close(blender.result(x.dtype), torch.tanh(x))
