"""Flags and helpers shared by sub-commands.

Only light modules are imported here: `dcvg --help` must not load torch; what needs it imports it inside.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import DCVGError

if TYPE_CHECKING:
    import torch

    from ..models.dcae_v import AutoencoderDCV

logger = logging.getLogger("dcvg")

DTYPES = ("float32", "bfloat16", "float16")  # names of torch dtypes (torch.float32, ...)
MAX_FPS = 1000.0


def torch_dtype(name: str) -> torch.dtype:
    """One of DTYPES as a torch dtype."""
    import torch

    return getattr(torch, name)


def positive_fps(text: str) -> float:
    """argparse type of --fps: a finite frame rate in (0, MAX_FPS]."""
    try:
        fps = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give frames per second as a number, e.g. 24") from None
    if not math.isfinite(fps) or not 0 < fps <= MAX_FPS:
        raise argparse.ArgumentTypeError(f"{text}: frames per second must be above 0 and at most {MAX_FPS:g}")
    return fps


def check_not_input(output: Path, *inputs: str | Path) -> None:
    """Refuse an output path that is one of the inputs (the same file, through links too): writing it
    would replace the input."""
    if not output.exists():
        return
    for src in inputs:
        if Path(src).exists() and os.path.samefile(src, output):
            raise DCVGError(
                f"{output}: is the input {src}; writing it would replace the input, give another output path"
            )


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
        help="tile automatically when a piece would need more memory than this (activations, carried context, output)",
    )


def resolve_device(name: str) -> torch.device:
    import torch

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
        name = "bfloat16" if device.type == "cuda" else "float32"
    return torch_dtype(name)


def load_model_from_args(args: argparse.Namespace, allow_random: bool = False) -> AutoencoderDCV:
    from ..models.dcae_v.loading import load_autoencoder

    if args.chunk_size is not None and args.chunk_size < 1:
        raise DCVGError(f"--chunk-size {args.chunk_size}: must be a positive number of frames")
    budget = args.memory_budget
    if budget is not None and not (math.isfinite(budget) and budget > 0):
        raise DCVGError(f"--memory-budget {budget}: give the memory to stay under in GiB, e.g. 8")
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


def require_extra(extra: str, what: str, modules: tuple[str, ...]) -> None:
    """DCVGError naming the missing libraries and the extra that installs them (no traceback later)."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise DCVGError(
            f"{what} needs {' and '.join(missing)}; install the extra: pip install 'dcvideogen[{extra}]'"
        )
