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
refused with a DCVGError naming the memory it needs (under autograd the smallest tiles are used). The
estimates and the tile plan are in `planning.py`, the piece runner and the input checks in `runner.py`.

Input checks (`encode`, `decode`, the stream iterators): DCVGError (a ValueError) for a wrong rank or
channel count, zero frames or pixels, and NaN or Inf values (one min/max pass over the input).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import ClassVar

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput, EncoderOutput
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from . import planning, runner
from .config import PRESETS, DCAEVConfig, TemporalMode, get_preset
from .layers import (
    Downsample3d,
    LumaFilter,
    ResBlock3d,
    RMSNorm3d,
    TemporalCache,
    TemporalConv3d,
    Upsample3d,
)
from .ops import (  # noqa: F401 (pad_to, pad_video, padded_region: still importable from here)
    TemporalPadding,
    channel_to_space_time,
    pad_to,
    pad_video,
    padded_region,
    round_up,
    space_time_to_channel,
)
from .planning import GIB, MemoryEstimate  # noqa: F401 (GIB: still importable from here)
from .runner import Stream, check_finite, with_last

logger = logging.getLogger("dcvg")

# ---- helpers ------------------------------------------------------------------------------------------


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
        self.factors = cfg.spatial_compression, cfg.temporal_compression
        f, t = self.factors
        self.patch_in = (
            nn.Conv3d(cfg.in_channels * t * f * f, cfg.latent_channels, 1) if cfg.patch_shortcut else None
        )

    def forward(self, x: torch.Tensor, cache: TemporalCache | None = None) -> torch.Tensor:
        # x: (B, 3, T, H, W) with T, H, W multiples of the chunk / spatial factor
        pixels = x
        x = space_time_to_channel(self.conv_in(x, cache), 2, 1)  # (B, C0, T, H/2, W/2)
        for stage in self.stages:
            x = _run_blocks(self, stage.blocks, x, cache)
            if stage.downsample is not None:
                x = stage.downsample(x, cache)  # (B, C_next, T/t, H/s, W/s)
        z = self.conv_out(x, cache)  # (B, Z, T/4, H/f, W/f)
        if self.patch_in is not None:  # each cell's own pixel block (B, 3*t*f*f, T/4, H/f, W/f), linearly
            z = z + self.patch_in(space_time_to_channel(pixels, *self.factors))
        return z


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
        self.factors = cfg.spatial_compression, cfg.temporal_compression
        f, t = self.factors
        k = cfg.patch_shortcut_kernel  # (1, k, k): space only, so streaming stays exact
        self.patch_out = (
            nn.Conv3d(
                cfg.latent_channels,
                cfg.in_channels * t * f * f,
                (1, k, k),
                padding=(0, k // 2, k // 2),
                padding_mode="replicate",
            )
            if cfg.patch_shortcut
            else None
        )
        self.luma_filter = (
            LumaFilter(cfg.luma_filter_width, cfg.luma_filter_blocks, f) if cfg.luma_filter_width else None
        )

    def forward(self, z: torch.Tensor, cache: TemporalCache | None = None) -> torch.Tensor:
        # z: (B, Z, T', h, w)
        x = self.conv_in(z, cache)  # (B, C_last, T', h, w)
        for stage in reversed(self.stages):
            if stage.upsample is not None:
                x = stage.upsample(x, cache)  # (B, C_prev, T'*t, h*s, w*s)
            x = _run_blocks(self, stage.blocks, x, cache)
        x = F.silu(self.norm_out(x))
        x = channel_to_space_time(self.conv_out(x, cache), 2, 1)  # (B, 3, T, H, W)
        if self.patch_out is not None:  # each cell's pixel block from its k x k neighbourhood, linearly
            x = x + channel_to_space_time(self.patch_out(z), *self.factors)
        if self.luma_filter is not None:  # per frame: the decoded luma corrected, chroma kept
            x = self.luma_filter(x)
        return x


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
        patch_shortcut: bool = False,
        patch_shortcut_kernel: int = 1,
        luma_filter_width: int = 0,
        luma_filter_blocks: int = 6,
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
            patch_shortcut=patch_shortcut,
            patch_shortcut_kernel=patch_shortcut_kernel,
            luma_filter_width=luma_filter_width,
            luma_filter_blocks=luma_filter_blocks,
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

    # ---- memory estimates (planning.py) -------------------------------------------------------------
    def activation_bytes(
        self, frames: int, height: int, width: int, decoder: bool = False, batch: int = 1
    ) -> int:
        """Peak activation memory (bytes) of encoding or decoding one piece or tile at inference; see
        `planning.activation_bytes`."""
        return planning.activation_bytes(self, frames, height, width, decoder, batch)

    def context_bytes(self, height: int, width: int, decoder: bool = False, batch: int = 1) -> int:
        """Bytes every temporal convolution keeps for the next piece of a streamed clip (its last input
        frames); see `planning.context_bytes`."""
        return planning.context_bytes(self, height, width, decoder, batch)

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
        The caller's input and the weights are not counted. See `planning.memory_needed`.
        """
        return planning.memory_needed(self, frames, height, width, decoder, tile, batch, carry, keep)

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

    def encode(self, x: torch.Tensor, return_dict: bool = True) -> EncoderOutput | tuple[torch.Tensor]:
        """(B, 3, T, H, W) in [-1, 1] -> raw latent (B, Z, T'/4, H'/f, W'/f) of the padded clip.

        Raises DCVGError (a ValueError) for a wrong shape, zero frames or pixels, or NaN / Inf values
        (checked with one min/max pass, cheap next to the network).
        """
        runner.check_shape(self.arch, x, latent=False, what="encode")
        check_finite(x, "encode: the video")
        slicing = self.use_slicing and x.shape[0] > 1
        if runner.one_shot(self) and not slicing:
            z = runner.stream_piece(self, Stream(decoder=False), x, last=True)
            return EncoderOutput(latent=z) if return_dict else (z,)
        # One output, written piece by piece (and video by video when slicing): no concatenation.
        z = x.new_empty((x.shape[0], *self.latent_shape(*x.shape[2:])), dtype=self.dtype)  # (B, Z, T', h, w)
        for i in range(x.shape[0]) if slicing else [None]:
            batch = slice(None) if i is None else slice(i, i + 1)
            runner.encode_into(self, x[batch], z[batch])
        return EncoderOutput(latent=z) if return_dict else (z,)

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
        runner.check_shape(self.arch, z, latent=True, what="decode")
        check_finite(z, "decode: the latent")
        runner.check_crop(self.arch, num_frames, height, width, z)
        slicing = self.use_slicing and z.shape[0] > 1
        if runner.one_shot(self) and not slicing:
            x = runner.stream_piece(self, Stream(decoder=True), z, last=True, keep=num_frames)
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
            runner.decode_into(self, z[batch], x[batch], num_frames)
        return DecoderOutput(sample=x) if return_dict else (x,)

    def forward(self, sample: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple[torch.Tensor]:
        """Reconstruction with exactly the input's shape."""
        runner.check_shape(self.arch, sample, latent=False, what="forward")
        t, h, w = sample.shape[2:]
        z = self.encode(sample).latent
        return self.decode(z, return_dict=return_dict, num_frames=t, height=h, width=w)

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
        for z, _, _ in runner.encode_pieces(self, pieces, Stream(decoder=False)):
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
            checked = list(runner.check_pieces(self.arch, pieces, latent=False, what="reconstruct"))
            clip = checked[0] if len(checked) == 1 else torch.cat(checked, dim=2)
            yield clip, self(clip).sample.to(clip.dtype)
            return
        decoder = Stream(decoder=True)
        encoder = Stream(decoder=False, partner=decoder)
        for z, orig, last in runner.encode_pieces(self, pieces, encoder):
            h, w = orig.shape[-2:]
            recon = runner.stream_piece(self, decoder, z, last, keep=orig.shape[2])  # (B, 3, t, H', W')
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
            runner.check_shape(self.arch, whole, latent=True, what="decode_stream")
        runner.check_crop(self.arch, num_frames, height, width, whole)

        def checked() -> Iterator[torch.Tensor]:
            pieces = runner.latent_chunks(self, whole) if whole is not None else latents
            for i, z in enumerate(runner.check_pieces(self.arch, pieces, latent=True, what="decode_stream")):
                if i == 0:  # the frame size, known at the first piece
                    runner.check_crop(self.arch, None, height, width, z)
                yield z.to(self.dtype)

        for x in runner.decode_pieces(self, with_last(checked()), Stream(decoder=True), num_frames):
            yield x[..., :height, :width]
