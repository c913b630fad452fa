"""Pure tensor functions of DC-AE-V. Video tensors are (B, C, T, H, W) everywhere.

- space/time <-> channel rearrangements used by the resampling blocks and their residual shortcuts
  (DC-AE's residual autoencoding, carried to video in Sec. 3.1);
- RMS normalisation over channels;
- temporal padding of a convolution for the three temporal modes (Sec. 3.2, Fig. 4), with the left
  context carried from the previous call so a clip can be processed chunk after chunk;
- replicate padding of a clip (or of one tile of it) to whole chunks and the spatial factor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import TemporalMode
from .tiling import Tile


def space_time_to_channel(x: torch.Tensor, spatial: int, temporal: int) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, C*t*s*s, T/t, H/s, W/s); channel index = ((c*t + dt)*s + dh)*s + dw."""
    b, c, t, h, w = x.shape
    if t % temporal or h % spatial or w % spatial:
        raise ValueError(f"shape {tuple(x.shape)} is not divisible by time {temporal} and space {spatial}")
    x = x.reshape(b, c, t // temporal, temporal, h // spatial, spatial, w // spatial, spatial)
    x = x.permute(0, 1, 3, 5, 7, 2, 4, 6)  # (B, C, dt, dh, dw, T', H', W')
    return x.reshape(b, c * temporal * spatial * spatial, t // temporal, h // spatial, w // spatial)


def channel_to_space_time(x: torch.Tensor, spatial: int, temporal: int) -> torch.Tensor:
    """Inverse of `space_time_to_channel`: (B, C*t*s*s, T, H, W) -> (B, C, T*t, H*s, W*s)."""
    b, c, t, h, w = x.shape
    ratio = temporal * spatial * spatial
    if c % ratio:
        raise ValueError(f"{c} channels are not divisible by time {temporal} x space {spatial}^2")
    x = x.reshape(b, c // ratio, temporal, spatial, spatial, t, h, w)
    x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)  # (B, C', T, dt, H, dh, W, dw)
    return x.reshape(b, c // ratio, t * temporal, h * spatial, w * spatial)


def channel_average_shortcut(x: torch.Tensor, out_channels: int, spatial: int, temporal: int) -> torch.Tensor:
    """Down-sampling shortcut: space/time-to-channel, then average groups of consecutive channels."""
    x = space_time_to_channel(x, spatial, temporal)  # (B, C*r, T', H', W')
    b, c, t, h, w = x.shape
    return x.reshape(b, out_channels, c // out_channels, t, h, w).mean(dim=2)


def channel_duplicate_shortcut(
    x: torch.Tensor, out_channels: int, spatial: int, temporal: int
) -> torch.Tensor:
    """Up-sampling shortcut: repeat every channel, then channel-to-space/time."""
    repeats = out_channels * spatial * spatial * temporal // x.shape[1]
    return channel_to_space_time(x.repeat_interleave(repeats, dim=1), spatial, temporal)


def rms_norm_channels(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    """RMS norm over the channel axis of (B, C, ...) with an affine weight and bias; computed in float32."""
    xf = x.float()
    y = xf * torch.rsqrt(xf.square().mean(dim=1, keepdim=True) + eps)
    del xf  # the float32 copy of a half-precision input
    shape = (1, -1) + (1,) * (x.dim() - 2)
    w, b = weight.float().view(shape), bias.float().view(shape)
    if torch.is_grad_enabled() and (y.requires_grad or w.requires_grad or b.requires_grad):
        y = y * w + b
    else:  # in place at inference: one feature map less at the peak, the same values
        y.mul_(w).add_(b)
    return y.to(x.dtype)


# ---- temporal padding (Sec. 3.2, Fig. 4) ----------------------------------------------------------------


@dataclass(frozen=True)
class TemporalPadding:
    """Temporal padding of one convolution layer.

    Time is cut into chunks of `chunk` frames (None: the whole input is one chunk). Every chunk is
    padded on the left with the `left` frames that precede it (the previous chunk, or the context
    carried from an earlier call; zeros at the very start) and on the right with `right` zero frames.
    `carry` says whether the left context comes from the past at all (False: always zeros).
    """

    chunk: int | None
    left: int
    right: int
    carry: bool

    @staticmethod
    def for_mode(mode: TemporalMode, kernel_size: int, chunk: int) -> TemporalPadding:
        p = kernel_size // 2
        if mode is TemporalMode.CHUNK_CAUSAL:
            return TemporalPadding(chunk=chunk, left=p, right=p, carry=True)
        if mode is TemporalMode.CAUSAL:
            return TemporalPadding(chunk=None, left=2 * p, right=0, carry=True)
        return TemporalPadding(chunk=None, left=p, right=p, carry=False)


def split_chunks(num_frames: int, chunk: int | None) -> list[tuple[int, int]]:
    """(start, length) of each chunk; the last one may be shorter."""
    if chunk is None or chunk >= num_frames:
        return [(0, num_frames)]
    return [(s, min(chunk, num_frames - s)) for s in range(0, num_frames, chunk)]


def _copy_frames(dst: torch.Tensor, context: torch.Tensor, x: torch.Tensor, start: int) -> None:
    """dst[:, :, j] = cat([context, x], dim=2)[:, :, start + j] for every j, without the concatenation."""
    left, n = context.shape[2], dst.shape[2]
    k = min(max(left - start, 0), n)  # frames that come from the context
    if k:
        dst[:, :, :k] = context[:, :, start : start + k]
    if n > k:
        dst[:, :, k:] = x[:, :, start + k - left : start + n - left]


def pad_temporal_chunks(
    x: torch.Tensor, pad: TemporalPadding, context: torch.Tensor | None, keep_context: bool = True
) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """Cut x (B, C, T, H, W) into padded chunks ready for a 'valid' temporal convolution.

    Returns the padded chunks, grouped so that equal-length chunks are stacked along the batch axis
    ((B*n, C, left + L + right, H, W) each, in time order), and the context to carry to the next call
    (the last `left` frames seen; None when the mode carries nothing or `keep_context` is False). Each group
    is written once into its own tensor (one copy of x, not a concatenation and then a padded copy of it).
    """
    b, c, t, h, w = x.shape
    if not pad.carry or context is None:
        ctx = x.new_zeros(b, c, pad.left, h, w)
    elif context.shape[2] < pad.left:
        ctx = torch.cat([x.new_zeros(b, c, pad.left - context.shape[2], h, w), context], dim=2)
    else:
        ctx = context[:, :, context.shape[2] - pad.left :]
    # The sequence the chunks read is cat([ctx, x]): chunk i starting at frame s of x reads [s, s + left + L).
    new_context = None
    if pad.carry and pad.left and keep_context:
        new_context = x.new_empty(b, c, pad.left, h, w)
        _copy_frames(new_context, ctx, x, t)

    groups: list[torch.Tensor] = []
    chunks = split_chunks(t, pad.chunk)
    n_full = sum(1 for _, length in chunks if length == chunks[0][1])
    for first, count in ((0, n_full), (n_full, len(chunks) - n_full)):
        if count == 0:
            continue
        start, length = chunks[first]
        window = pad.left + length
        if count == 1 and window + pad.right == length:  # nothing to pad: a view
            groups.append(x[:, :, start : start + length])
            continue
        g = x.new_empty(b, count, c, window + pad.right, h, w)  # (B, n, C, left + L + right, H, W)
        for i in range(count):
            _copy_frames(g[:, i, :, :window], ctx, x, start + i * length)
        if pad.right:
            g[:, :, :, window:] = 0
        groups.append(g.view(b * count, c, window + pad.right, h, w))
    return groups, new_context


def merge_temporal_chunks(groups: list[torch.Tensor], batch: int) -> torch.Tensor:
    """Inverse of the grouping in `pad_temporal_chunks` after the convolution: back to (B, C, T, H, W)."""
    out = []
    for g in groups:
        n = g.shape[0] // batch
        _, c, t, h, w = g.shape
        out.append(g.reshape(batch, n, c, t, h, w).transpose(1, 2).reshape(batch, c, n * t, h, w))
    return out[0] if len(out) == 1 else torch.cat(out, dim=2)


# ---- frame and size padding (the policy of `AutoencoderDCV.encode`) -------------------------------------


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def pad_to(x: torch.Tensor, frames: int, height: int, width: int) -> torch.Tensor:
    """Replicate-pad (B, C, T, H, W) at the end of time and the bottom/right of space to the given size."""
    t, h, w = x.shape[2:]
    pt, ph, pw = frames - t, height - h, width - w
    assert min(pt, ph, pw) >= 0, f"cannot pad {tuple(x.shape)} to {(frames, height, width)}"
    if pt:
        x = torch.cat([x, x[:, :, -1:].expand(-1, -1, pt, -1, -1)], dim=2)
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph, 0, 0), mode="replicate")
    return x


def pad_video(x: torch.Tensor, frame_multiple: int, spatial_multiple: int) -> torch.Tensor:
    """Replicate-pad (B, C, T, H, W) at the end of time and the bottom/right of space to the multiples."""
    t, h, w = x.shape[2:]
    return pad_to(
        x, round_up(t, frame_multiple), round_up(h, spatial_multiple), round_up(w, spatial_multiple)
    )


def padded_region(x: torch.Tensor, tile: Tile, frames: int) -> torch.Tensor:
    """Tile `tile` of the padded frame, cut from x (B, C, T, H, W) and then padded to `frames` frames and the
    tile's size, without padding all of x.

    Equal to `pad_to(x, frames, H', W')[..., tile rows, tile columns]` for any padded size H' x W' the tile
    lies in: replicate padding commutes with cropping as long as the tile starts inside x, which tiles of a
    padded frame always do (the padding is smaller than a tile).
    """
    h, w = x.shape[-2:]
    assert tile.y < h and tile.x < w, f"{tile} starts in the padding of a {h}x{w} frame"
    region = x[..., tile.y : tile.y + tile.h, tile.x : tile.x + tile.w]  # (B, C, t, <=th, <=tw)
    return pad_to(region, frames, tile.h, tile.w)
