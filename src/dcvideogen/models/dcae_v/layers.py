"""Layers of DC-AE-V: the temporally padded 3D convolution, RMS norm, the residual block and the
resampling blocks with their parameter-free residual shortcuts (Sec. 3.1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .ops import (
    TemporalPadding,
    channel_average_shortcut,
    channel_duplicate_shortcut,
    channel_to_space_time,
    merge_temporal_chunks,
    pad_temporal_chunks,
    rms_norm_channels,
    space_time_to_channel,
)

_INT32_LIMIT = 2**31


class TemporalCache:
    """Per-layer left context carried between successive calls on consecutive pieces of one clip.

    Streaming encode/decode passes one cache through the network for every piece; each temporal
    convolution reads the frames it saw last time and stores the frames the next piece will need. For the
    last piece of a clip `store` is False: each layer's context is handed over once and dropped, and
    nothing new is kept, so the context of a whole frame is never held past its last use.
    """

    def __init__(self) -> None:
        self._frames: dict[int, torch.Tensor] = {}
        self.store = True

    def get(self, layer: nn.Module) -> torch.Tensor | None:
        return self._frames.get(id(layer)) if self.store else self._frames.pop(id(layer), None)

    def put(self, layer: nn.Module, frames: torch.Tensor | None) -> None:
        if frames is not None and self.store:
            self._frames[id(layer)] = frames

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def nbytes(self) -> int:
        """Bytes of context held (see AutoencoderDCV.context_bytes for the estimate)."""
        return sum(f.numel() * f.element_size() for f in self._frames.values())


_USE_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch, "mkldnn_convolution")


def _conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding) -> torch.Tensor:
    if _USE_ONEDNN and x.device.type == "cpu" and x.dtype == torch.float32:
        # PyTorch's CPU dispatch sends batch-1 convolutions with few channels to its slow reference
        # kernel (10x slower for the 3-channel input projection); oneDNN is faster for every layer here.
        return torch.mkldnn_convolution(x.contiguous(), weight, bias, padding, (1, 1, 1), (1, 1, 1), 1)
    return F.conv3d(x, weight, bias, padding=padding)


def _conv3d_split(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding) -> torch.Tensor:
    """conv3d that splits batch and output channels so no tensor passed to the kernel reaches 2**31 elements
    (cuDNN indexes with 32-bit integers). Same result as one call."""
    out_ch = weight.shape[0]
    per_sample_in = x[0].numel()
    per_sample_out = out_ch * x.shape[2:].numel()
    if x.numel() < _INT32_LIMIT and x.shape[0] * per_sample_out < _INT32_LIMIT:
        return _conv3d(x, weight, bias, padding)
    if x.shape[0] > 1:
        step = max(1, (_INT32_LIMIT - 1) // max(per_sample_in, per_sample_out))
        return torch.cat(
            [_conv3d_split(x[i : i + step], weight, bias, padding) for i in range(0, x.shape[0], step)]
        )
    if per_sample_out >= _INT32_LIMIT and out_ch > 1:
        half = out_ch // 2
        w0, w1 = weight[:half], weight[half:]
        b0, b1 = (None, None) if bias is None else (bias[:half], bias[half:])
        return torch.cat([_conv3d_split(x, w0, b0, padding), _conv3d_split(x, w1, b1, padding)], dim=1)
    if per_sample_in >= _INT32_LIMIT and x.shape[1] > 1:
        half = x.shape[1] // 2
        y = _conv3d_split(x[:, :half], weight[:, :half], bias, padding)
        return y + _conv3d_split(x[:, half:], weight[:, half:], None, padding)
    return _conv3d(x, weight, bias, padding)


class TemporalConv3d(nn.Conv3d):
    """k x k x k convolution, 'same' in space, with temporal padding set by the temporal mode."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, pad: TemporalPadding, bias: bool = True
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, padding=(0, kernel_size // 2, kernel_size // 2), bias=bias
        )
        self.temporal_padding = pad

    def forward(self, x: torch.Tensor, cache: TemporalCache | None = None) -> torch.Tensor:
        # x: (B, C_in, T, H, W) -> (B, C_out, T, H, W)
        context = cache.get(self) if cache is not None else None
        keep = cache is not None and cache.store
        groups, new_context = pad_temporal_chunks(x, self.temporal_padding, context, keep_context=keep)
        if cache is not None:
            cache.put(self, new_context)
        outs = [_conv3d_split(g, self.weight, self.bias, self.padding) for g in groups]
        return merge_temporal_chunks(outs, x.shape[0])

    def extra_repr(self) -> str:
        return super().extra_repr() + f", temporal_padding={self.temporal_padding}"


class RMSNorm3d(nn.Module):
    """RMS norm over channels of (B, C, T, H, W), with weight and bias."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm_channels(x, self.weight, self.bias, self.eps)


class ResBlock3d(nn.Module):
    """x + RMSNorm(Conv(SiLU(Conv(x) + b))): the 3D ResNet block of every stage."""

    def __init__(self, channels: int, kernel_size: int, pad: TemporalPadding, eps: float) -> None:
        super().__init__()
        self.conv1 = TemporalConv3d(channels, channels, kernel_size, pad, bias=True)
        self.conv2 = TemporalConv3d(channels, channels, kernel_size, pad, bias=False)
        self.norm = RMSNorm3d(channels, eps)

    def forward(self, x: torch.Tensor, cache: TemporalCache | None = None) -> torch.Tensor:
        h = F.silu(self.conv1(x, cache))  # (B, C, T, H, W)
        h = self.conv2(h, cache)  # one statement each, so every intermediate is freed as soon as it is used
        h = self.norm(h)
        return x + h


class Downsample3d(nn.Module):
    """Conv to C_out/r channels, then space/time-to-channel (r = s*s*t); shortcut: the same rearrangement
    with channel averaging (residual autoencoding)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        spatial: int,
        temporal: int,
        kernel_size: int,
        pad: TemporalPadding,
    ) -> None:
        super().__init__()
        self.out_channels, self.spatial, self.temporal = out_channels, spatial, temporal
        ratio = spatial * spatial * temporal
        self.conv = TemporalConv3d(in_channels, out_channels // ratio, kernel_size, pad)

    def forward(self, x: torch.Tensor, cache: TemporalCache | None = None) -> torch.Tensor:
        # (B, C_in, T, H, W) -> (B, C_out, T/t, H/s, W/s)
        h = space_time_to_channel(self.conv(x, cache), self.spatial, self.temporal)
        return h + channel_average_shortcut(x, self.out_channels, self.spatial, self.temporal)


class Upsample3d(nn.Module):
    """Conv to C_out*r channels, then channel-to-space/time; shortcut: channel duplication, then the same
    rearrangement."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        spatial: int,
        temporal: int,
        kernel_size: int,
        pad: TemporalPadding,
    ) -> None:
        super().__init__()
        self.out_channels, self.spatial, self.temporal = out_channels, spatial, temporal
        ratio = spatial * spatial * temporal
        self.conv = TemporalConv3d(in_channels, out_channels * ratio, kernel_size, pad)

    def forward(self, x: torch.Tensor, cache: TemporalCache | None = None) -> torch.Tensor:
        # (B, C_in, T, H, W) -> (B, C_out, T*t, H*s, W*s)
        h = channel_to_space_time(self.conv(x, cache), self.spatial, self.temporal)
        return h + channel_duplicate_shortcut(x, self.out_channels, self.spatial, self.temporal)


# ---- the luma filter (ours: DCAEVConfig.luma_filter_width) ----------------------------------------------

LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601


def luma(frames: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB -> (N, 1, H, W) luma. R, G and B shifted by the same step d shift it by d and leave
    the colour differences R - Y and B - Y as they were (the weights sum to one)."""
    w = frames.new_tensor(LUMA_WEIGHTS).view(1, 3, 1, 1)
    return (frames * w).sum(1, keepdim=True)


def block_phase(height: int, width: int, period: int, like: torch.Tensor) -> torch.Tensor:
    """(1, 4, height, width): sin and cos of each row's and column's place in its block of `period`
    positions, counted from (0, 0). A lapped linear decoder's error depends on where a pixel sits in its
    latent cell; decoded tiles start on cell edges, so every tile sees the same phase as the whole frame."""

    def angles(n: int) -> torch.Tensor:  # in float32 from the place in the cell: exact in any dtype
        return (torch.arange(n, device=like.device) % period).float() * (2 * torch.pi / period)

    rows, cols = angles(height)[:, None].expand(height, width), angles(width)[None, :].expand(height, width)
    return torch.stack([rows.sin(), rows.cos(), cols.sin(), cols.cos()])[None].to(like.dtype)


class ResBlock2d(nn.Module):
    """x + Conv(SiLU(Conv(SiLU(x)))), 3x3, per frame."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


class LumaFilter(nn.Module):
    """Corrects the decoded frames' luma, frame by frame (so streaming stays exact): the luma, pixel-unshuffled
    by 4 (16 channels at a quarter of the resolution), and its block phase (4 channels) -> 3x3 conv to `width`
    channels -> `blocks` residual blocks -> 3x3 conv to 16 channels -> pixel shuffle: one step per pixel, added
    to R, G and B alike. Chroma is left to the decoder. The last conv starts at zero (the filter is the
    identity until trained)."""

    scale = 4

    def __init__(self, width: int, blocks: int, cell: int) -> None:
        super().__init__()
        r = self.scale
        self.period = cell // r  # a latent cell's side in the unshuffled grid
        self.conv_in = nn.Conv2d(r * r + 4, width, 3, padding=1)
        self.blocks = nn.ModuleList(ResBlock2d(width) for _ in range(blocks))
        self.conv_out = nn.Conv2d(width, r * r, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @property
    def width(self) -> int:
        return self.conv_in.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, 3, T, H, W), H and W multiples of the cell
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)  # (N, 3, H, W)
        u = F.pixel_unshuffle(luma(frames), self.scale)  # (N, 16, H/4, W/4)
        phase = block_phase(u.shape[-2], u.shape[-1], self.period, u).expand(u.shape[0], -1, -1, -1)
        hid = self.conv_in(torch.cat([u, phase], 1))  # (N, width, H/4, W/4)
        for block in self.blocks:
            hid = block(hid)
        step = F.pixel_shuffle(self.conv_out(F.silu(hid)), self.scale)  # (N, 1, H, W)
        return x + step.reshape(b, t, 1, h, w).transpose(1, 2)
