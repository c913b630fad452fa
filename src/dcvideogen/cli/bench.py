"""`dcvg bench tokens | transformer | ae`: the cost model, transformer latency, autoencoder latency and memory."""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DCVGError
from .common import add_device_args, logger, resolve_device, resolve_dtype

if TYPE_CHECKING:
    import torch

# Values of dcvideogen.bench that the flags need, named here so that --help needs no torch (importing
# dcvideogen.bench loads the models); tests/test_cli_inputs.py checks that they agree with the library.
PAPER_SIZES = "480x832,720x1280,1080x1920,2160x3840,720x1280x160,720x1280x320,720x1280x640"  # bench.sizes
PAPER_STEPS = 50  # bench.paper
ATTENTION_BACKENDS = ("auto", "flash", "efficient", "cudnn", "math")  # bench.transformer
AE_MODES = ("one-shot", "streaming", "tiled")  # bench.autoencoder.AEMode
GRID_ROUNDINGS = ("pad", "floor")  # bench.cost_model.GridRounding
WAN_MODELS = ("wan-1.3b", "wan-14b", "wan-tiny")  # bench.wan.WAN_CONFIGS


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="cost model, transformer latency and autoencoder latency/memory")
    kinds = bench.add_subparsers(dest="bench", metavar="BENCH", required=True)

    p = kinds.add_parser("tokens", help="tokens, FLOPs per forward and the FLOP ratio (analytic, instant)")
    _add_model_args(p)
    _add_size_args(p, sizes=PAPER_SIZES, frames="80")
    _add_video_args(p)
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="a device's FLOP rate; adds the FLOP-bound minutes per video (a lower bound)",
    )
    _add_out_arg(p, "tokens")
    p.set_defaults(func=cmd_tokens)

    p = kinds.add_parser("transformer", help="measured latency of a Wan transformer, base against adapted")
    _add_model_args(p)
    _add_size_args(p, sizes="480x832", frames="80")
    _add_video_args(p)
    add_device_args(p)
    p.add_argument(
        "--compile", action="store_true", help="torch.compile the transformer (a fresh graph per size)"
    )
    p.add_argument(
        "--compile-mode",
        choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
        default="default",
        help="torch.compile mode (with --compile)",
    )
    p.add_argument(
        "--attention",
        choices=ATTENTION_BACKENDS,
        default="auto",
        help="PyTorch SDPA kernel (auto: PyTorch picks)",
    )
    _add_timing_args(p, warmup=2, repeats=5)
    peak = p.add_mutually_exclusive_group()
    peak.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the device's FLOP bound in TFLOP/s (default: the table of known GPUs; none on CPU)",
    )
    peak.add_argument(
        "--measure-peak",
        action="store_true",
        help="measure the bound as the rate of a large matmul in the bench dtype on this device",
    )
    _add_out_arg(p, "transformer")
    p.set_defaults(func=cmd_transformer)

    p = kinds.add_parser("ae", help="encode/decode time and peak memory of video autoencoders")
    p.add_argument(
        "--ae",
        action="append",
        default=None,
        metavar="NAME|PATH",
        help="autoencoder, repeatable: a DC-AE-V preset (see dcvg info PRESET), wan-2.1 or wan-tiny (random "
        "weights), or a model folder / checkpoint (default: dc-ae-v-f32t4c32 and wan-2.1)",
    )
    _add_size_args(p, sizes="480x832,720x1280", frames="80")
    p.add_argument(
        "--modes",
        default=",".join(AE_MODES),
        help="comma-separated modes: one-shot (whole clip), streaming (cached pieces), tiled (streaming + tiles)",
    )
    p.add_argument(
        "--tile",
        type=int,
        default=256,
        metavar="PX",
        help="tile size in pixels for the tiled mode (default %(default)s)",
    )
    p.add_argument(
        "--tile-overlap",
        type=int,
        default=64,
        metavar="PX",
        help="tile overlap in pixels (default %(default)s)",
    )
    add_device_args(p)
    _add_timing_args(p, warmup=1, repeats=3)
    _add_out_arg(p, "ae")
    p.set_defaults(func=cmd_ae)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="wan-1.3b",
        metavar="NAME|CONFIG",
        help=f"transformer: {', '.join(WAN_MODELS)}, or a WanTransformer3DModel config.json (or its folder)",
    )
    p.add_argument(
        "--ae",
        default="dc-ae-v-f32t4c32",
        help="DC-AE-V preset of the adapted model (patch 1); the base is always the Wan 2.1 VAE with patch 2",
    )
    p.add_argument(
        "--text-tokens",
        type=int,
        default=512,
        help="text tokens L of the cross-attention (default %(default)s)",
    )
    p.add_argument(
        "--rounding",
        choices=GRID_ROUNDINGS,
        default="pad",
        help="frame sizes off the token grid: pad up (default) or floor as the released DC-VideoGen pipeline",
    )


def _add_size_args(p: argparse.ArgumentParser, sizes: str, frames: str) -> None:
    p.add_argument(
        "--sizes",
        default=sizes,
        help=f"comma-separated HEIGHTxWIDTH (each taking every --frames) or HEIGHTxWIDTHxFRAMES (default {sizes})",
    )
    p.add_argument("--frames", default=frames, help=f"comma-separated frame counts (default {frames})")


def _add_video_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--steps",
        type=int,
        default=PAPER_STEPS,
        help="denoising steps per video (default %(default)s, as Table 7)",
    )
    p.add_argument("--cfg", action="store_true", help="classifier-free guidance: two forwards per step")


def _add_timing_args(p: argparse.ArgumentParser, warmup: int, repeats: int) -> None:
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: torch's choice); 1 gives steadier CPU timings on a busy machine",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=warmup,
        help="untimed calls before timing: compilation, caches (default %(default)s)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=repeats,
        help="timed calls; the median is reported (default %(default)s)",
    )
    p.add_argument(
        "--budget",
        type=float,
        default=120.0,
        metavar="S",
        help="seconds per measurement (default %(default)s): slower calls cut warm-up and repeats, "
        "at least one timed call",
    )


def _add_out_arg(p: argparse.ArgumentParser, kind: str) -> None:
    p.add_argument(
        "--out",
        default=f"dcvg-bench-{kind}",
        help=f"output folder for {kind}.csv, {kind}.json and {kind}.png (the PNG needs matplotlib; "
        f"created; default ./dcvg-bench-{kind})",
    )


def _check_positive(value: float | int, flag: str) -> None:
    if value < 1:
        raise DCVGError(f"{flag} {value}: must be at least 1")


def _adapted_layout(args: argparse.Namespace):
    from ..bench.cost_model import WAN_VAE_LAYOUT, dcaev_layout

    layout = dcaev_layout(args.ae)
    if layout.temporal != WAN_VAE_LAYOUT.temporal:
        logger.warning(
            f"{args.ae}: {layout.temporal}x in time where Wan's VAE has {WAN_VAE_LAYOUT.temporal}x"
        )
    return layout


@contextlib.contextmanager
def cpu_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op thread count for the bench, restored afterwards."""
    import torch

    if threads is None:
        yield
        return
    if threads < 1:
        raise DCVGError(f"--threads {threads}: must be at least 1")
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _finish(
    kind: str, title: str, table: str, args, machine, settings, rows, draw: Callable[[], Any], notes=()
) -> int:
    """Print the table and write CSV + JSON, and the PNG `draw()` makes when matplotlib is installed."""
    from ..bench.report import PNG_SKIPPED, describe_run, have_matplotlib, write_outputs

    out = Path(args.out)
    payload = {"bench": kind, "command": ["dcvg", *sys.argv[1:]], "machine": machine, "settings": settings}
    figure = draw() if have_matplotlib() else None
    paths = write_outputs(out, kind, rows, {**payload, "notes": list(notes)}, figure)
    print(describe_run(title, machine, settings))
    print()
    print(table)
    for note in notes:
        print(f"note      {note}")
    if figure is None:
        print(f"note      {PNG_SKIPPED}")
    print("wrote     " + ", ".join(str(p) for p in paths))
    return 0


# ---- commands --------------------------------------------------------------------------------------------


def cmd_tokens(args: argparse.Namespace) -> int:
    import torch

    from ..bench.cost_model import WAN_VAE_LAYOUT, GridRounding
    from ..bench.measure import machine_info
    from ..bench.paper import PAPER_DEVICE
    from ..bench.sizes import parse_clip_sizes
    from ..bench.tokens import token_figure, token_rows, token_table
    from ..bench.wan import load_wan_config

    model = load_wan_config(args.model)
    clips = parse_clip_sizes(args.sizes, args.frames)
    _check_positive(args.text_tokens, "--text-tokens")
    _check_positive(args.steps, "--steps")
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        raise DCVGError(f"--peak-tflops {args.peak_tflops}: must be positive")
    adapted = _adapted_layout(args)
    rounding = GridRounding(args.rounding)
    rows = token_rows(
        model, clips, adapted, rounding, args.text_tokens, args.steps, args.cfg, args.peak_tflops
    )
    settings = {
        "model": model.name,
        "base": WAN_VAE_LAYOUT.name,
        "adapted": adapted.name,
        "text_tokens": args.text_tokens,
        "rounding": rounding.value,
        "steps": args.steps,
        "cfg": args.cfg,
        "peak_tflops": args.peak_tflops,
    }
    machine = machine_info(torch.device("cpu"))
    notes = ["FLOPs per forward, batch 1, FACTS §5 formula (embedders and head excluded)"]
    if any(r["paper_speedup"] for r in rows):
        notes.append(f"paper speedup: measured latency ratio, Table 7 ({PAPER_DEVICE}, {PAPER_STEPS} steps)")
        per_step = "2 forwards (--cfg)" if args.cfg else "1 forward (no --cfg)"
        notes.append(
            f"paper TFLOP/s: FLOPs per forward x {per_step} x {PAPER_STEPS} steps / the paper's time"
        )
    table = token_table(rows)
    draw = functools.partial(token_figure, rows)
    return _finish("tokens", "dcvg bench tokens", table, args, machine, settings, rows, draw, notes)


def _resolve_peak(
    args: argparse.Namespace, device: torch.device, dtype: torch.dtype
) -> tuple[float | None, str]:
    from ..bench.measure import device_name, lookup_peak, measure_matmul_tflops

    if args.peak_tflops is not None:
        if args.peak_tflops <= 0:
            raise DCVGError(f"--peak-tflops {args.peak_tflops}: must be positive")
        return args.peak_tflops, "given with --peak-tflops"
    if args.measure_peak:
        size = 8192 if device.type == "cuda" else 1024
        tflops = measure_matmul_tflops(device, dtype, size=size)
        return tflops, f"measured: {size}x{size} matmul in {str(dtype).removeprefix('torch.')}"
    if device.type == "cuda":
        peak = lookup_peak(device_name(device))
        if peak is not None:
            return peak.tflops, peak.basis
    return None, f"no bound known for {device_name(device)}; pass --peak-tflops or --measure-peak"


def _check_timing_args(args: argparse.Namespace) -> None:
    _check_positive(args.repeats, "--repeats")
    if args.warmup < 0:
        raise DCVGError(f"--warmup {args.warmup}: must be 0 or more")
    if args.budget <= 0:
        raise DCVGError(f"--budget {args.budget}: must be positive seconds")


def cmd_transformer(args: argparse.Namespace) -> int:
    from ..bench.cost_model import GridRounding
    from ..bench.measure import machine_info
    from ..bench.paper import PAPER_DEVICE
    from ..bench.sizes import parse_clip_sizes
    from ..bench.transformer import (
        TransformerBenchSettings,
        run_transformer_bench,
        skipped_lines,
        transformer_figure,
        transformer_table,
    )
    from ..bench.wan import load_wan_config

    model = load_wan_config(args.model)
    clips = parse_clip_sizes(args.sizes, args.frames)
    _check_positive(args.text_tokens, "--text-tokens")
    _check_positive(args.steps, "--steps")
    _check_timing_args(args)
    adapted = _adapted_layout(args)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    with cpu_threads(args.threads):
        machine = machine_info(device)
        peak, basis = _resolve_peak(args, device, dtype)
        s = TransformerBenchSettings(
            model=model,
            adapted=adapted,
            clips=tuple(clips),
            device=device,
            dtype=dtype,
            warmup=args.warmup,
            repeats=args.repeats,
            budget_s=args.budget,
            compile=args.compile,
            compile_mode=args.compile_mode,
            attention=args.attention,
            text_tokens=args.text_tokens,
            rounding=GridRounding(args.rounding),
            steps=args.steps,
            cfg=args.cfg,
            peak_tflops=peak,
        )
        rows = run_transformer_bench(s)
    settings = {**s.describe(), "peak_basis": basis}
    notes = [*skipped_lines(rows), f"FLOP bound: {basis}"]
    notes.append("TFLOP/s: all FLOPs of the FACTS §5 formula, attention included, over the median latency")
    if any(r["paper_speedup"] for r in rows):
        notes.append(f"paper: Table 7, {PAPER_DEVICE}, transformer only, {PAPER_STEPS} steps")
    table = transformer_table(rows, args.steps, args.cfg)
    draw = functools.partial(transformer_figure, rows)
    return _finish("transformer", "dcvg bench transformer", table, args, machine, settings, rows, draw, notes)


def cmd_ae(args: argparse.Namespace) -> int:
    from ..bench.autoencoder import AEBenchSettings, AEMode, ae_figure, ae_table, run_ae_bench
    from ..bench.measure import machine_info
    from ..bench.sizes import parse_clip_sizes

    names = tuple(args.ae or ("dc-ae-v-f32t4c32", "wan-2.1"))
    clips = parse_clip_sizes(args.sizes, args.frames)
    try:
        modes = tuple(AEMode(m.strip()) for m in args.modes.split(",") if m.strip())
    except ValueError:
        raise DCVGError(
            f"--modes {args.modes!r}: choose among {', '.join(m.value for m in AEMode)}, comma-separated"
        ) from None
    if not modes:
        raise DCVGError(f"--modes {args.modes!r}: give at least one mode")
    _check_timing_args(args)
    if not 0 <= args.tile_overlap < args.tile:
        raise DCVGError(f"--tile {args.tile} --tile-overlap {args.tile_overlap}: need 0 <= overlap < tile")
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    s = AEBenchSettings(
        autoencoders=names,
        clips=tuple(clips),
        modes=modes,
        device=device,
        dtype=dtype,
        tile=args.tile,
        tile_overlap=args.tile_overlap,
        warmup=args.warmup,
        repeats=args.repeats,
        budget_s=args.budget,
    )
    with cpu_threads(args.threads):
        machine = machine_info(device)
        rows = run_ae_bench(s)
    if device.type == "cpu":
        notes = ["peak memory on CPU: resident-set growth sampled every 2 ms (approximate)"]
    else:
        notes = ["peak memory: torch's peak allocation above what was allocated before the call"]
    draw = functools.partial(ae_figure, rows)
    return _finish("ae", "dcvg bench ae", ae_table(rows), args, machine, s.describe(), rows, draw, notes)
