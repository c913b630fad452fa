#!/usr/bin/env python
"""Seconds per denoising step and peak GPU memory of the DC-VideoGen T2V pipeline (random weights).

    python scripts/bench_pipeline.py --transformer wan-1.3b wan-14b --sizes 480x832 720x1280 --out bench.json

Prints a markdown table (for docs/benchmarks.md) and writes every measurement to --out as JSON.
`--tiny --device cpu` runs the same code at toy size.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

from dcvideogen.bench.pipeline import (
    MARKDOWN_HEADER,
    PipelineBenchConfig,
    bench_pipeline,
    build_random_pipeline,
    markdown_row,
)


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r}: write HEIGHTxWIDTH, e.g. 480x832") from None
    return h, w


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--transformer", nargs="+", default=["wan-1.3b", "wan-14b"], help="wan-1.3b, wan-14b, tiny"
    )
    p.add_argument("--sizes", nargs="+", type=parse_size, default=[(480, 832), (720, 1280)], help="HxW ...")
    p.add_argument("--frames", type=int, default=80, help="frames per video")
    p.add_argument("--steps", type=int, default=4, help="denoising steps (the first is a warm-up)")
    p.add_argument("--offload", choices=["none", "model", "sequential"], default="none", help="CPU offload")
    p.add_argument("--compile", action="store_true", help="torch.compile the transformer blocks")
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"], help="dtype")
    p.add_argument("--tiny", action="store_true", help="toy text encoder and autoencoder (tests, CPU)")
    p.add_argument("--out", type=Path, default=None, help="write the measurements here as JSON")
    args = p.parse_args(argv)

    base = PipelineBenchConfig(
        num_frames=args.frames,
        steps=args.steps,
        device=args.device,
        dtype=args.dtype,
        offload=args.offload,
        compile=args.compile,
        text_encoder="tiny" if args.tiny else "umt5-xxl",
        autoencoder="tiny" if args.tiny else "dc-ae-v-f32t4c32",
    )
    results = []
    print(MARKDOWN_HEADER)
    for name in args.transformer:
        cfg = replace(base, transformer=name)
        pipe = build_random_pipeline(cfg)
        for height, width in args.sizes:
            r = bench_pipeline(replace(cfg, height=height, width=width), pipe)
            results.append(r)
            print(markdown_row(r), flush=True)
        del pipe
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
