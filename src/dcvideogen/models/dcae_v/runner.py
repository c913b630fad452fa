"""The piece runner of DC-AE-V: a clip run one piece at a time, each piece padded and optionally tiled.

A piece is `stream_frames` input frames (or the latent frames they encode to); the first piece of a clip
fixes its tile plan (`planning.plan_stream`), and every temporal convolution carries its last input frames
to the next piece in a per-tile `TemporalCache`, so the concatenated pieces equal the one-shot result.
The padding is applied piece by piece and tile by tile (`ops.padded_region`), never to the whole clip.

Input checks: DCVGError (a ValueError) for a wrong rank or channel count, zero frames or pixels, NaN or Inf
values (one min/max pass over the input), and a crop outside what a latent decodes to.

The functions take the model (`AutoencoderDCV`) and run its encoder or decoder; `AutoencoderDCV.encode`,
`decode` and the stream iterators delegate here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from ...errors import DCVGError
from .config import DCAEVConfig
from .layers import TemporalCache
from .ops import pad_to, padded_region
from .planning import Stream, plan_stream
from .tiling import Tile, TileBlender, plan_tiles

# ---- input checks ---------------------------------------------------------------------------------------


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


def check_shape(
    cfg: DCAEVConfig, x: torch.Tensor, latent: bool, what: str, frames_required: bool = True
) -> None:
    """x is a video (B, in_channels, T, H, W), or a latent (B, latent_channels, T', h, w), and not empty."""
    c = cfg.latent_channels if latent else cfg.in_channels
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


def check_pieces(
    cfg: DCAEVConfig, pieces: Iterable[torch.Tensor], latent: bool, what: str, finite: bool = True
) -> Iterator[torch.Tensor]:
    """The pieces of one clip, checked as they come: same batch, channels and frame size; finite values
    (unless the caller checked them); at least one frame in all. Pieces of zero frames are skipped."""
    first: torch.Size | None = None
    frames = 0
    for i, x in enumerate(pieces):
        check_shape(cfg, x, latent, f"{what} piece {i}", frames_required=False)
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


def check_crop(
    cfg: DCAEVConfig, num_frames: int | None, height: int | None, width: int | None, z: torch.Tensor | None
) -> None:
    """num_frames / height / width of `decode`: positive, and within what the latent z decodes to."""
    f, tc = cfg.spatial_compression, cfg.temporal_compression
    full = (z.shape[2] * tc, z.shape[3] * f, z.shape[4] * f) if z is not None else (None, None, None)
    for name, value, most in zip(("num_frames", "height", "width"), (num_frames, height, width), full):
        if value is None:
            continue
        if value < 1 or (most is not None and value > most):
            bound = (
                f" and at most {most} (what a latent of shape {tuple(z.shape)} decodes to)" if most else ""
            )
            raise DCVGError(f"decode: {name}={value} must be at least 1{bound}")


# ---- one piece of a clip, padded and optionally tiled in space ------------------------------------------


def stream_piece(
    model: nn.Module, stream: Stream, x: torch.Tensor, last: bool, keep: int | None = None
) -> torch.Tensor:
    """Run one piece of a clip with the stream's plan and caches; `last`: no piece follows."""
    if not stream.planned:
        plan_stream(model, stream, x, last, keep)
    caches = None if last and not stream.caches else stream.caches  # a clip of one piece: no context
    return run_piece(model, x, caches, stream.decoder, stream.plan, last, keep)


def run_piece(
    model: nn.Module,
    x: torch.Tensor,
    caches: dict | None,
    decoder: bool,
    plan: tuple[int, int] | None,
    last: bool,
    keep: int | None,
) -> torch.Tensor:
    """Encoder: video x (B, 3, t, H, W) -> latent, padded to whole chunks and the spatial factor tile by
    tile. Decoder: latent x (B, Z, t', h, w) -> video (B, 3, keep or 4t', f*h, f*w)."""
    net = model.decoder if decoder else model.encoder
    f = model.spatial_compression_ratio
    model.last_run_tiled = plan is not None
    h, w = x.shape[-2:]
    frames, height, width = model.padded_shape(x.shape[2], h, w)  # encoder input after padding

    def cache(key) -> TemporalCache | None:
        if caches is None:
            return None
        c = caches.setdefault(key, TemporalCache())
        c.store = not last  # the last piece only reads its context, and frees it as it goes
        return c

    if plan is None:
        if decoder:
            y = net(x.to(model.dtype), cache("full"))  # (B, 3, 4t', f*h, f*w)
            return y if keep is None or keep >= y.shape[2] else y[:, :, :keep].clone()
        return net(pad_to(x.to(model.dtype), frames, height, width), cache("full"))  # (B, Z, T', h', w')
    tile, overlap = plan
    if decoder:  # tiles in latent pixels, blended in output pixels
        tiles, scale = plan_tiles(h, w, tile // f, overlap // f, 1), f
        blender = TileBlender(h * f, w * f, ramp=overlap)
    else:  # tiles in (padded) input pixels, blended in latent pixels
        tiles, scale = plan_tiles(height, width, tile, overlap, f), 1
        blender = TileBlender(height // f, width // f, ramp=overlap // f)
    for t in tiles:
        if decoder:
            y = net(x[..., t.y : t.y + t.h, t.x : t.x + t.w].to(model.dtype), cache(t))
            y = y[:, :, :keep]
        else:
            y = net(padded_region(x, t, frames).to(model.dtype), cache(t))
        y0, x0 = (t.y * scale, t.x * scale) if decoder else (t.y // f, t.x // f)
        blender.add(Tile(y0, x0, y.shape[-2], y.shape[-1]), y)
    return blender.result(model.dtype)


# ---- streaming core -------------------------------------------------------------------------------------


def one_shot(model: nn.Module) -> bool:
    """Whole clip at once: under autograd (so gradient checkpointing applies) or when streaming is off."""
    return not model.use_streaming or torch.is_grad_enabled()


def encode_pieces(
    model: nn.Module, pieces: Iterable[torch.Tensor], stream: Stream, whole: bool = False
) -> Iterator[tuple[torch.Tensor, torch.Tensor, bool]]:
    """Encode consecutive pieces (B, 3, t_i, H, W) `stream_frames` frames at a time.

    Yields (latent piece, the input frames it encodes, whether no piece follows). `whole`: `pieces` is
    the whole clip in one tensor, already checked. Otherwise the end is known when the input ends inside
    a piece (always for a clip shorter than one piece, an image); a clip ending exactly at a piece
    boundary is planned as if more could follow (the input is not read ahead).
    """
    size = model.stream_frames
    buffer: list[torch.Tensor] = []
    buffered = 0
    for x in check_pieces(model.arch, pieces, latent=False, what="encode", finite=not whole):
        buffer.append(x)
        buffered += x.shape[2]
        while buffered >= size:
            clip = buffer[0] if len(buffer) == 1 else torch.cat(buffer, dim=2)  # (B, 3, >=size, H, W)
            piece, rest = clip[:, :, :size], clip[:, :, size:]
            buffer, buffered = ([rest] if rest.shape[2] else []), rest.shape[2]
            last = whole and not buffered
            yield stream_piece(model, stream, piece, last), piece, last
    if buffered:
        tail = buffer[0] if len(buffer) == 1 else torch.cat(buffer, dim=2)  # padded tile by tile
        yield stream_piece(model, stream, tail, last=True), tail, True


def decode_pieces(
    model: nn.Module,
    latents: Iterable[tuple[torch.Tensor, bool]],
    stream: Stream,
    num_frames: int | None,
) -> Iterator[torch.Tensor]:
    """Decode consecutive latent pieces, given with a flag that says no latent follows, `stream_frames`
    output frames at a time; stops after `num_frames` frames."""
    piece = model.stream_frames // model.temporal_compression_ratio
    emitted = 0

    def run(z: torch.Tensor, last: bool) -> torch.Tensor:
        nonlocal emitted
        keep = None if num_frames is None else num_frames - emitted
        if keep is not None and keep <= z.shape[2] * model.temporal_compression_ratio:
            last = True  # the frames asked for end in this piece
        x = stream_piece(model, stream, z, last, keep)
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


def encode_into(model: nn.Module, x: torch.Tensor, out: torch.Tensor) -> None:
    """Encode x (b, 3, T, H, W) into `out` (b, Z, T', h, w), one stream piece at a time."""
    stream = Stream(decoder=False)
    if one_shot(model):
        out.copy_(stream_piece(model, stream, x, last=True))
        return
    start = 0
    for z, _, _ in encode_pieces(model, [x], stream, whole=True):
        out[:, :, start : start + z.shape[2]] = z  # (b, Z, t', h, w)
        start += z.shape[2]
    assert start == out.shape[2], f"encoded {start} latent frames into {tuple(out.shape)}"


def decode_into(model: nn.Module, z: torch.Tensor, out: torch.Tensor, num_frames: int | None) -> None:
    """Decode z (b, Z, T', h, w) into `out` (b, 3, T, H, W), cropping each piece to out's frame size."""
    stream = Stream(decoder=True)
    height, width = out.shape[-2:]
    if one_shot(model):
        out.copy_(
            stream_piece(model, stream, z, last=True, keep=num_frames)[:, :, :num_frames, :height, :width]
        )
        return
    start = 0
    for x in decode_pieces(model, with_last(latent_chunks(model, z)), stream, num_frames):
        out[:, :, start : start + x.shape[2]] = x[..., :height, :width]  # (b, 3, t, H, W)
        start += x.shape[2]
    assert start == out.shape[2], f"decoded {start} frames into {tuple(out.shape)}"


def latent_chunks(model: nn.Module, z: torch.Tensor) -> list[torch.Tensor]:
    """z (B, Z, T', h, w) cut into pieces of `stream_frames` output frames."""
    piece = model.stream_frames // model.temporal_compression_ratio
    return [z[:, :, s : s + piece] for s in range(0, z.shape[2], piece)]


def with_last(items: Iterable) -> Iterator[tuple]:
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
