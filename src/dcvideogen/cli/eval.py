"""`dcvg eval-ae`: evaluate video autoencoders the way the paper does (PSNR, SSIM, LPIPS, FVD, timings)."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from ..errors import DCVGError
from ..utils.atomic import check_writable_parent
from .common import add_device_args, logger, resolve_device, resolve_dtype

# The LPIPS backbones of dcvideogen.metrics.lpips.BACKBONES, named here so that --help needs no torch
# (tests/test_cli_inputs.py checks that the two agree).
LPIPS_NETS = ("alex", "vgg")


def _factors(text: str) -> tuple[int, ...]:
    try:
        factors = tuple(int(k) for k in text.split(",") if k.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give integer factors separated by commas, e.g. 2,4"
        ) from e
    if not factors or any(k < 2 for k in factors):
        raise argparse.ArgumentTypeError(f"{text!r}: give integer factors >= 2 separated by commas, e.g. 2,4")
    return factors


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval-ae",
        help="evaluate video autoencoders on a folder of videos: PSNR, SSIM, LPIPS, FVD, timings, report",
        description="Evaluate video autoencoders with the paper's reconstruction protocol (80 frames, 256x256 "
        "center crop, one clip per video) and write a report (markdown, CSV, JSON, plot, side-by-side frames).",
    )
    p.add_argument(
        "--model",
        "-m",
        action="append",
        required=True,
        metavar="MODEL",
        help="autoencoder to evaluate (repeat for several): a DC-AE-V folder or official .pt, 'default', or a "
        "diffusers folder of AutoencoderKLWan / AutoencoderKLLTXVideo / AutoencoderKLHunyuanVideo / "
        "AutoencoderKLCogVideoX / AutoencoderDC (or a pipeline folder with vae/)",
    )
    p.add_argument("--data", required=True, help="folder of video files (searched recursively)")
    p.add_argument("--out", required=True, help="report folder to create (must not exist or be empty)")
    p.add_argument("--frames", type=int, default=80, help="frames per clip (paper: 80)")
    p.add_argument(
        "--size", type=int, default=256, help="clip size: short side resized, then center crop (paper: 256)"
    )
    p.add_argument("--clips-per-video", type=int, default=1, help="consecutive clips taken from each video")
    p.add_argument("--frame-stride", type=int, default=1, help="keep every n-th frame of the videos")
    p.add_argument(
        "--long",
        type=_factors,
        default=(),
        metavar="K1,K2",
        help="also evaluate clips K times longer (length generalisation), e.g. 2,4",
    )
    p.add_argument("--max-videos", type=int, default=None, help="use the first N videos (sorted by path)")
    p.add_argument(
        "--lpips-weights",
        default=None,
        metavar="PATH",
        help="torchvision ImageNet weights of the LPIPS backbone (alexnet-owt-7be5be79.pth or "
        "vgg16-397923af.pth); LPIPS is not computed without them",
    )
    p.add_argument(
        "--lpips-net", choices=LPIPS_NETS, default="alex", help="LPIPS backbone (default alex, as lpips)"
    )
    p.add_argument(
        "--lpips-linear",
        default=None,
        metavar="PATH",
        help="LPIPS v0.1 linear weights (default: lpips/weights/v0.1/NET.pth of the installed lpips package)",
    )
    p.add_argument(
        "--fvd-detector",
        default=None,
        metavar="PATH",
        help="StyleGAN-V I3D TorchScript file (i3d_torchscript.pt); FVD is not computed without it",
    )
    p.add_argument(
        "--cache-dir",
        default=None,
        metavar="DIR",
        help="where reference FVD statistics are cached (default $XDG_CACHE_HOME/dcvideogen/fvd-reference, "
        "~/.cache when XDG_CACHE_HOME is unset)",
    )
    p.add_argument("--samples", type=int, default=2, help="clips shown side by side as PNG in the report")
    add_device_args(p)
    p.set_defaults(func=cmd_eval_ae)


def _check_out(out: Path) -> None:
    """Fail before any work when the report folder cannot be written."""
    check_writable_parent(out)
    if out.exists() and not out.is_dir():
        raise DCVGError(f"--out {out}: exists and is a file; give a folder name")
    if out.is_dir() and any(out.iterdir()):
        raise DCVGError(f"--out {out}: the folder is not empty; remove it or choose another report folder")


def _unique_names(aes) -> None:
    seen: dict[str, int] = {}
    for ae in aes:
        n = seen.get(ae.name, 0)
        seen[ae.name] = n + 1
        if n:
            ae.name = f"{ae.name}-{n + 1}"


def command_line(args: argparse.Namespace) -> str:
    """The command as it could be re-run (from the parsed flags, defaults included)."""
    parts = ["dcvg", "eval-ae"]
    for spec in args.model:
        parts += ["--model", spec]
    parts += ["--data", args.data, "--frames", args.frames, "--size", args.size]
    if args.clips_per_video != 1:
        parts += ["--clips-per-video", args.clips_per_video]
    if args.frame_stride != 1:
        parts += ["--frame-stride", args.frame_stride]
    if args.long:
        parts += ["--long", ",".join(map(str, args.long))]
    for flag in ("max_videos", "lpips_weights", "lpips_linear", "fvd_detector", "cache_dir"):
        if getattr(args, flag) is not None:
            parts += [f"--{flag.replace('_', '-')}", getattr(args, flag)]
    if args.lpips_weights:
        parts += ["--lpips-net", args.lpips_net]
    parts += ["--device", args.device, "--dtype", args.dtype, "--out", args.out]
    return " ".join(shlex.quote(str(p)) for p in parts)


def cmd_eval_ae(args: argparse.Namespace) -> int:
    from ..evaluation.adapters import load_video_autoencoder
    from ..evaluation.protocol import Protocol, find_videos
    from ..evaluation.report import check_figures, markdown_table, write_report
    from ..evaluation.runner import EvalConfig, evaluate

    out = Path(args.out)
    _check_out(out)
    protocol = Protocol(
        frames=args.frames,
        size=args.size,
        clips_per_video=args.clips_per_video,
        frame_stride=args.frame_stride,
        long_factors=args.long,
        max_videos=args.max_videos,
    )
    find_videos(args.data, args.max_videos)  # a bad --data fails before any model is loaded
    check_figures()
    if args.samples < 0:
        raise DCVGError(f"--samples {args.samples}: must be 0 or more")
    for flag, value in (("--lpips-weights", args.lpips_weights), ("--lpips-linear", args.lpips_linear)):
        if value is not None and not Path(value).is_file():
            raise DCVGError(f"{flag} {value}: no such file")
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    config = EvalConfig(
        protocol=protocol,
        lpips_net=args.lpips_net,
        lpips_weights=Path(args.lpips_weights) if args.lpips_weights else None,
        lpips_linear=Path(args.lpips_linear) if args.lpips_linear else None,
        fvd_detector=Path(args.fvd_detector) if args.fvd_detector else None,
        cache_dir=Path(args.cache_dir) if args.cache_dir else None,
        sample_clips=args.samples,
        device=str(device),
    )
    aes = []
    for spec in args.model:
        ae = load_video_autoencoder(spec, device=device, dtype=dtype)
        logger.info(
            f"{spec}: {ae.kind} {ae.notation}, compression {ae.compression_ratio:g}x, frames {ae.frame_rule}"
        )
        aes.append(ae)
    _unique_names(aes)
    result = evaluate(aes, args.data, config, specs=args.model)
    files = write_report(result, out, command=command_line(args))
    print(markdown_table(result))
    for why in result.not_computed.values():
        print(f"  {why}")
    print(
        f"clips        {result.clips} from {len(result.videos)} videos ({len(result.skipped)} unreadable, "
        f"{len(result.too_short)} too short, skipped)"
    )
    print(f"wrote        {out} ({', '.join(f.name for f in files[:4])}, {len(files) - 4} frame images)")
    return 0
