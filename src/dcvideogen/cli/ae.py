"""Autoencoder sub-commands: reconstruct, encode, decode, convert, info."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from ..errors import DCVGError
from ..metrics import psnr_per_frame, ssim_per_frame
from ..models.dcae_v import AutoencoderDCV
from ..models.dcae_v.config import DCAEVConfig
from ..models.dcae_v.official import load_official, preset_name
from ..utils.atomic import atomic_dir, atomic_file
from ..video import VideoWriter, check_output_path, iter_frames, probe_video
from .common import DTYPES, add_device_args, add_model_args, describe_model, load_model_from_args, logger

LATENT_FORMAT = "dcvideogen.latent.v1"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reconstruct", help="encode and decode a video; print PSNR, SSIM and the compression")
    p.add_argument("input", help="video file (mp4, webm, mov, mkv, gif), image, or folder of frames")
    p.add_argument(
        "output", nargs="?", default=None, help="output .mp4 or .gif (default: ./<name>.recon.mp4)"
    )
    p.add_argument("--side-by-side", action="store_true", help="write input | reconstruction side by side")
    p.add_argument("--frames", type=int, default=None, help="use at most this many frames")
    p.add_argument("--start", type=int, default=0, help="first frame to use")
    add_model_args(p)
    add_device_args(p)
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser("encode", help="encode a video to a latent .safetensors file")
    p.add_argument("input", help="video file, image, or folder of frames")
    p.add_argument("output", help="output .safetensors file (raw latent + metadata)")
    p.add_argument("--frames", type=int, default=None, help="use at most this many frames")
    p.add_argument("--start", type=int, default=0, help="first frame to use")
    add_model_args(p)
    add_device_args(p)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("decode", help="decode a latent .safetensors file (from dcvg encode) to video")
    p.add_argument("latent", help="latent .safetensors file written by dcvg encode")
    p.add_argument("output", help="output .mp4 or .gif")
    p.add_argument("--fps", type=float, default=None, help="frame rate (default: the encoded video's)")
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


# ---- reconstruct ------------------------------------------------------------------------------------


def _probe_input(args: argparse.Namespace):
    """Check the input before any heavy work; returns its VideoInfo and the number of frames to use."""
    info = probe_video(args.input)
    if args.frames is not None and args.frames < 1:
        raise DCVGError(f"--frames {args.frames}: must be at least 1")
    total = info.num_frames - args.start if info.num_frames else None
    if args.frames is not None:
        total = min(total, args.frames) if total else args.frames
    return info, total


def _pieces(args: argparse.Namespace, model: AutoencoderDCV):
    return iter_frames(args.input, chunk_frames=model.stream_frames, start=args.start, max_frames=args.frames)


def cmd_reconstruct(args: argparse.Namespace) -> int:
    src = Path(args.input)
    out = Path(args.output) if args.output else Path(f"{src.stem}.recon.mp4")
    info, total = _probe_input(args)
    check_output_path(out)
    model = load_model_from_args(args)
    pieces = _pieces(args, model)
    device = model.device
    logger.info(describe_model(model, str(args.model)))
    logger.info(f"input {src}: {info.width}x{info.height}, {info.fps:g} fps, {total or '?'} frames")

    psnrs, ssims = [], []
    frames = 0
    bar = tqdm(total=total, unit="frame", desc="reconstruct", leave=False, disable=None)
    with VideoWriter(out, info.fps) as writer, torch.inference_mode():
        stream = model.reconstruct_stream(p[None].to(device) for p in pieces)
        for orig, recon in stream:
            orig, recon = orig[0].float().cpu(), recon[0].float().clamp(-1, 1).cpu()  # (3, t, H, W)
            psnrs.append(psnr_per_frame(recon, orig)[0])
            if min(orig.shape[-2:]) >= 11:
                ssims.append(ssim_per_frame(recon, orig)[0])
            writer.write(torch.cat([orig, recon], dim=-1) if args.side_by_side else recon)
            frames += orig.shape[1]
            bar.update(orig.shape[1])
    bar.close()
    z = model.latent_shape(frames, info.height, info.width)
    ssim_txt = f"{torch.cat(ssims).mean().item():.4f}" if ssims else "n/a (frames under 11 px)"
    print(f"frames       {frames} ({info.width}x{info.height})")
    print(f"latent       {tuple(z)} (C, T, H, W); compression {model.arch.compression_ratio:g}x")
    print(f"PSNR         {torch.cat(psnrs).mean().item():.2f} dB")
    print(f"SSIM         {ssim_txt}")
    print(f"wrote        {out}")
    return 0


# ---- encode / decode ------------------------------------------------------------------------------


def cmd_encode(args: argparse.Namespace) -> int:
    out = Path(args.output)
    if out.suffix != ".safetensors":
        raise DCVGError(f"{out}: the latent file must end in .safetensors")
    info, total = _probe_input(args)
    model = load_model_from_args(args)
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
        for z in model.encode_stream(counted()):
            latents.append(z.float().cpu())
    bar.close()
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
    print(f"frames       {frames} ({info.width}x{info.height})")
    print(f"wrote        {out}")
    return 0


def _read_latent(path: Path) -> tuple[torch.Tensor, dict]:
    if not path.is_file():
        raise DCVGError(f"{path}: no such latent file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise DCVGError(
            f"{path}: not a readable .safetensors file ({e}); re-create it with dcvg encode"
        ) from e
    if "latent" not in tensors or meta.get("format") != LATENT_FORMAT:
        raise DCVGError(f"{path}: not a latent written by dcvg encode (no 'latent' tensor / format metadata)")
    return tensors["latent"], meta


def cmd_decode(args: argparse.Namespace) -> int:
    path, out = Path(args.latent), Path(args.output)
    latent, meta = _read_latent(path)
    check_output_path(out)
    model = load_model_from_args(args)
    encoded_by = DCAEVConfig(**json.loads(meta["config"]))
    if encoded_by.replace(scaling_factor=1.0) != model.arch.replace(scaling_factor=1.0):
        raise DCVGError(
            f"{path} was encoded by a DC-AE-V {encoded_by.name} (widths {list(encoded_by.block_out_channels)}, "
            f"chunk {encoded_by.chunk_size}) but --model is a {model.arch.name} (widths "
            f"{list(model.arch.block_out_channels)}, chunk {model.arch.chunk_size}); decode with the model that "
            "encoded it"
        )
    n, h, w = int(meta["num_frames"]), int(meta["height"]), int(meta["width"])
    fps = args.fps or float(meta["fps"])
    bar = tqdm(total=n, unit="frame", desc="decode", leave=False, disable=None)
    with VideoWriter(out, fps) as writer, torch.inference_mode():
        for x in model.decode_stream(latent.to(model.device), num_frames=n, height=h, width=w):
            writer.write(x[0].float().clamp(-1, 1).cpu())
            bar.update(x.shape[2])
    bar.close()
    print(f"frames       {n} ({w}x{h}) at {fps:g} fps")
    print(f"wrote        {out}")
    return 0


# ---- convert / info ------------------------------------------------------------------------------


def cmd_convert(args: argparse.Namespace) -> int:
    model = load_official(args.checkpoint, preset=args.preset, chunk_size=args.chunk_size)
    if args.dtype != "keep":
        model = model.to(DTYPES[args.dtype])
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
    from ..models.dcae_v.config import PRESETS, get_preset
    from ..models.dcae_v.loading import load_autoencoder

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
