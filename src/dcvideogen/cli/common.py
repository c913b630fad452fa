"""Flags and helpers shared by sub-commands."""

from __future__ import annotations

import argparse
import logging

import torch

from ..errors import DCVGError
from ..models.dcae_v import AutoencoderDCV
from ..models.dcae_v.loading import load_autoencoder

logger = logging.getLogger("dcvg")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (cuda when available)")
    p.add_argument(
        "--dtype",
        choices=["auto", *DTYPES],
        default="auto",
        help="compute dtype; auto = bfloat16 on GPU, float32 on CPU",
    )


def add_model_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument(
        "--model",
        "-m",
        required=required,
        default=None if required else "default",
        help="model folder (save_pretrained / dcvg convert), official .pt checkpoint, or 'default' "
        "(the small model bundled with the package)",
    )
    p.add_argument(
        "--preset", default=None, help="architecture of an official .pt checkpoint (inferred if omitted)"
    )
    p.add_argument("--chunk-size", type=int, default=None, help="override the chunk size (frames)")
    p.add_argument(
        "--tile", type=int, default=None, metavar="PX", help="always tile frames in PX-pixel squares"
    )
    p.add_argument("--tile-overlap", type=int, default=None, metavar="PX", help="tile overlap (default PX/4)")
    p.add_argument(
        "--memory-budget",
        type=float,
        default=None,
        metavar="GIB",
        help="tile automatically when a piece would need more activation memory than this",
    )


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise DCVGError(f"--device {name!r} is not a device; use cpu, cuda or cuda:N") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DCVGError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


def load_model_from_args(args: argparse.Namespace, allow_random: bool = False) -> AutoencoderDCV:
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    model = load_autoencoder(
        args.model,
        preset=args.preset,
        chunk_size=args.chunk_size,
        device=device,
        dtype=dtype,
        allow_random=allow_random,
    )
    f = model.spatial_compression_ratio
    if args.tile is not None:
        overlap = args.tile_overlap if args.tile_overlap is not None else max(f, args.tile // 4 // f * f)
        try:
            model.enable_tiling(args.tile, overlap)
        except ValueError as e:
            raise DCVGError(f"--tile/--tile-overlap: {e}") from e
    if args.memory_budget is not None:
        model.memory_budget = int(args.memory_budget * 2**30)
    return model


def describe_model(model: AutoencoderDCV, name: str) -> str:
    a = model.arch
    mode = a.temporal_mode.value + (
        f", chunk {a.chunk_size} frames" if a.temporal_mode.value == "chunk_causal" else ""
    )
    return f"{name}: DC-AE-V {a.name} ({mode}), compression {a.compression_ratio:g}x"
