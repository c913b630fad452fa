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
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import ClassVar

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput, EncoderOutput
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .config import PRESETS, DCAEVConfig, TemporalMode, get_preset
from .layers import Downsample3d, ResBlock3d, RMSNorm3d, TemporalCache, TemporalConv3d, Upsample3d
from .ops import TemporalPadding, channel_to_space_time, space_time_to_channel
from .tiling import TileBlender, plan_tiles

# ---- helpers ------------------------------------------------------------------------------------------


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def pad_video(x: torch.Tensor, frame_multiple: int, spatial_multiple: int) -> torch.Tensor:
    """Replicate-pad (B, C, T, H, W) at the end of time and the bottom/right of space to the multiples."""
    t, h, w = x.shape[2:]
    pt, ph, pw = (
        round_up(t, frame_multiple) - t,
        round_up(h, spatial_multiple) - h,
        round_up(w, spatial_multiple) - w,
    )
    if pt:
        x = torch.cat([x, x[:, :, -1:].expand(-1, -1, pt, -1, -1)], dim=2)
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph, 0, 0), mode="replicate")
    return x


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


# ---- the model ------------------------------------------------------------------------------------------


class AutoencoderDCV(ModelMixin, ConfigMixin):
    r"""DC-AE-V video autoencoder (diffusers `ModelMixin` + `ConfigMixin`).

    `encode` / `decode` work on raw latents; pipelines move them to diffusion space with
    `config.scaling_factor` in one place (`dcvideogen.models.dcae_v.latents`). Runtime options, not
    saved with the weights: streaming (on by default, chunk after chunk with a per-layer cache;
    constant memory in the clip length, same result as one shot), spatial tiling (`enable_tiling`, and
    switched on automatically when a piece would exceed `memory_budget` bytes of activations).
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

    def enable_tiling(self, tile_size: int = 256, tile_overlap: int = 64) -> None:
        """Always tile frames in `tile_size` pixel squares overlapping by `tile_overlap` (multiples of the spatial factor)."""
        f = self.spatial_compression_ratio
        if tile_size % f or tile_overlap % f or not 0 <= tile_overlap < tile_size:
            raise ValueError(
                f"tile_size {tile_size} and tile_overlap {tile_overlap} must be multiples of {f} with overlap < size"
            )
        self.use_tiling, self.tile_size, self.tile_overlap = True, tile_size, tile_overlap

    def disable_tiling(self) -> None:
        self.use_tiling = False

    def activation_bytes(self, frames: int, height: int, width: int, decoder: bool = False) -> int:
        """Rough peak activation memory (bytes) of encoding or decoding one piece at inference.

        The largest feature map times 4 (its input, its chunk-padded copy, the convolution output and
        the residual branch), for the piece's (frames, height, width) in pixels.
        """
        cfg = self.arch
        itemsize = torch.finfo(self.dtype).bits // 8 if self.dtype.is_floating_point else 4
        largest = 3 * frames * height * width
        s, t = 2, 1
        for i in range(cfg.num_stages):
            if cfg.layers_per_block[i]:
                largest = max(
                    largest, cfg.block_out_channels[i] * (frames // t) * (height // s) * (width // s)
                )
            if cfg.has_resample(i):
                ds, dt = cfg.resample_factors(i)
                s, t = s * ds, t * dt
        if (
            decoder
        ):  # the last convolution writes 12 channels at half resolution, the reconstruction 3 at full
            largest = max(largest, cfg.first_width * frames * (height // 2) * (width // 2))
        return 4 * largest * itemsize

    def _budget(self) -> int:
        if self.memory_budget is not None:
            return self.memory_budget
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            return int(free * 0.6)
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
        except (ValueError, OSError, AttributeError):
            return 16 * 2**30

    def _tile_plan(self, frames: int, height: int, width: int, decoder: bool) -> tuple[int, int] | None:
        """(tile, overlap) in pixels when this piece must be tiled, else None."""
        f = self.spatial_compression_ratio
        if self.use_tiling:
            return (self.tile_size, self.tile_overlap) if max(height, width) > self.tile_size else None
        budget = self._budget()
        if self.activation_bytes(frames, height, width, decoder) <= budget:
            return None
        tile = round_up(max(height, width), f)
        while tile > 2 * f and self.activation_bytes(frames, tile, tile, decoder) > budget:
            tile = max(2 * f, min(tile - f, round_up(tile * 3 // 4, f)))  # shrink by >= 1/4, at least f
        overlap = max(f, (tile // 4) // f * f)
        return tile, min(overlap, tile - f)

    # ---- core: one piece of a clip, optionally tiled in space -----------------------------------------
    def _plan_for(self, x: torch.Tensor, decoder: bool) -> tuple[int, int] | None:
        """Tiling plan for pieces shaped like x (fixed for a whole clip, so tile caches line up)."""
        f = self.spatial_compression_ratio
        h, w = x.shape[-2:]
        if decoder:
            frames = (
                min(x.shape[2], self.stream_frames // self.temporal_compression_ratio)
                * self.temporal_compression_ratio
            )
            h, w = h * f, w * f
        else:
            frames = min(x.shape[2], self.stream_frames)
        if not self.use_streaming or torch.is_grad_enabled():
            frames = x.shape[2] * (self.temporal_compression_ratio if decoder else 1)
        return self._tile_plan(frames, h, w, decoder)

    def _run_piece(
        self, x: torch.Tensor, caches: dict | None, decoder: bool, plan: tuple[int, int] | None
    ) -> torch.Tensor:
        net = self.decoder if decoder else self.encoder
        self.last_run_tiled = plan is not None
        if plan is None:
            return net(x, caches.setdefault("full", TemporalCache()) if caches is not None else None)
        f = self.spatial_compression_ratio
        tile, overlap = plan
        h, w = x.shape[-2:]
        if decoder:  # tiles in latent pixels, blended in output pixels
            tiles, scale = plan_tiles(h, w, tile // f, overlap // f, 1), f
            blender = TileBlender(h * f, w * f, ramp=overlap)
        else:  # tiles in input pixels, blended in latent pixels
            tiles, scale = plan_tiles(h, w, tile, overlap, f), 1
            blender = TileBlender(h // f, w // f, ramp=overlap // f)
        for t in tiles:
            cache = caches.setdefault(t, TemporalCache()) if caches is not None else None
            y = net(x[..., t.y : t.y + t.h, t.x : t.x + t.w], cache)
            y0, x0 = (t.y * scale, t.x * scale) if decoder else (t.y // f, t.x // f)
            blender.add(type(t)(y0, x0, y.shape[-2], y.shape[-1]), y)
        return blender.result(x.dtype)

    def _run(self, x: torch.Tensor, decoder: bool) -> torch.Tensor:
        """Whole (padded) clip: piece by piece with carried context at inference, in one shot under autograd
        (so gradient checkpointing applies) or when streaming is off."""
        plan = self._plan_for(x, decoder)
        if not self.use_streaming or torch.is_grad_enabled():
            return self._run_piece(x, None, decoder, plan)
        piece = self.stream_frames // self.temporal_compression_ratio if decoder else self.stream_frames
        caches: dict = {}
        outs = [
            self._run_piece(x[:, :, s : s + piece], caches, decoder, plan)
            for s in range(0, x.shape[2], piece)
        ]
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)

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
        """(B, 3, T, H, W) in [-1, 1] -> raw latent (B, Z, T'/4, H'/f, W'/f) of the padded clip."""
        if x.dim() != 5 or x.shape[1] != self.arch.in_channels:
            raise ValueError(
                f"expected a video (B, {self.arch.in_channels}, T, H, W), got shape {tuple(x.shape)}"
            )
        x = pad_video(x.to(self.dtype), self.arch.frame_multiple, self.spatial_compression_ratio)
        z = self._run(x, decoder=False)
        return EncoderOutput(latent=z) if return_dict else (z,)

    def decode(
        self,
        z: torch.Tensor,
        return_dict: bool = True,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
    ) -> DecoderOutput | tuple[torch.Tensor]:
        """Raw latent (B, Z, T', h, w) -> video (B, 3, 4T', f*h, f*w), cropped to the given size if any."""
        if z.dim() != 5 or z.shape[1] != self.arch.latent_channels:
            raise ValueError(
                f"expected a latent (B, {self.arch.latent_channels}, T, h, w), got shape {tuple(z.shape)}"
            )
        x = self._run(z.to(self.dtype), decoder=True)
        x = x[:, :, :num_frames, :height, :width]
        return DecoderOutput(sample=x) if return_dict else (x,)

    def forward(self, sample: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple[torch.Tensor]:
        """Reconstruction with exactly the input's shape."""
        t, h, w = sample.shape[2:]
        z = self.encode(sample).latent
        return self.decode(z, return_dict=return_dict, num_frames=t, height=h, width=w)

    # ---- streaming iterators -----------------------------------------------------------------------
    def encode_stream(self, pieces: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        """Encode a clip given as consecutive pieces (B, 3, t_i, H, W) of any lengths.

        Yields latent pieces (B, Z, stream_frames/4, h, w) as soon as enough frames have arrived; the
        tail is padded like `encode`. Concatenated, they equal `encode` of the whole clip.
        """
        if self.arch.temporal_mode is TemporalMode.NON_CAUSAL:
            raise ValueError("a non_causal DC-AE-V sees the whole clip at once and cannot stream")
        caches: dict = {}
        plan: tuple[int, int] | None = None
        buffer: list[torch.Tensor] = []
        buffered = 0
        f = self.spatial_compression_ratio
        for i, x in enumerate(pieces):
            x = pad_video(x.to(self.dtype), 1, f)
            if i == 0:
                plan = self._tile_plan(self.stream_frames, x.shape[-2], x.shape[-1], decoder=False)
            buffer.append(x)
            buffered += x.shape[2]
            while buffered >= self.stream_frames:
                clip = torch.cat(buffer, dim=2)
                yield self._run_piece(clip[:, :, : self.stream_frames], caches, False, plan)
                rest = clip[:, :, self.stream_frames :]
                buffer, buffered = ([rest] if rest.shape[2] else []), rest.shape[2]
        if buffered:
            tail = pad_video(torch.cat(buffer, dim=2), self.arch.frame_multiple, f)
            yield self._run_piece(tail, caches, False, plan)

    def reconstruct_stream(
        self, pieces: Iterable[torch.Tensor]
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Reconstruct a clip given as consecutive pieces (B, 3, t_i, H, W); yields (input, reconstruction)
        pairs of equal shape, covering the clip in order, with memory independent of its length."""
        if self.arch.temporal_mode is TemporalMode.NON_CAUSAL:  # sees the whole clip at once
            clip = torch.cat(list(pieces), dim=2)
            yield clip, self(clip).sample.to(clip.dtype)
            return
        pending: list[torch.Tensor] = []

        def feed() -> Iterator[torch.Tensor]:
            for p in pieces:
                pending.append(p)
                yield p

        for recon in self.decode_stream(self.encode_stream(feed())):
            orig = torch.cat(pending, dim=2)
            n = min(recon.shape[2], orig.shape[2])
            h, w = orig.shape[-2:]
            yield orig[:, :, :n], recon[:, :, :n, :h, :w].to(orig.dtype)
            pending[:] = [orig[:, :, n:]] if orig.shape[2] > n else []

    def decode_stream(
        self,
        latents: torch.Tensor | Iterable[torch.Tensor],
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
    ) -> Iterator[torch.Tensor]:
        """Decode a latent, or consecutive latent pieces of any lengths, `stream_frames` frames at a time.

        Yields video pieces cropped to `height` x `width`, stopping after `num_frames` frames when given.
        Concatenated, they equal `decode` of the whole latent.
        """
        if self.arch.temporal_mode is TemporalMode.NON_CAUSAL:
            raise ValueError("a non_causal DC-AE-V sees the whole clip at once and cannot stream")
        piece = self.stream_frames // self.temporal_compression_ratio
        f = self.spatial_compression_ratio
        caches: dict = {}
        plan: tuple[int, int] | None = None
        emitted = 0

        def run(z: torch.Tensor) -> torch.Tensor | None:
            nonlocal emitted
            x = self._run_piece(z, caches, True, plan)[..., :height, :width]
            if num_frames is not None:
                x = x[:, :, : max(0, num_frames - emitted)]
            emitted += x.shape[2]
            return x if x.shape[2] else None

        buffer: torch.Tensor | None = None
        for i, z in enumerate([latents] if isinstance(latents, torch.Tensor) else latents):
            z = z.to(self.dtype)
            if i == 0:
                plan = self._tile_plan(self.stream_frames, z.shape[-2] * f, z.shape[-1] * f, decoder=True)
            buffer = z if buffer is None else torch.cat([buffer, z], dim=2)
            while buffer.shape[2] >= piece:
                if (x := run(buffer[:, :, :piece])) is not None:
                    yield x
                buffer = buffer[:, :, piece:]
        if buffer is not None and buffer.shape[2] and (x := run(buffer)) is not None:
            yield x
