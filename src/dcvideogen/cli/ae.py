"""Autoencoder sub-commands: reconstruct, encode, decode, convert, info.

torch, the models and PyAV are imported inside the commands, so that `dcvg --help` stays instant.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from ..errors import DCVGError, first_line
from .common import (
    DTYPES,
    add_device_args,
    add_model_args,
    check_not_input,
    describe_model,
    load_model_from_args,
    logger,
    positive_fps,
    torch_dtype,
)

if TYPE_CHECKING:
    import torch

    from ..models.dcae_v import AutoencoderDCV
    from ..video import VideoInfo

LATENT_FORMAT = "dcvideogen.latent.v1"
LATENT_KEYS = ("num_frames", "height", "width", "fps", "config")

READING_NOTES = (
    "A file that breaks off early (truncated or damaged) is used up to its last decodable frame, with a "
    "warning naming how many frames its header declares; --strict refuses it instead."
)
WRITING_NOTES = (
    "Sound is not kept. mp4 is h264 yuv420p: frames of odd height or width are padded to even by repeating "
    "the last row/column (a note says so)."
)

T = TypeVar("T")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reconstruct",
        help="encode and decode a video; print PSNR, SSIM and the compression",
        description=f"Encode and decode a video. {READING_NOTES} {WRITING_NOTES}",
    )
    p.add_argument("input", help="video file (mp4, webm, mov, mkv, gif), image, or folder of frames")
    p.add_argument(
        "output", nargs="?", default=None, help="output .mp4 or .gif (default: ./<name>.recon.mp4)"
    )
    p.add_argument("--side-by-side", action="store_true", help="write input | reconstruction side by side")
    p.add_argument(
        "--no-baseline",
        action="store_true",
        help="skip the naive codec of the same fXtYcZ (frame means + area downsampling), the floor to beat",
    )
    _add_input_args(p)
    add_model_args(p)
    add_device_args(p)
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser(
        "encode",
        help="encode a video to a latent .safetensors file",
        description=f"Encode a video to a raw latent with its metadata. {READING_NOTES}",
    )
    p.add_argument("input", help="video file, image, or folder of frames")
    p.add_argument("output", help="output .safetensors file (raw latent + metadata)")
    _add_input_args(p)
    add_model_args(p)
    add_device_args(p)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser(
        "decode",
        help="decode a latent .safetensors file (from dcvg encode) to video",
        description="Decode a latent written by dcvg encode. The latent's shape and metadata are checked "
        f"against --model before decoding. {WRITING_NOTES}",
    )
    p.add_argument("latent", help="latent .safetensors file written by dcvg encode")
    p.add_argument("output", help="output .mp4 or .gif")
    p.add_argument("--fps", type=positive_fps, default=None, help="frame rate (default: the encoded video's)")
    add_model_args(p)
    add_device_args(p)
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("convert", help="convert an official DC-AE-V .pt checkpoint to a model folder")
    p.add_argument("checkpoint", help="official checkpoint, e.g. dc-ae-v-f32t4c32-1.0-bf16.pt")
    p.add_argument("outdir", help="output folder (config.json + safetensors); must not exist or be empty")
    p.add_argument("--preset", default=None, help="architecture, e.g. dc-ae-v-f32t4c32 (inferred if omitted)")
    p.add_argument("--chunk-size", type=int, default=None, help="chunk size in frames (official: 40)")
    p.add_argument("--dtype", choices=["keep", *DTYPES], default="keep", help="weight dtype to save")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("info", help="describe a model folder, official checkpoint, or preset")
    p.add_argument("model", help="model folder, official .pt checkpoint, preset name, or 'default'")
    p.add_argument("--preset", default=None, help="architecture of an official .pt checkpoint")
    p.add_argument("--chunk-size", type=int, default=None, help="override the chunk size (frames)")
    p.set_defaults(func=cmd_info)


def _add_input_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frames", type=int, default=None, help="use at most this many frames")
    p.add_argument("--start", type=int, default=0, help="first frame to use")
    p.add_argument(
        "--strict",
        action="store_true",
        help="refuse an input that decodes to fewer frames than its header declares (truncated or damaged)",
    )


# ---- reading the input ------------------------------------------------------------------------------


def _probe_input(args: argparse.Namespace) -> tuple[VideoInfo, int | None]:
    """Check the input before any heavy work; returns its VideoInfo and the number of frames to use."""
    from ..video import probe_video

    if args.frames is not None and args.frames < 1:
        raise DCVGError(f"--frames {args.frames}: must be at least 1")
    if args.start < 0:
        raise DCVGError(f"--start {args.start}: must be 0 or more")
    info = probe_video(args.input)
    total = info.num_frames - args.start if info.num_frames else None
    if args.frames is not None:
        total = min(total, args.frames) if total else args.frames
    return info, total


def _describe_input(path: Path, info: VideoInfo) -> str:
    from ..video import VIDEO_SUFFIXES

    n = info.num_frames
    if not n:
        count = "frame count unknown"
    elif info.exact_count:  # a video file's header can promise more frames than it holds
        count = f"{n} frame{'s' * (n != 1)}" + (" declared" if path.suffix.lower() in VIDEO_SUFFIXES else "")
    else:
        count = f"about {n} frames (from the duration)"
    return f"input {path}: {info.width}x{info.height}, {info.fps:g} fps, {count}"


def _pieces(args: argparse.Namespace, model: AutoencoderDCV) -> Iterator[torch.Tensor]:
    from ..video import iter_frames

    return iter_frames(args.input, chunk_frames=model.stream_frames, start=args.start, max_frames=args.frames)


def _check_complete(args: argparse.Namespace, info: VideoInfo, frames: int) -> None:
    """Warn, or with --strict refuse, when the input decoded to fewer frames than its container declares."""
    from ..video import missing_frames_note

    note = missing_frames_note(args.input, info, args.start, args.frames, frames)
    if note is None:
        return
    if args.strict:
        raise DCVGError(f"{note}; drop --strict to use the {frames} decodable frames")
    logger.warning(f"warning: {note}; used the {frames} decodable frames (--strict refuses such files)")


def _model_errors(path: str | Path, items: Iterable[T]) -> Iterator[T]:
    """The model's ValueErrors on this input (empty or non-finite frames, a bad shape) as one-line errors
    naming the file."""
    try:
        yield from items
    except DCVGError:
        raise
    except ValueError as e:
        raise DCVGError(f"{path}: {first_line(e)}") from e


def _require_streaming(model: AutoencoderDCV, command: str) -> None:
    from ..models.dcae_v import TemporalMode

    if model.arch.temporal_mode is TemporalMode.NON_CAUSAL:
        raise DCVGError(
            f"--model: a {model.arch.temporal_mode.value} DC-AE-V sees the whole clip at once; "
            f"dcvg {command} streams chunk by chunk and needs a causal or chunk-causal model"
        )


def _compression(model: AutoencoderDCV, frames: int, height: int, width: int) -> str:
    """The compression this clip got (input values / latent values) next to the nominal one: padding to
    whole chunks and to multiples of the spatial factor makes short or small clips compress less."""
    latent = model.latent_shape(frames, height, width)  # (Z, T', h, w)
    actual = model.arch.in_channels * frames * height * width / math.prod(latent)
    text = f"compression {actual:.3g}x for this clip ({model.arch.compression_ratio:g}x nominal"
    t, h, w = model.padded_shape(frames, height, width)
    if (t, h, w) != (frames, height, width):
        text += f"; padded to {t} frames of {w}x{h}"
    return text + ")"


# ---- reconstruct ------------------------------------------------------------------------------------


class _NaiveBaseline:
    """PSNR/SSIM of the naive codec of the model's fXtYcZ (`evaluation/naive.py`) on the frames reconstruct
    streams, piece by piece: memory stays flat. Frames short of a multiple of Y are carried to the next
    piece, so the frame groups are those of the whole clip; the last group is padded by repeating the last
    frame and cropped back (`VideoAutoencoder.reconstruct`)."""

    def __init__(self, model: AutoencoderDCV) -> None:
        from ..evaluation.adapters import NaiveCodecAdapter

        a = model.arch
        self.codec = NaiveCodecAdapter(a.spatial_compression, a.temporal_compression, a.latent_channels)
        self.carry: torch.Tensor | None = None  # (3, t < Y, H, W)
        self.psnrs: list[torch.Tensor] = []
        self.ssims: list[torch.Tensor] = []
        self.frames = 0

    def add(self, orig: torch.Tensor) -> None:
        """One piece (3, t, H, W) in [-1, 1], float32 on the CPU."""
        import torch

        if self.carry is not None:
            orig = torch.cat([self.carry, orig], dim=1)
        whole = orig.shape[1] // self.codec.temporal_factor * self.codec.temporal_factor
        self.carry = orig[:, whole:] if whole < orig.shape[1] else None
        if whole:
            self._measure(orig[:, :whole])

    def finish(self) -> None:
        if self.carry is not None:
            self._measure(self.carry)
            self.carry = None

    def _measure(self, x: torch.Tensor) -> None:
        from ..metrics import psnr_per_frame, ssim_per_frame

        recon = self.codec.reconstruct(x[None])[0]  # (3, t, H, W)
        self.psnrs.append(psnr_per_frame(recon, x)[0])
        if min(x.shape[-2:]) >= 11:
            self.ssims.append(ssim_per_frame(recon, x)[0])
        self.frames += x.shape[1]

    def line(self, height: int, width: int) -> str:
        import torch

        from ..evaluation.naive import naive_size

        c = self.codec
        h, w = naive_size(height, width, c.model.factor)
        values = 3 * -(-self.frames // c.temporal_factor) * h * w  # (3, T/Y, h, w), T padded to Y
        ratio = 3 * self.frames * height * width / values
        ssim = f"{torch.cat(self.ssims).mean().item():.4f}" if self.ssims else "n/a"
        return (
            f"naive codec  PSNR {torch.cat(self.psnrs).mean().item():.2f} dB, SSIM {ssim} ({c.name}: frame "
            f"means + area downsampling to the latent's {c.compression_ratio:g}x nominal, {ratio:.3g}x for "
            "this clip; the floor to beat)"
        )


def cmd_reconstruct(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from ..metrics import psnr_per_frame, ssim_per_frame
    from ..video import VideoWriter, check_output_path

    src = Path(args.input)
    out = Path(args.output) if args.output else Path(f"{src.stem}.recon.mp4")
    info, total = _probe_input(args)
    check_output_path(out)
    check_not_input(out, src)
    model = load_model_from_args(args)
    pieces = _pieces(args, model)
    device = model.device
    logger.info(describe_model(model, str(args.model)))
    logger.info(_describe_input(src, info))
    if info.has_audio:
        logger.info(f"note: {src} has sound; the reconstruction is written without it")

    psnrs, ssims = [], []
    frames = 0
    baseline = None if args.no_baseline else _NaiveBaseline(model)
    bar = tqdm(total=total, unit="frame", desc="reconstruct", leave=False, disable=None)
    with VideoWriter(out, info.fps) as writer, torch.inference_mode():
        stream = model.reconstruct_stream(p[None].to(device) for p in pieces)
        for orig, recon in _model_errors(src, stream):
            orig, recon = orig[0].float().cpu(), recon[0].float().clamp(-1, 1).cpu()  # (3, t, H, W)
            psnrs.append(psnr_per_frame(recon, orig)[0])
            if min(orig.shape[-2:]) >= 11:
                ssims.append(ssim_per_frame(recon, orig)[0])
            writer.write(torch.cat([orig, recon], dim=-1) if args.side_by_side else recon)
            if baseline is not None:
                baseline.add(orig)
            frames += orig.shape[1]
            bar.update(orig.shape[1])
        bar.close()
        if baseline is not None:
            baseline.finish()
        _check_complete(args, info, frames)  # inside the writer: --strict leaves no output behind
    z = model.latent_shape(frames, info.height, info.width)
    ssim_txt = f"{torch.cat(ssims).mean().item():.4f}" if ssims else "n/a (frames under 11 px)"
    print(f"frames       {frames} ({info.width}x{info.height})")
    print(f"latent       {tuple(z)} (C, T, H, W); {_compression(model, frames, info.height, info.width)}")
    print(f"PSNR         {torch.cat(psnrs).mean().item():.2f} dB")
    print(f"SSIM         {ssim_txt}")
    if baseline is not None:
        print(baseline.line(info.height, info.width))
    print(f"wrote        {out}")
    return 0


# ---- encode -----------------------------------------------------------------------------------------


def cmd_encode(args: argparse.Namespace) -> int:
    import torch
    from safetensors.torch import save_file
    from tqdm import tqdm

    from ..utils.atomic import atomic_file, check_writable_parent

    out = Path(args.output)
    if out.suffix != ".safetensors":
        raise DCVGError(f"{out}: the latent file must end in .safetensors")
    info, total = _probe_input(args)
    check_writable_parent(out)
    check_not_input(out, args.input)
    model = load_model_from_args(args)
    _require_streaming(model, "encode")
    pieces = _pieces(args, model)
    latents, frames = [], 0
    bar = tqdm(total=total, unit="frame", desc="encode", leave=False, disable=None)

    def counted():
        nonlocal frames
        for p in pieces:
            frames += p.shape[1]
            bar.update(p.shape[1])
            yield p[None].to(model.device)

    with torch.inference_mode():
        for z in _model_errors(args.input, model.encode_stream(counted())):
            latents.append(z.float().cpu())
    bar.close()
    _check_complete(args, info, frames)
    latent = torch.cat(latents, dim=2).contiguous()  # (1, Z, T', h, w)
    meta = {
        "format": LATENT_FORMAT,
        "num_frames": str(frames),
        "height": str(info.height),
        "width": str(info.width),
        "fps": repr(info.fps),
        "scaling_factor": repr(model.config.scaling_factor),
        "config": json.dumps(model.arch.to_dict()),
        "source": str(args.input),
    }
    with atomic_file(out) as tmp:
        save_file({"latent": latent}, str(tmp), metadata=meta)
    print(
        f"latent       {tuple(latent.shape)} (B, C, T, H, W), raw (multiply by {model.config.scaling_factor:g} for diffusion)"
    )
    compression = _compression(model, frames, info.height, info.width)
    print(f"frames       {frames} ({info.width}x{info.height}); {compression}")
    print(f"wrote        {out}")
    return 0


# ---- decode: the latent file is checked against itself and the model before any decoding ----------------


def _read_latent(path: Path) -> tuple[torch.Tensor, dict[str, str]]:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    if not path.is_file():
        raise DCVGError(f"{path}: no such latent file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise DCVGError(
            f"{path}: not a readable .safetensors file ({first_line(e)}); re-create it with dcvg encode"
        ) from e
    missing = [k for k in LATENT_KEYS if k not in meta]
    if "latent" not in tensors or meta.get("format") != LATENT_FORMAT or missing:
        raise DCVGError(
            f"{path}: not a latent written by dcvg encode (no 'latent' tensor, format or "
            f"{'/'.join(missing or LATENT_KEYS)} metadata); re-create it with dcvg encode"
        )
    return tensors["latent"], meta


def _check_latent_tensor(path: Path, latent: torch.Tensor) -> None:
    """Rank, batch, dtype and values, before any model is loaded."""
    import torch

    if latent.dim() != 5 or latent.shape[0] != 1:
        raise DCVGError(
            f"{path}: the latent has shape {tuple(latent.shape)}, not (1, C, T, h, w) as dcvg encode writes; "
            "re-create it with dcvg encode"
        )
    if not latent.is_floating_point():
        raise DCVGError(
            f"{path}: the latent is {latent.dtype}, not floating point; re-create it with dcvg encode"
        )
    if not torch.isfinite(latent).all():
        raise DCVGError(f"{path}: the latent holds NaN or infinite values; re-create it with dcvg encode")


def _positive_int(path: Path, meta: dict[str, str], key: str) -> int:
    try:
        value = int(meta[key])
    except ValueError:
        value = 0
    if value < 1:
        raise DCVGError(
            f"{path}: metadata {key}={meta[key]!r} is not a positive whole number; "
            "re-create it with dcvg encode"
        )
    return value


def _latent_fps(path: Path, meta: dict[str, str], fps: float | None) -> float:
    if fps is not None:
        return fps
    try:
        return positive_fps(meta["fps"])
    except argparse.ArgumentTypeError:
        raise DCVGError(
            f"{path}: metadata fps={meta['fps']!r} is not a frame rate; give one with --fps"
        ) from None


def _encoded_by(path: Path, meta: dict[str, str]):
    from ..models.dcae_v.config import DCAEVConfig

    try:
        return DCAEVConfig(**json.loads(meta["config"]))
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise DCVGError(
            f"{path}: metadata config is not a DC-AE-V architecture ({first_line(e)}); "
            "re-create it with dcvg encode"
        ) from e


def _check_latent_fits(
    path: Path, latent: torch.Tensor, meta: dict[str, str], model: AutoencoderDCV, size: tuple[int, int, int]
) -> None:
    """The encoding model is --model, and the latent grid is the one its metadata's clip size gives."""
    a, encoded_by = model.arch, _encoded_by(path, meta)
    if encoded_by.replace(scaling_factor=1.0) != a.replace(scaling_factor=1.0):
        raise DCVGError(
            f"{path} was encoded by a DC-AE-V {encoded_by.name} (widths "
            f"{list(encoded_by.block_out_channels)}, chunk {encoded_by.chunk_size}) but --model is a "
            f"{a.name} (widths {list(a.block_out_channels)}, chunk {a.chunk_size}); decode with the model "
            "that encoded it"
        )
    channels = latent.shape[1]
    if channels != a.latent_channels:
        raise DCVGError(
            f"{path}: the latent has {channels} channels but the {a.name} model decodes {a.latent_channels}; "
            "decode with the model that encoded it"
        )
    n, h, w = size
    expected = model.latent_shape(n, h, w)[1:]
    if tuple(latent.shape[2:]) != expected:
        grid = "x".join(map(str, latent.shape[2:]))
        raise DCVGError(
            f"{path}: the latent grid {grid} (T x h x w) does not match its metadata ({n} frames of {w}x{h} "
            f"give {'x'.join(map(str, expected))} in a {a.name}); re-create it with dcvg encode"
        )


def cmd_decode(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from ..video import VideoWriter, check_output_path

    path, out = Path(args.latent), Path(args.output)
    latent, meta = _read_latent(path)
    _check_latent_tensor(path, latent)
    n, h, w = (_positive_int(path, meta, k) for k in ("num_frames", "height", "width"))
    fps = _latent_fps(path, meta, args.fps)
    check_output_path(out)
    check_not_input(out, path)
    model = load_model_from_args(args)
    _require_streaming(model, "decode")
    _check_latent_fits(path, latent, meta, model, (n, h, w))
    bar = tqdm(total=n, unit="frame", desc="decode", leave=False, disable=None)
    with VideoWriter(out, fps) as writer, torch.inference_mode():
        stream = model.decode_stream(latent.to(model.device), num_frames=n, height=h, width=w)
        for x in _model_errors(path, stream):
            writer.write(x[0].float().clamp(-1, 1).cpu())
            bar.update(x.shape[2])
    bar.close()
    print(f"frames       {writer.frames_written} ({w}x{h}) at {fps:g} fps")
    print(f"wrote        {out}")
    return 0


# ---- convert / info ------------------------------------------------------------------------------


def cmd_convert(args: argparse.Namespace) -> int:
    from ..models.dcae_v.official import load_official, preset_name
    from ..utils.atomic import atomic_dir

    model = load_official(args.checkpoint, preset=args.preset, chunk_size=args.chunk_size)
    if args.dtype != "keep":
        model = model.to(torch_dtype(args.dtype))
    with atomic_dir(args.outdir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
    name = preset_name(model.arch) or "custom architecture"
    print(f"model        {name}: DC-AE-V {model.arch.name}, {model.dtype}")
    print(f"parameters   {_count(model.encoder)} encoder + {_count(model.decoder)} decoder")
    print(f"wrote        {args.outdir}")
    return 0


def _count(module: torch.nn.Module) -> str:
    n = sum(p.numel() for p in module.parameters())
    return f"{n / 1e9:.3f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"


def cmd_info(args: argparse.Namespace) -> int:
    import torch

    from ..models.dcae_v import AutoencoderDCV
    from ..models.dcae_v.config import PRESETS, get_preset
    from ..models.dcae_v.loading import load_autoencoder
    from ..models.dcae_v.official import preset_name

    if (
        args.model in PRESETS or f"dc-ae-v-{args.model}" in PRESETS
    ):  # architecture only: no weights to allocate
        overrides = {"chunk_size": args.chunk_size} if args.chunk_size else {}
        with torch.device("meta"):
            model = AutoencoderDCV.from_arch(get_preset(args.model, **overrides))
    else:
        model = load_autoencoder(args.model, preset=args.preset, chunk_size=args.chunk_size)
    a = model.arch
    name = preset_name(a) or "custom architecture"
    print(f"model          {args.model} ({name})")
    print(
        f"notation       {a.name}: {a.spatial_compression}x space, {a.temporal_compression}x time, "
        f"{a.latent_channels} latent channels; compression {a.compression_ratio:g}x"
    )
    print(
        f"temporal mode  {a.temporal_mode.value}"
        + (
            f", chunk {a.chunk_size} frames ({a.latent_chunk_size} latent)"
            if a.temporal_mode.value == "chunk_causal"
            else ""
        )
    )
    print(f"stages         widths {list(a.block_out_channels)}, depths {list(a.layers_per_block)}")
    print(f"parameters     {_count(model.encoder)} encoder + {_count(model.decoder)} decoder, {model.dtype}")
    print(f"latent scale   {a.scaling_factor:g} (diffusion latent = raw latent x scale)")
    t, h, w = 81, 720, 1280
    print(
        f"example        {t}x{h}x{w} video -> latent {model.latent_shape(t, h, w)} "
        f"(padded to {model.padded_shape(t, h, w)} frames/pixels, cropped back on decode)"
    )
    return 0
