"""Memory plan of DC-AE-V: what one piece of a clip allocates, and the tiles that make it fit a budget.

A clip is run one piece (`stream_frames` frames) at a time, and a piece in square tiles when it would not
fit the memory budget. What a piece needs (activations of a tile, the context carried to the next piece,
the blended output) is estimated here before any work; at inference a piece that does not fit even in the
smallest tiles is refused with a DCVGError naming the memory it needs (under autograd the smallest tiles
are used). The functions take the model (`AutoencoderDCV`) and read its layers, dtype, device and runtime
options; `AutoencoderDCV.memory_needed` and friends delegate here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from ...errors import DCVGError
from .layers import TemporalConv3d
from .ops import round_up
from .tiling import host_memory_available, tile_spans

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
class Stream:
    """One clip run piece after piece: its tile plan (made at the first piece) and the per-tile caches.

    `partner` is the decoder of a reconstruction: planned together with the encoder, before any work.
    """

    decoder: bool
    plan: tuple[int, int] | None = None
    planned: bool = False
    caches: dict = field(default_factory=dict)
    partner: Stream | None = None


# ---- memory estimates ----------------------------------------------------------------------------------


def convs(model: nn.Module, decoder: bool) -> Iterator[tuple[TemporalConv3d, int, int]]:
    """Every temporal convolution in execution order, with the spatial and temporal down-scaling of
    its input."""
    cfg, s, t = model.arch, 1, 1
    if not decoder:
        yield model.encoder.conv_in, 1, 1
        s = 2  # the input projection's space-to-channel
        for i, stage in enumerate(model.encoder.stages):
            for block in stage.blocks:
                yield from ((block.conv1, s, t), (block.conv2, s, t))
            if stage.downsample is not None:
                yield stage.downsample.conv, s, t
                ds, dt = cfg.resample_factors(i)
                s, t = s * ds, t * dt
        yield model.encoder.conv_out, s, t
        return
    s, t = model.spatial_compression_ratio, model.temporal_compression_ratio
    yield model.decoder.conv_in, s, t
    for i in reversed(range(cfg.num_stages)):
        stage = model.decoder.stages[i]
        if stage.upsample is not None:
            yield stage.upsample.conv, s, t
            ds, dt = cfg.resample_factors(i)
            s, t = s // ds, t // dt
        for block in stage.blocks:
            yield from ((block.conv1, s, t), (block.conv2, s, t))
    yield model.decoder.conv_out, s, t


def itemsize(dtype: torch.dtype) -> int:
    """Bytes of one element of the model's activations."""
    return torch.finfo(dtype).bits // 8 if dtype.is_floating_point else 4


def activation_bytes(
    model: nn.Module, frames: int, height: int, width: int, decoder: bool = False, batch: int = 1
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
    for conv, s, t in convs(model, decoder):
        largest = max(largest, max(conv.in_channels, conv.out_channels) / (s * s * t))
    largest = max(largest, model.arch.in_channels)  # the input / reconstruction itself
    if decoder and model.arch.luma_filter_width:  # its maps: `width` channels at a quarter of the resolution
        largest = max(largest, model.arch.luma_filter_width / 16)
    item = itemsize(model.dtype)
    per_element = (5 * item + (4 if item < 4 else 0)) * (2 if model.device.type == "cpu" else 1)
    return int(largest * batch * frames * height * width) * per_element


def context_bytes(model: nn.Module, height: int, width: int, decoder: bool = False, batch: int = 1) -> int:
    """Bytes every temporal convolution keeps for the next piece of a streamed clip (its last input
    frames)."""
    per_pixel = sum(
        conv.in_channels * conv.temporal_padding.left / (s * s)
        for conv, s, _ in convs(model, decoder)
        if conv.temporal_padding.carry
    )
    return int(per_pixel * batch * height * width * itemsize(model.dtype))


def memory_needed(
    model: nn.Module,
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
    f = model.spatial_compression_ratio
    height, width = round_up(height, f), round_up(width, f)
    keep = frames if keep is None else min(keep, frames)
    rows, cols = (tile_spans(n, *tile, f) if tile else [(0, n)] for n in (height, width))
    th, tw = max(size for _, size in rows), max(size for _, size in cols)
    item, c = itemsize(model.dtype), model.arch.in_channels
    working = activation_bytes(model, frames, th, tw, decoder, batch)
    # Every tile keeps its own context, so overlaps count twice: the tiles' total area.
    area = sum(size for _, size in rows) * sum(size for _, size in cols)
    context = context_bytes(model, area, 1, decoder, batch) if carry else 0
    if decoder:  # float32 blend of the kept frames and its cast; or the cropped copy of the whole frame
        pixels = batch * c * keep * height * width
        output = (
            pixels * (4 + (item if item != 4 else 0)) if tile else (pixels * item if keep < frames else 0)
        )
    else:  # the input tile, padded; the float32 blend of the latent
        working += batch * c * frames * th * tw * item
        latent = batch * model.arch.latent_channels * (frames // model.temporal_compression_ratio)
        output = latent * (height // f) * (width // f) * (4 + item)
    return MemoryEstimate(working, context, output)


# ---- the plan ------------------------------------------------------------------------------------------


def budget(model: nn.Module) -> tuple[int, str]:
    """Bytes a piece may allocate, and where that number comes from (for messages)."""
    if model.memory_budget is not None:
        return model.memory_budget, "memory_budget"
    if model.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(model.device)
        return int(free * 0.6), f"60% of the free memory of {model.device}"
    try:
        half = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        half = 16 * GIB
    available, limit = host_memory_available()
    if half <= available * 0.8:
        return half, "half the RAM"
    return int(available * 0.8), f"80% of what this process can still allocate, set by {limit}"


def tile_candidates(height: int, width: int, f: int) -> Iterator[tuple[int, int]]:
    """(tile, overlap) in pixels, from 3/4 of the frame's longer side down to twice the spatial factor f."""
    tile = round_up(max(height, width), f)
    while tile > 2 * f:
        tile = max(2 * f, min(tile - f, round_up(tile * 3 // 4, f)))  # shrink by >= 1/4, at least f
        overlap = max(f, (tile // 4) // f * f)
        yield tile, min(overlap, tile - f)


def plan_piece(
    model: nn.Module, piece: dict, extra: int = 0
) -> tuple[tuple[int, int] | None, MemoryEstimate]:
    """Tile plan of a piece described by `piece` (the arguments of `memory_needed`), and its estimate.

    None when the whole frame fits the budget (less `extra` bytes held by something else); raises
    DCVGError when even the smallest tiles (or the tiles asked for with `enable_tiling`) do not fit,
    except under autograd, where the smallest tiles are used.
    """
    limit, source = budget(model)
    limit -= extra
    longest = max(piece["height"], piece["width"])
    if model.use_tiling:
        plan = (model.tile_size, model.tile_overlap) if longest > model.tile_size else None
        candidates = [plan]
    else:
        whole = memory_needed(model, **piece)
        if whole.total <= limit:
            return None, whole
        f = model.spatial_compression_ratio
        candidates = list(tile_candidates(piece["height"], piece["width"], f)) or [None]
    for plan in candidates:
        need = memory_needed(model, **piece, tile=plan)
        if need.total <= limit or torch.is_grad_enabled():
            return plan, need
    raise DCVGError(too_large(model, piece, plan, need, limit, source, extra))


def too_large(
    model: nn.Module,
    piece: dict,
    plan: tuple[int, int] | None,
    need: MemoryEstimate,
    limit: int,
    source: str,
    extra: int,
) -> str:
    """The message of a piece that does not fit the budget, with what to change."""
    f = model.spatial_compression_ratio
    how = f"in {plan[0]}-pixel tiles" if plan else "in one piece"
    held = f", less {extra / GIB:.2f} GiB held by the other half of the autoencoder" if extra else ""
    smaller = ", or a clip of one chunk" if need.context else ""
    side = plan[0] if plan else max(piece["height"], piece["width"])
    tiles = " or smaller tiles (enable_tiling, dcvg --tile)" if model.use_tiling and side > 2 * f else ""
    return (
        f"{'decoding' if piece['decoder'] else 'encoding'} frames of {piece['width']}x{piece['height']} "
        f"pixels, {piece['batch']}x{piece['frames']} at a time, needs about {need.total / GIB:.2f} GiB "
        f"even {how} "
        f"({need.describe()}), more than the memory budget of {limit / GIB:.2f} GiB ({source}{held}); "
        f"use a smaller input (fewer pixels per frame{smaller}){tiles}, or raise memory_budget "
        "(dcvg --memory-budget GIB) if more memory is really free"
    )


def piece_shape(model: nn.Module, x: torch.Tensor, decoder: bool, last: bool, keep: int | None) -> dict:
    """Arguments of `memory_needed` for the piece x (video, or latent for the decoder)."""
    f, tc = model.spatial_compression_ratio, model.temporal_compression_ratio
    b, _, t, h, w = x.shape
    if decoder:
        frames, h, w = t * tc, h * f, w * f
    else:
        frames = round_up(t, model.arch.frame_multiple)
    return dict(
        frames=frames, height=round_up(h, f), width=round_up(w, f), decoder=decoder,
        batch=b, carry=not last, keep=keep,
    )  # fmt: skip


def plan_stream(model: nn.Module, stream: Stream, x: torch.Tensor, last: bool, keep: int | None) -> None:
    """Fix the tile plan of a stream (and its partner's) from its first piece, before any work."""
    piece = piece_shape(model, x, stream.decoder, last, keep)
    if stream.partner is None:
        stream.plan = plan_piece(model, piece)[0]
    else:  # encoder and decoder of one reconstruction: each also holds the other's carried context
        other = dict(piece, decoder=True, keep=x.shape[2])
        extra = extra_other = 0
        for _ in range(8):  # contexts only grow as tiles shrink: stops at a fixed point
            (plan, need), (plan_other, need_other) = (
                plan_piece(model, piece, extra),
                plan_piece(model, other, extra_other),
            )
            if (extra, extra_other) == (need_other.context, need.context):
                break
            extra, extra_other = need_other.context, need.context
        stream.plan, stream.partner.plan, stream.partner.planned = plan, plan_other, True
    stream.planned = True
