"""DC-AE-V, the deep-compression video autoencoder of DC-VideoGen (arXiv 2509.25182, Sec. 3).

Encoder: space-to-channel input projection -> 3D ResNet stages, each but the last followed by a
down-sampling block (space x2, or time x4 before the last stage) with an averaging shortcut -> output
projection to the latent. Decoder: the mirror image, with duplicating shortcuts, and RMS norm + SiLU
before the output projection. Every convolution is 3x3x3; its temporal padding follows the temporal
mode (chunk-causal by default, Sec. 3.2): bidirectional inside chunks of `chunk_size` frames, causal
across chunks, so a clip of any length can be processed chunk after chunk with a per-layer cache and
give exactly the one-shot result.

Frame and size policy (`encode`): a clip of T frames and H x W pixels is padded at the end, by
repeating its last frame, to a multiple of `frame_multiple` frames (the chunk size in chunk-causal mode,
else the temporal factor), and at the bottom/right, by repeating the edge pixels, to a multiple of the
spatial factor. `decode(z, num_frames=, height=, width=)` and `forward` crop back, so a
reconstruction has exactly the input's shape. This is the official release's padding for frames
(its `reconstruct_video` pads with the last frame to a multiple of 40).

Memory policy: a clip is run one piece (`stream_frames` frames) at a time, and a piece in square tiles
when it would not fit the memory budget. The padding is applied piece by piece and tile by tile, so a
single 12000x12000 image is never copied into a whole padded chunk at full resolution; what a piece needs
(activations of a tile, the context carried to the next piece, the blended output) is estimated before
any work (`memory_needed`), and at inference a piece that does not fit even in the smallest tiles is
refused with a DCVGError naming the memory it needs (under autograd the smallest tiles are used).

Input checks (`encode`, `decode`, the stream iterators): DCVGError (a ValueError) for a wrong rank or
channel count, zero frames or pixels, and NaN or Inf values (one min/max pass over the input).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput, EncoderOutput
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ...errors import DCVGError
from .config import PRESETS, DCAEVConfig, TemporalMode, get_preset
from .layers import Downsample3d, ResBlock3d, RMSNorm3d, TemporalCache, TemporalConv3d, Upsample3d
from .ops import TemporalPadding, channel_to_space_time, space_time_to_channel
from .tiling import Tile, TileBlender, host_memory_available, plan_tiles, tile_spans

logger = logging.getLogger("dcvg")

# ---- helpers ------------------------------------------------------------------------------------------


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


def check_finite(x: torch.Tensor, what: str) -> None:
    """Raise DCVGError when x (B, C, T, H, W) holds NaN or Inf: one min/max pass, counted when it fails."""
    if not x.is_floating_point() or x.numel() == 0:
        return
    lo, hi = torch.aminmax(x)  # NaN propagates to both
    if math.isfinite(lo.item()) and math.isfinite(hi.item()):
        return
    per_frame = [int((~torch.isfinite(x[:, :, t])).sum()) for t in range(x.shape[2])]
    first = next(t for t, n in enumerate(per_frame) if n)
    raise DCVGError(
        f"{what} of shape {tuple(x.shape)} has {sum(per_frame)} non-finite values (NaN or Inf), the first "
        f"in frame {first}; replace them (e.g. torch.nan_to_num) or fix what produced them"
    )


def _padding(cfg: DCAEVConfig, frame_rate_divisor: int) -> TemporalPadding:
    """Temporal padding of a layer running at 1/`frame_rate_divisor` of the input frame rate."""
    return TemporalPadding.for_mode(cfg.temporal_mode, cfg.kernel_size, cfg.chunk_size // frame_rate_divisor)


# ---- blocks ---------------------------------------------------------------------------------------------


class EncoderStage(nn.Module):
    def __init__(self, cfg: DCAEVConfig, index: int) -> None:
        super().__init__()
        last = index == cfg.num_stages - 1
        pad = _padding(cfg, cfg.temporal_compression if last else 1)
        width = cfg.block_out_channels[index]
        self.blocks = nn.ModuleList(
            ResBlock3d(width, cfg.kernel_size, pad, cfg.norm_eps) for _ in range(cfg.layers_per_block[index])
        )
        self.downsample = None
        if cfg.has_resample(index):
            s, t = cfg.resample_factors(index)
            # The down-sampling convolution runs before the rearrangement, at this stage's frame rate.
            self.downsample = Downsample3d(
                width, cfg.block_out_channels[index + 1], s, t, cfg.kernel_size, pad
            )


class DecoderStage(nn.Module):
    def __init__(self, cfg: DCAEVConfig, index: int) -> None:
        super().__init__()
        last = index == cfg.num_stages - 1
        width = cfg.block_out_channels[index]
        self.upsample = None
        if cfg.has_resample(index):
            s, t = cfg.resample_factors(index)
            # The up-sampling convolution runs on the input of the rearrangement, at the next stage's rate.
            up_pad = _padding(cfg, cfg.temporal_compression if index + 1 == cfg.num_stages - 1 else 1)
            self.upsample = Upsample3d(
                cfg.block_out_channels[index + 1], width, s, t, cfg.kernel_size, up_pad
            )
        pad = _padding(cfg, cfg.temporal_compression if last else 1)
        self.blocks = nn.ModuleList(
            ResBlock3d(width, cfg.kernel_size, pad, cfg.norm_eps) for _ in range(cfg.layers_per_block[index])
        )


def _run_blocks(
    owner: nn.Module, blocks: nn.ModuleList, x: torch.Tensor, cache: TemporalCache | None
) -> torch.Tensor:
    for block in blocks:
        if cache is None and torch.is_grad_enabled() and getattr(owner, "gradient_checkpointing", False):
            x = owner._gradient_checkpointing_func(block, x)
        else:
            x = block(x, cache)
    return x


class Encoder(nn.Module):
    def __init__(self, cfg: DCAEVConfig) -> None:
        super().__init__()
        self.gradient_checkpointing = False
        full = _padding(cfg, 1)
        self.conv_in = TemporalConv3d(cfg.in_channels, cfg.first_width // 4, cfg.kernel_size, full)
        self.stages = nn.ModuleList(EncoderStage(cfg, i) for i in range(cfg.num_stages))
        latent = _padding(cfg, cfg.temporal_compression)
        self.conv_out = TemporalConv3d(
            cfg.block_out_channels[-1], cfg.latent_channels, cfg.kernel_size, latent
        )

    def forward(self, x: torch.Tensor, cache: TemporalCache | None = None) -> torch.Tensor:
        # x: (B, 3, T, H, W) with T, H, W multiples of the chunk / spatial factor
        x = space_time_to_channel(self.conv_in(x, cache), 2, 1)  # (B, C0, T, H/2, W/2)
        for stage in self.stages:
            x = _run_blocks(self, stage.blocks, x, cache)
            if stage.downsample is not None:
                x = stage.downsample(x, cache)  # (B, C_next, T/t, H/s, W/s)
        return self.conv_out(x, cache)  # (B, Z, T/4, H/f, W/f)


class Decoder(nn.Module):
    def __init__(self, cfg: DCAEVConfig) -> None:
        super().__init__()
        self.gradient_checkpointing = False
        latent = _padding(cfg, cfg.temporal_compression)
        self.conv_in = TemporalConv3d(
            cfg.latent_channels, cfg.block_out_channels[-1], cfg.kernel_size, latent
        )
        self.stages = nn.ModuleList(DecoderStage(cfg, i) for i in range(cfg.num_stages))
        self.norm_out = RMSNorm3d(cfg.first_width, cfg.norm_eps)
        self.conv_out = TemporalConv3d(
            cfg.first_width, cfg.in_channels * 4, cfg.kernel_size, _padding(cfg, 1)
        )

    def forward(self, z: torch.Tensor, cache: TemporalCache | None = None) -> torch.Tensor:
        # z: (B, Z, T', h, w)
        x = self.conv_in(z, cache)  # (B, C_last, T', h, w)
        for stage in reversed(self.stages):
            if stage.upsample is not None:
                x = stage.upsample(x, cache)  # (B, C_prev, T'*t, h*s, w*s)
            x = _run_blocks(self, stage.blocks, x, cache)
        x = F.silu(self.norm_out(x))
        return channel_to_space_time(self.conv_out(x, cache), 2, 1)  # (B, 3, T, H, W)


# ---- memory plan ----------------------------------------------------------------------------------------

GIB = 2**30


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one piece allocates while it is encoded or decoded (the caller's input and the weights aside)."""

    working: int  # activations of one tile (or the whole frame) and its padded input
    context: int  # frames carried to the next piece by every temporal convolution, over all tiles
    output: int  # the blended (or cropped) output of the piece

    @property
    def total(self) -> int:
        return self.working + self.context + self.output

    def describe(self) -> str:
        parts = [f"{self.working / GIB:.2f} GiB of activations"]
        if self.context:
            parts.append(f"{self.context / GIB:.2f} GiB of context carried between chunks")
        parts.append(f"{self.output / GIB:.2f} GiB of output")
        return ", ".join(parts)


@dataclass
class _Stream:
    """One clip run piece after piece: its tile plan (made at the first piece) and the per-tile caches.

    `partner` is the decoder of a reconstruction: planned together with the encoder, before any work.
    """

    decoder: bool
    plan: tuple[int, int] | None = None
    planned: bool = False
    caches: dict = field(default_factory=dict)
    partner: _Stream | None = None


# ---- the model ------------------------------------------------------------------------------------------


class AutoencoderDCV(ModelMixin, ConfigMixin):
    r"""DC-AE-V video autoencoder (diffusers `ModelMixin` + `ConfigMixin`).

    `encode` / `decode` work on raw latents; pipelines move them to diffusion space with
    `config.scaling_factor` in one place (`dcvideogen.models.dcae_v.latents`). Runtime options, not
    saved with the weights: streaming (on by default, chunk after chunk with a per-layer cache;
    constant memory in the clip length, same result as one shot), spatial tiling (`enable_tiling`, and
    switched on automatically when a piece would need more than `memory_budget` bytes; None: 60% of the
    free GPU memory, or on the CPU the smaller of half the RAM and 80% of what this process can still
    allocate, see `tiling.host_memory_available`).
    """

    _supports_gradient_checkpointing = True
    _no_split_modules: ClassVar[list[str]] = ["ResBlock3d"]

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        latent_channels: int = 32,
        block_out_channels: tuple[int, ...] = PRESETS["dc-ae-v-f32t4c32"].block_out_channels,
        layers_per_block: tuple[int, ...] = PRESETS["dc-ae-v-f32t4c32"].layers_per_block,
        temporal_compression: int = 4,
        temporal_mode: str = "chunk_causal",
        chunk_size: int = 40,
        kernel_size: int = 3,
        norm_eps: float = 1e-5,
        scaling_factor: float = 1.0,
    ) -> None:
        super().__init__()
        self.arch = DCAEVConfig(
            in_channels=in_channels,
            latent_channels=latent_channels,
            block_out_channels=tuple(block_out_channels),
            layers_per_block=tuple(layers_per_block),
            temporal_compression=temporal_compression,
            temporal_mode=TemporalMode(temporal_mode),
            chunk_size=chunk_size,
            kernel_size=kernel_size,
            norm_eps=norm_eps,
            scaling_factor=scaling_factor,
        )
        self.encoder = Encoder(self.arch)
        self.decoder = Decoder(self.arch)
        # Runtime options (see enable_streaming / enable_tiling / memory_budget).
        self.use_streaming = self.arch.temporal_mode is not TemporalMode.NON_CAUSAL
        self.stream_frames = (
            self.arch.frame_multiple
            if self.arch.temporal_mode is TemporalMode.CHUNK_CAUSAL
            else self.arch.chunk_size
        )
        self.use_slicing = False
        self.use_tiling = False
        self.tile_size = 256
        self.tile_overlap = 64
        self.memory_budget: int | None = None
        self.last_run_tiled = False

    # ---- construction ------------------------------------------------------------------------------
    @classmethod
    def from_arch(cls, cfg: DCAEVConfig) -> AutoencoderDCV:
        d = cfg.to_dict()
        return cls(**d)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> AutoencoderDCV:
        """A randomly initialised model of preset `name` (``dc-ae-v-f32t4c32`` ...)."""
        return cls.from_arch(get_preset(name, **overrides))

    @property
    def spatial_compression_ratio(self) -> int:
        return self.arch.spatial_compression

    @property
    def temporal_compression_ratio(self) -> int:
        return self.arch.temporal_compression

    # ---- runtime options ---------------------------------------------------------------------------
    def enable_streaming(self, frames: int | None = None) -> None:
        """Encode/decode `frames` input frames at a time (default: one chunk), carrying context between pieces."""
        if self.arch.temporal_mode is TemporalMode.NON_CAUSAL:
            raise ValueError("a non_causal DC-AE-V sees the whole clip at once and cannot stream")
        frames = frames or self.stream_frames
        if frames % self.arch.frame_multiple:
            raise ValueError(
                f"stream piece of {frames} frames must be a multiple of {self.arch.frame_multiple}"
            )
        self.use_streaming, self.stream_frames = True, frames

    def disable_streaming(self) -> None:
        self.use_streaming = False

    def enable_slicing(self) -> None:
        """Encode / decode / reconstruct a batch one video at a time (diffusers' `enable_slicing`).

        The output is allocated once and each video written into it, so memory beyond the output is that of
        one video. Equal to the batched result up to float rounding, when both use the same tiles (the
        automatic tile plan is made for the batch size actually run, so a batch too large for the budget
        may be tiled where a single video is not).
        """
        self.use_slicing = True

    def disable_slicing(self) -> None:
        self.use_slicing = False

    def enable_tiling(
        self,
        tile_size: int | None = None,
        tile_overlap: int | None = None,
        *,
        tile_sample_min_height: int | None = None,
        tile_sample_min_width: int | None = None,
        tile_sample_stride_height: int | None = None,
        tile_sample_stride_width: int | None = None,
    ) -> None:
        """Always tile frames in `tile_size` pixel squares overlapping by `tile_overlap` (multiples of the
        spatial factor; default 256 and 64).

        Or with diffusers' keywords (AutoencoderKLWan, AutoencoderDC): tile size `tile_sample_min_*` and
        stride `tile_sample_stride_*` = tile size - overlap. A size or overlap left out takes the other
        axis' value, else the current setting (so the overlap is kept when no stride is given). Tiles are square: when height and width differ, the
        larger tile and the larger overlap are used (logged).
        """
        diffusers_style = {
            "tile_sample_min_height": tile_sample_min_height,
            "tile_sample_min_width": tile_sample_min_width,
            "tile_sample_stride_height": tile_sample_stride_height,
            "tile_sample_stride_width": tile_sample_stride_width,
        }
        given = {k: v for k, v in diffusers_style.items() if v is not None}
        if given:
            if tile_size is not None or tile_overlap is not None:
                raise ValueError(
                    f"enable_tiling: give tile_size / tile_overlap (got {tile_size} / {tile_overlap}) or the "
                    f"diffusers keywords ({', '.join(f'{k}={v}' for k, v in given.items())}), not both"
                )
            tile_size, tile_overlap = self._square_tiles(
                tile_sample_min_height,
                tile_sample_min_width,
                tile_sample_stride_height,
                tile_sample_stride_width,
            )
        tile_size = 256 if tile_size is None else tile_size
        tile_overlap = 64 if tile_overlap is None else tile_overlap
        f = self.spatial_compression_ratio
        if tile_size % f or tile_overlap % f or not 0 <= tile_overlap < tile_size:
            names = (
                ", ".join(f"{k}={v}" for k, v in given.items())
                if given
                else f"tile_size {tile_size} and tile_overlap {tile_overlap}"
            )
            raise ValueError(
                f"enable_tiling: {names} give tiles of {tile_size} pixels overlapping by {tile_overlap}; both "
                f"must be multiples of {f} with 0 <= overlap < size (stride between 1 and the tile size)"
            )
        self.use_tiling, self.tile_size, self.tile_overlap = True, tile_size, tile_overlap

    def _square_tiles(
        self,
        min_height: int | None,
        min_width: int | None,
        stride_height: int | None,
        stride_width: int | None,
    ) -> tuple[int, int]:
        """(tile_size, tile_overlap) of diffusers' tile keywords; see `enable_tiling`."""
        for axis, size, stride in (("height", min_height, stride_height), ("width", min_width, stride_width)):
            if stride is not None and not 0 < stride <= (size or stride):
                raise ValueError(
                    f"enable_tiling: tile_sample_stride_{axis}={stride} must be between 1 and "
                    f"tile_sample_min_{axis}={size} (the stride is the tile size less the overlap)"
                )
        min_height = min_height or min_width or self.tile_size
        min_width = min_width or min_height
        overlap_height = None if stride_height is None else min_height - stride_height
        overlap_width = None if stride_width is None else min_width - stride_width
        overlap_height = next(o for o in (overlap_height, overlap_width, self.tile_overlap) if o is not None)
        overlap_width = overlap_height if overlap_width is None else overlap_width
        for axis, size, overlap in (
            ("height", min_height, overlap_height),
            ("width", min_width, overlap_width),
        ):
            if not 0 <= overlap < size:
                raise ValueError(
                    f"enable_tiling: tile_sample_min_{axis}={size} with an overlap of {overlap} pixels gives a "
                    f"stride of {size - overlap}; the stride must be between 1 and the tile size"
                )
        tile, overlap = max(min_height, min_width), max(overlap_height, overlap_width)
        if (min_height, overlap_height) != (min_width, overlap_width):
            logger.warning(
                "DC-AE-V tiles are square: tiles of %dx%d pixels overlapping by %dx%d (height x width) run "
                "as %d-pixel tiles overlapping by %d",
                min_height, min_width, overlap_height, overlap_width, tile, overlap,
            )  # fmt: skip
        return tile, overlap

    def disable_tiling(self) -> None:
        self.use_tiling = False

    # ---- memory estimates ----------------------------------------------------------------------------
    def _convs(self, decoder: bool) -> Iterator[tuple[TemporalConv3d, int, int]]:
        """Every temporal convolution in execution order, with the spatial and temporal down-scaling of
        its input."""
        cfg, s, t = self.arch, 1, 1
        if not decoder:
            yield self.encoder.conv_in, 1, 1
            s = 2  # the input projection's space-to-channel
            for i, stage in enumerate(self.encoder.stages):
                for block in stage.blocks:
                    yield from ((block.conv1, s, t), (block.conv2, s, t))
                if stage.downsample is not None:
                    yield stage.downsample.conv, s, t
                    ds, dt = cfg.resample_factors(i)
                    s, t = s * ds, t * dt
            yield self.encoder.conv_out, s, t
            return
        s, t = self.spatial_compression_ratio, self.temporal_compression_ratio
        yield self.decoder.conv_in, s, t
        for i in reversed(range(cfg.num_stages)):
            stage = self.decoder.stages[i]
            if stage.upsample is not None:
                yield stage.upsample.conv, s, t
                ds, dt = cfg.resample_factors(i)
                s, t = s // ds, t // dt
            for block in stage.blocks:
                yield from ((block.conv1, s, t), (block.conv2, s, t))
        yield self.decoder.conv_out, s, t

    @property
    def _itemsize(self) -> int:
        return torch.finfo(self.dtype).bits // 8 if self.dtype.is_floating_point else 4

    def activation_bytes(
        self, frames: int, height: int, width: int, decoder: bool = False, batch: int = 1
    ) -> int:
        """Peak activation memory (bytes) of encoding or decoding one piece or tile at inference.

        The largest feature map (the input or output of a convolution, for the piece's frames and pixels)
        5 times: inside a residual block, its input, the convolution's input, its padded copy, its output
        and the convolution's own reordered copy are alive at once; plus, in half precision, the float32 map
        the RMS norm computes in. On the CPU, doubled for what the allocator keeps: glibc holds freed maps
        under 32 MB for reuse (measured: a resident peak of up to 8.9 maps in float32). On a GPU, PyTorch's
        caching allocator reuses freed blocks of any size; the budget (60% of the free memory) leaves room.
        """
        largest = 0.0
        for conv, s, t in self._convs(decoder):
            largest = max(largest, max(conv.in_channels, conv.out_channels) / (s * s * t))
        largest = max(largest, self.arch.in_channels)  # the input / reconstruction itself
        item = self._itemsize
        per_element = (5 * item + (4 if item < 4 else 0)) * (2 if self.device.type == "cpu" else 1)
        return int(largest * batch * frames * height * width) * per_element

    def context_bytes(self, height: int, width: int, decoder: bool = False, batch: int = 1) -> int:
        """Bytes every temporal convolution keeps for the next piece of a streamed clip (its last input
        frames)."""
        per_pixel = sum(
            conv.in_channels * conv.temporal_padding.left / (s * s)
            for conv, s, _ in self._convs(decoder)
            if conv.temporal_padding.carry
        )
        return int(per_pixel * batch * height * width * self._itemsize)

    def memory_needed(
        self,
        frames: int,
        height: int,
        width: int,
        decoder: bool = False,
        tile: tuple[int, int] | None = None,
        batch: int = 1,
        carry: bool = True,
        keep: int | None = None,
    ) -> MemoryEstimate:
        """What encoding (or decoding into) one piece of `frames` frames of height x width pixels allocates.

        `tile`: (size, overlap) in pixels, or None for the whole frame at once. `carry`: more pieces follow,
        so every tile keeps its context. `keep`: output frames kept from this piece (decoder; default all).
        The caller's input and the weights are not counted.
        """
        f = self.spatial_compression_ratio
        height, width = round_up(height, f), round_up(width, f)
        keep = frames if keep is None else min(keep, frames)
        rows, cols = (tile_spans(n, *tile, f) if tile else [(0, n)] for n in (height, width))
        th, tw = max(size for _, size in rows), max(size for _, size in cols)
        item, c = self._itemsize, self.arch.in_channels
        working = self.activation_bytes(frames, th, tw, decoder, batch)
        # Every tile keeps its own context, so overlaps count twice: the tiles' total area.
        area = sum(size for _, size in rows) * sum(size for _, size in cols)
        context = self.context_bytes(area, 1, decoder, batch) if carry else 0
        if decoder:  # float32 blend of the kept frames and its cast; or the cropped copy of the whole frame
            pixels = batch * c * keep * height * width
            output = (
                pixels * (4 + (item if item != 4 else 0)) if tile else (pixels * item if keep < frames else 0)
            )
        else:  # the input tile, padded; the float32 blend of the latent
            working += batch * c * frames * th * tw * item
            latent = batch * self.arch.latent_channels * (frames // self.temporal_compression_ratio)
            output = latent * (height // f) * (width // f) * (4 + item)
        return MemoryEstimate(working, context, output)

    def _budget(self) -> tuple[int, str]:
        """Bytes a piece may allocate, and where that number comes from (for messages)."""
        if self.memory_budget is not None:
            return self.memory_budget, "memory_budget"
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            return int(free * 0.6), f"60% of the free memory of {self.device}"
        try:
            half = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
        except (ValueError, OSError, AttributeError):
            half = 16 * GIB
        available, limit = host_memory_available()
        if half <= available * 0.8:
            return half, "half the RAM"
        return int(available * 0.8), f"80% of what this process can still allocate, set by {limit}"

    def _tile_candidates(self, height: int, width: int) -> Iterator[tuple[int, int]]:
        """(tile, overlap) in pixels, from 3/4 of the frame's longer side down to twice the spatial factor."""
        f = self.spatial_compression_ratio
        tile = round_up(max(height, width), f)
        while tile > 2 * f:
            tile = max(2 * f, min(tile - f, round_up(tile * 3 // 4, f)))  # shrink by >= 1/4, at least f
            overlap = max(f, (tile // 4) // f * f)
            yield tile, min(overlap, tile - f)

    def _plan(self, piece: dict, extra: int = 0) -> tuple[tuple[int, int] | None, MemoryEstimate]:
        """Tile plan of a piece described by `piece` (the arguments of `memory_needed`), and its estimate.

        None when the whole frame fits the budget (less `extra` bytes held by something else); raises
        DCVGError when even the smallest tiles (or the tiles asked for with `enable_tiling`) do not fit,
        except under autograd, where the smallest tiles are used.
        """
        budget, source = self._budget()
        budget -= extra
        longest = max(piece["height"], piece["width"])
        if self.use_tiling:
            plan = (self.tile_size, self.tile_overlap) if longest > self.tile_size else None
            candidates = [plan]
        else:
            whole = self.memory_needed(**piece)
            if whole.total <= budget:
                return None, whole
            candidates = list(self._tile_candidates(piece["height"], piece["width"])) or [None]
        for plan in candidates:
            need = self.memory_needed(**piece, tile=plan)
            if need.total <= budget or torch.is_grad_enabled():
                return plan, need
        raise DCVGError(self._too_large(piece, plan, need, budget, source, extra))

    def _too_large(
        self,
        piece: dict,
        plan: tuple[int, int] | None,
        need: MemoryEstimate,
        budget: int,
        source: str,
        extra: int,
    ) -> str:
        f = self.spatial_compression_ratio
        how = f"in {plan[0]}-pixel tiles" if plan else "in one piece"
        held = f", less {extra / GIB:.2f} GiB held by the other half of the autoencoder" if extra else ""
        smaller = ", or a clip of one chunk" if need.context else ""
        side = plan[0] if plan else max(piece["height"], piece["width"])
        tiles = " or smaller tiles (enable_tiling, dcvg --tile)" if self.use_tiling and side > 2 * f else ""
        return (
            f"{'decoding' if piece['decoder'] else 'encoding'} frames of {piece['width']}x{piece['height']} "
            f"pixels, {piece['batch']}x{piece['frames']} at a time, needs about {need.total / GIB:.2f} GiB "
            f"even {how} "
            f"({need.describe()}), more than the memory budget of {budget / GIB:.2f} GiB ({source}{held}); "
            f"use a smaller input (fewer pixels per frame{smaller}){tiles}, or raise memory_budget "
            "(dcvg --memory-budget GIB) if more memory is really free"
        )

    # ---- core: one piece of a clip, padded and optionally tiled in space -------------------------------
    def _piece_shape(self, x: torch.Tensor, decoder: bool, last: bool, keep: int | None) -> dict:
        """Arguments of `memory_needed` for the piece x (video, or latent for the decoder)."""
        f, tc = self.spatial_compression_ratio, self.temporal_compression_ratio
        b, _, t, h, w = x.shape
        if decoder:
            frames, h, w = t * tc, h * f, w * f
        else:
            frames = round_up(t, self.arch.frame_multiple)
        return dict(
            frames=frames, height=round_up(h, f), width=round_up(w, f), decoder=decoder,
            batch=b, carry=not last, keep=keep,
        )  # fmt: skip

    def _plan_stream(self, stream: _Stream, x: torch.Tensor, last: bool, keep: int | None) -> None:
        """Fix the tile plan of a stream (and its partner's) from its first piece, before any work."""
        piece = self._piece_shape(x, stream.decoder, last, keep)
        if stream.partner is None:
            stream.plan = self._plan(piece)[0]
        else:  # encoder and decoder of one reconstruction: each also holds the other's carried context
            other = dict(piece, decoder=True, keep=x.shape[2])
            extra = extra_other = 0
            for _ in range(8):  # contexts only grow as tiles shrink: stops at a fixed point
                (plan, need), (plan_other, need_other) = (
                    self._plan(piece, extra),
                    self._plan(other, extra_other),
                )
                if (extra, extra_other) == (need_other.context, need.context):
                    break
                extra, extra_other = need_other.context, need.context
            stream.plan, stream.partner.plan, stream.partner.planned = plan, plan_other, True
        stream.planned = True

    def _stream_piece(
        self, stream: _Stream, x: torch.Tensor, last: bool, keep: int | None = None
    ) -> torch.Tensor:
        """Run one piece of a clip with the stream's plan and caches; `last`: no piece follows."""
        if not stream.planned:
            self._plan_stream(stream, x, last, keep)
        caches = None if last and not stream.caches else stream.caches  # a clip of one piece: no context
        return self._run_piece(x, caches, stream.decoder, stream.plan, last, keep)

    def _run_piece(
        self,
        x: torch.Tensor,
        caches: dict | None,
        decoder: bool,
        plan: tuple[int, int] | None,
        last: bool,
        keep: int | None,
    ) -> torch.Tensor:
        """Encoder: video x (B, 3, t, H, W) -> latent, padded to whole chunks and the spatial factor tile by
        tile. Decoder: latent x (B, Z, t', h, w) -> video (B, 3, keep or 4t', f*h, f*w)."""
        net = self.decoder if decoder else self.encoder
        f = self.spatial_compression_ratio
        self.last_run_tiled = plan is not None
        h, w = x.shape[-2:]
        frames, height, width = self.padded_shape(x.shape[2], h, w)  # encoder input after padding

        def cache(key) -> TemporalCache | None:
            if caches is None:
                return None
            c = caches.setdefault(key, TemporalCache())
            c.store = not last  # the last piece only reads its context, and frees it as it goes
            return c

        if plan is None:
            if decoder:
                y = net(x.to(self.dtype), cache("full"))  # (B, 3, 4t', f*h, f*w)
                return y if keep is None or keep >= y.shape[2] else y[:, :, :keep].clone()
            return net(pad_to(x.to(self.dtype), frames, height, width), cache("full"))  # (B, Z, T', h', w')
        tile, overlap = plan
        if decoder:  # tiles in latent pixels, blended in output pixels
            tiles, scale = plan_tiles(h, w, tile // f, overlap // f, 1), f
            blender = TileBlender(h * f, w * f, ramp=overlap)
        else:  # tiles in (padded) input pixels, blended in latent pixels
            tiles, scale = plan_tiles(height, width, tile, overlap, f), 1
            blender = TileBlender(height // f, width // f, ramp=overlap // f)
        for t in tiles:
            if decoder:
                y = net(x[..., t.y : t.y + t.h, t.x : t.x + t.w].to(self.dtype), cache(t))
                y = y[:, :, :keep]
            else:
                y = net(padded_region(x, t, frames).to(self.dtype), cache(t))
            y0, x0 = (t.y * scale, t.x * scale) if decoder else (t.y // f, t.x // f)
            blender.add(Tile(y0, x0, y.shape[-2], y.shape[-1]), y)
        return blender.result(self.dtype)

    # ---- input checks ---------------------------------------------------------------------------------
    def _check_shape(self, x: torch.Tensor, latent: bool, what: str, frames_required: bool = True) -> None:
        c = self.arch.latent_channels if latent else self.arch.in_channels
        kind = f"a latent (B, {c}, T', h, w)" if latent else f"a video (B, {c}, T, H, W)"
        if not isinstance(x, torch.Tensor):
            raise DCVGError(f"{what}: expected {kind} tensor, got {type(x).__name__}")
        if x.dim() != 5 or x.shape[1] != c:
            raise DCVGError(f"{what}: expected {kind}, got shape {tuple(x.shape)}")
        if x.shape[0] == 0 or x.shape[3] == 0 or x.shape[4] == 0 or (frames_required and x.shape[2] == 0):
            raise DCVGError(
                f"{what}: shape {tuple(x.shape)} is empty; it needs at least one "
                f"{'latent frame' if latent else 'frame'} of at least 1x1 pixels"
            )

    def _check_pieces(
        self, pieces: Iterable[torch.Tensor], latent: bool, what: str, finite: bool = True
    ) -> Iterator[torch.Tensor]:
        """The pieces of one clip, checked as they come: same batch, channels and frame size; finite values
        (unless the caller checked them); at least one frame in all. Pieces of zero frames are skipped."""
        first: torch.Size | None = None
        frames = 0
        for i, x in enumerate(pieces):
            self._check_shape(x, latent, f"{what} piece {i}", frames_required=False)
            if first is None:
                first = x.shape
            elif (x.shape[0], *x.shape[3:]) != (first[0], *first[3:]):
                raise DCVGError(
                    f"{what} piece {i} has shape {tuple(x.shape)} but piece 0 had {tuple(first)}; all "
                    "pieces of a clip need the same batch size and frame size"
                )
            if x.shape[2] and finite:
                check_finite(x, f"{what} piece {i}")
            if x.shape[2]:
                frames += x.shape[2]
                yield x
        if not frames:
            got = "no pieces" if first is None else f"pieces of shape {tuple(first)}"
            raise DCVGError(f"{what}: the clip has no frames ({got})")

    def _check_crop(
        self, num_frames: int | None, height: int | None, width: int | None, z: torch.Tensor | None
    ) -> None:
        """num_frames / height / width of `decode`: positive, and within what the latent z decodes to."""
        f, tc = self.spatial_compression_ratio, self.temporal_compression_ratio
        full = (z.shape[2] * tc, z.shape[3] * f, z.shape[4] * f) if z is not None else (None, None, None)
        for name, value, most in zip(("num_frames", "height", "width"), (num_frames, height, width), full):
            if value is None:
                continue
            if value < 1 or (most is not None and value > most):
                bound = (
                    f" and at most {most} (what a latent of shape {tuple(z.shape)} decodes to)"
                    if most
                    else ""
                )
                raise DCVGError(f"decode: {name}={value} must be at least 1{bound}")

    # ---- streaming core -------------------------------------------------------------------------------
    def _encode_pieces(
        self, pieces: Iterable[torch.Tensor], stream: _Stream, whole: bool = False
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, bool]]:
        """Encode consecutive pieces (B, 3, t_i, H, W) `stream_frames` frames at a time.

        Yields (latent piece, the input frames it encodes, whether no piece follows). `whole`: `pieces` is
        the whole clip in one tensor, already checked. Otherwise the end is known when the input ends inside
        a piece (always for a clip shorter than one piece, an image); a clip ending exactly at a piece
        boundary is planned as if more could follow (the input is not read ahead).
        """
        size = self.stream_frames
        buffer: list[torch.Tensor] = []
        buffered = 0
        for x in self._check_pieces(pieces, latent=False, what="encode", finite=not whole):
            buffer.append(x)
            buffered += x.shape[2]
            while buffered >= size:
                clip = buffer[0] if len(buffer) == 1 else torch.cat(buffer, dim=2)  # (B, 3, >=size, H, W)
                piece, rest = clip[:, :, :size], clip[:, :, size:]
                buffer, buffered = ([rest] if rest.shape[2] else []), rest.shape[2]
                last = whole and not buffered
                yield self._stream_piece(stream, piece, last), piece, last
        if buffered:
            tail = buffer[0] if len(buffer) == 1 else torch.cat(buffer, dim=2)  # padded tile by tile
            yield self._stream_piece(stream, tail, last=True), tail, True

    def _decode_pieces(
        self, latents: Iterable[tuple[torch.Tensor, bool]], stream: _Stream, num_frames: int | None
    ) -> Iterator[torch.Tensor]:
        """Decode consecutive latent pieces, given with a flag that says no latent follows, `stream_frames`
        output frames at a time; stops after `num_frames` frames."""
        piece = self.stream_frames // self.temporal_compression_ratio
        emitted = 0

        def run(z: torch.Tensor, last: bool) -> torch.Tensor:
            nonlocal emitted
            keep = None if num_frames is None else num_frames - emitted
            if keep is not None and keep <= z.shape[2] * self.temporal_compression_ratio:
                last = True  # the frames asked for end in this piece
            x = self._stream_piece(stream, z, last, keep)
            emitted += x.shape[2]
            return x

        def wanted() -> bool:
            return num_frames is None or emitted < num_frames

        buffer: torch.Tensor | None = None
        for z, no_more in latents:
            buffer = z if buffer is None else torch.cat([buffer, z], dim=2)  # (B, Z, t', h, w)
            while buffer is not None and buffer.shape[2] >= piece and wanted():
                yield run(buffer[:, :, :piece], no_more and buffer.shape[2] == piece)
                buffer = buffer[:, :, piece:] if buffer.shape[2] > piece else None
            if not wanted():
                return
        if buffer is not None and wanted():
            yield run(buffer, True)

    # ---- public API ---------------------------------------------------------------------------------
    def padded_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """Shape (T, H, W) a clip is padded to before encoding."""
        f = self.spatial_compression_ratio
        return round_up(num_frames, self.arch.frame_multiple), round_up(height, f), round_up(width, f)

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(Z, T', h, w) of the latent of a clip of (num_frames, height, width)."""
        t, h, w = self.padded_shape(num_frames, height, width)
        f = self.spatial_compression_ratio
        return self.arch.latent_channels, t // self.temporal_compression_ratio, h // f, w // f

    def _one_shot(self) -> bool:
        """Whole clip at once: under autograd (so gradient checkpointing applies) or when streaming is off."""
        return not self.use_streaming or torch.is_grad_enabled()

    def encode(self, x: torch.Tensor, return_dict: bool = True) -> EncoderOutput | tuple[torch.Tensor]:
        """(B, 3, T, H, W) in [-1, 1] -> raw latent (B, Z, T'/4, H'/f, W'/f) of the padded clip.

        Raises DCVGError (a ValueError) for a wrong shape, zero frames or pixels, or NaN / Inf values
        (checked with one min/max pass, cheap next to the network).
        """
        self._check_shape(x, latent=False, what="encode")
        check_finite(x, "encode: the video")
        slicing = self.use_slicing and x.shape[0] > 1
        if self._one_shot() and not slicing:
            z = self._stream_piece(_Stream(decoder=False), x, last=True)
            return EncoderOutput(latent=z) if return_dict else (z,)
        # One output, written piece by piece (and video by video when slicing): no concatenation.
        z = x.new_empty((x.shape[0], *self.latent_shape(*x.shape[2:])), dtype=self.dtype)  # (B, Z, T', h, w)
        for i in range(x.shape[0]) if slicing else [None]:
            batch = slice(None) if i is None else slice(i, i + 1)
            self._encode_into(x[batch], z[batch])
        return EncoderOutput(latent=z) if return_dict else (z,)

    def _encode_into(self, x: torch.Tensor, out: torch.Tensor) -> None:
        """Encode x (b, 3, T, H, W) into `out` (b, Z, T', h, w), one stream piece at a time."""
        stream = _Stream(decoder=False)
        if self._one_shot():
            out.copy_(self._stream_piece(stream, x, last=True))
            return
        start = 0
        for z, _, _ in self._encode_pieces([x], stream, whole=True):
            out[:, :, start : start + z.shape[2]] = z  # (b, Z, t', h, w)
            start += z.shape[2]
        assert start == out.shape[2], f"encoded {start} latent frames into {tuple(out.shape)}"

    def decode(
        self,
        z: torch.Tensor,
        return_dict: bool = True,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
    ) -> DecoderOutput | tuple[torch.Tensor]:
        """Raw latent (B, Z, T', h, w) -> video (B, 3, 4T', f*h, f*w), cropped to the given size if any.

        Raises DCVGError (a ValueError) for a latent of the wrong rank, channel count or an empty one, NaN /
        Inf values, and a crop outside 1..the decoded size.
        """
        self._check_shape(z, latent=True, what="decode")
        check_finite(z, "decode: the latent")
        self._check_crop(num_frames, height, width, z)
        slicing = self.use_slicing and z.shape[0] > 1
        if self._one_shot() and not slicing:
            x = self._stream_piece(_Stream(decoder=True), z, last=True, keep=num_frames)
            x = x[:, :, :num_frames, :height, :width]
            return DecoderOutput(sample=x) if return_dict else (x,)
        # One output of the cropped size, written piece by piece (and video by video when slicing): the
        # peak is the output and one piece, whatever the clip's length.
        f, tc = self.spatial_compression_ratio, self.temporal_compression_ratio
        b, _, t, h, w = z.shape
        shape = (b, self.arch.in_channels, num_frames or t * tc, height or h * f, width or w * f)
        x = z.new_empty(shape, dtype=self.dtype)  # (B, 3, T, H, W)
        for i in range(b) if slicing else [None]:
            batch = slice(None) if i is None else slice(i, i + 1)
            self._decode_into(z[batch], x[batch], num_frames)
        return DecoderOutput(sample=x) if return_dict else (x,)

    def _decode_into(self, z: torch.Tensor, out: torch.Tensor, num_frames: int | None) -> None:
        """Decode z (b, Z, T', h, w) into `out` (b, 3, T, H, W), cropping each piece to out's frame size."""
        stream = _Stream(decoder=True)
        height, width = out.shape[-2:]
        if self._one_shot():
            out.copy_(
                self._stream_piece(stream, z, last=True, keep=num_frames)[:, :, :num_frames, :height, :width]
            )
            return
        start = 0
        for x in self._decode_pieces(_with_last(self._latent_chunks(z)), stream, num_frames):
            out[:, :, start : start + x.shape[2]] = x[..., :height, :width]  # (b, 3, t, H, W)
            start += x.shape[2]
        assert start == out.shape[2], f"decoded {start} frames into {tuple(out.shape)}"

    def forward(self, sample: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple[torch.Tensor]:
        """Reconstruction with exactly the input's shape."""
        self._check_shape(sample, latent=False, what="forward")
        t, h, w = sample.shape[2:]
        z = self.encode(sample).latent
        return self.decode(z, return_dict=return_dict, num_frames=t, height=h, width=w)

    def _latent_chunks(self, z: torch.Tensor) -> list[torch.Tensor]:
        piece = self.stream_frames // self.temporal_compression_ratio
        return [z[:, :, s : s + piece] for s in range(0, z.shape[2], piece)]

    # ---- streaming iterators -----------------------------------------------------------------------
    def _require_streaming_mode(self) -> None:
        if self.arch.temporal_mode is TemporalMode.NON_CAUSAL:
            raise ValueError("a non_causal DC-AE-V sees the whole clip at once and cannot stream")

    def encode_stream(self, pieces: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        """Encode a clip given as consecutive pieces (B, 3, t_i, H, W) of any lengths.

        Yields latent pieces (B, Z, stream_frames/4, h, w) as soon as enough frames have arrived; the
        tail is padded like `encode`. Concatenated, they equal `encode` of the whole clip. Checks the pieces
        as `encode` does (DCVGError), and raises DCVGError for a clip without frames.
        """
        self._require_streaming_mode()
        for z, _, _ in self._encode_pieces(pieces, _Stream(decoder=False)):
            yield z

    def reconstruct_stream(
        self, pieces: Iterable[torch.Tensor]
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Reconstruct a clip given as consecutive pieces (B, 3, t_i, H, W); yields (input, reconstruction)
        pairs of equal shape, covering the clip in order, with memory independent of its length.

        The memory of the encoder and the decoder is planned together at the first piece: a clip too large
        for the budget is refused (DCVGError) before any work.
        """
        if self.arch.temporal_mode is TemporalMode.NON_CAUSAL:  # sees the whole clip at once
            checked = list(self._check_pieces(pieces, latent=False, what="reconstruct"))
            clip = checked[0] if len(checked) == 1 else torch.cat(checked, dim=2)
            yield clip, self(clip).sample.to(clip.dtype)
            return
        decoder = _Stream(decoder=True)
        encoder = _Stream(decoder=False, partner=decoder)
        for z, orig, last in self._encode_pieces(pieces, encoder):
            h, w = orig.shape[-2:]
            recon = self._stream_piece(decoder, z, last, keep=orig.shape[2])  # (B, 3, t, H', W')
            yield orig, recon[:, :, : orig.shape[2], :h, :w].to(orig.dtype)

    def decode_stream(
        self,
        latents: torch.Tensor | Iterable[torch.Tensor],
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
    ) -> Iterator[torch.Tensor]:
        """Decode a latent, or consecutive latent pieces of any lengths, `stream_frames` frames at a time.

        Yields video pieces cropped to `height` x `width`, stopping after `num_frames` frames when given.
        Concatenated, they equal `decode` of the whole latent. Checks the latent as `decode` does.
        """
        self._require_streaming_mode()
        whole = latents if isinstance(latents, torch.Tensor) else None
        if whole is not None:
            self._check_shape(whole, latent=True, what="decode_stream")
        self._check_crop(num_frames, height, width, whole)

        def checked() -> Iterator[torch.Tensor]:
            pieces = self._latent_chunks(whole) if whole is not None else latents
            for i, z in enumerate(self._check_pieces(pieces, latent=True, what="decode_stream")):
                if i == 0:
                    self._check_crop(None, height, width, z)  # the frame size, known at the first piece
                yield z.to(self.dtype)

        for x in self._decode_pieces(_with_last(checked()), _Stream(decoder=True), num_frames):
            yield x[..., :height, :width]


def _with_last(items: Iterable) -> Iterator[tuple]:
    """(item, whether it is the last one), looking one item ahead."""
    it = iter(items)
    try:
        prev = next(it)
    except StopIteration:
        return
    for item in it:
        yield prev, False
        prev = item
    yield prev, True
