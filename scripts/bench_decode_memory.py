"""Working memory of DC-AE-V's whole-clip `decode` and `forward` against clip length (CPU, random weights).

Each point runs in a fresh subprocess: peak resident set during the call (input allocation included) less
the input's and the output's bytes, so what stays is the memory the call needs on top of its tensors. It
should not grow with the clip: pieces are written into one preallocated output, as the streaming
iterators do.

    python scripts/bench_decode_memory.py --frames 80,160,320,640 --size 128
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys

import torch

from dcvideogen.bench.measure import PeakMemory, machine_info
from dcvideogen.models.dcae_v import AutoencoderDCV

MIB = 2**20
MODES = ("decode", "forward")


def measure(preset: str, mode: str, frames: int, size: int) -> dict[str, int]:
    """One point, in this process: bytes of input, output and the peak resident set growth."""
    torch.manual_seed(0)
    ae = AutoencoderDCV.from_preset(preset).eval()
    f, tc = ae.spatial_compression_ratio, ae.temporal_compression_ratio
    z_channels = ae.arch.latent_channels

    def make_input(t: int) -> torch.Tensor:
        if mode == "decode":
            return torch.randn(1, z_channels, t // tc, size // f, size // f)  # (1, Z, T', h, w)
        return torch.rand(1, 3, t, size, size) * 2 - 1  # (1, 3, T, H, W)

    def run(x: torch.Tensor) -> torch.Tensor:
        return ae.decode(x).sample if mode == "decode" else ae(x).sample

    with torch.inference_mode():
        run(make_input(ae.stream_frames))  # warm-up: kernels, thread pools, allocator arenas
        with PeakMemory(torch.device("cpu")) as peak:
            x = make_input(frames)
            y = run(x)
    return {
        "input": x.numel() * x.element_size(),
        "output": y.numel() * y.element_size(),
        "peak": peak.peak_bytes or 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="dc-ae-v-f32t4c32-tiny", help="DC-AE-V preset, random weights")
    parser.add_argument("--frames", default="80,160,320,640", help="comma-separated clip lengths")
    parser.add_argument("--size", type=int, default=128, help="square frame side in pixels")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated: decode, forward")
    parser.add_argument(
        "--repeats", type=int, default=3, help="fresh processes per point; the table shows the median"
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # "mode,frames": one point
    args = parser.parse_args()
    if args.worker:
        mode, frames = args.worker.split(",")
        print(json.dumps(measure(args.preset, mode, int(frames), args.size)))
        return

    info = machine_info(torch.device("cpu"))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    command = shlex.join(["python", *sys.argv])
    print(f"Machine: {info['cpu']}, {info['cpu_cores']} cores, {info['host_memory_gib']} GiB, "
          f"load average {load:.1f} at start; {platform.python_implementation()} {info['python']}, "
          f"torch {info['torch']}  ")  # fmt: skip
    print(f"Preset {args.preset} (random weights), {args.size}x{args.size}, batch 1, float32, inference  ")
    print(f"Command: `{command}`\n")
    print(
        "| mode | frames | input MiB | output MiB | peak RSS growth MiB | working MiB (median) | working range MiB "
        "| working / first |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for mode in args.modes.split(","):
        base = None
        for frames in (int(n) for n in args.frames.split(",")):
            worker = [sys.executable, __file__, "--preset", args.preset, "--size", str(args.size)]
            points = []
            for _ in range(args.repeats):  # RSS moves by a few MiB from run to run: the median of fresh runs
                done = subprocess.run(
                    [*worker, "--worker", f"{mode},{frames}"], capture_output=True, text=True, check=True
                )
                points.append(json.loads(done.stdout.strip().splitlines()[-1]))
            works = sorted(p["peak"] - p["input"] - p["output"] for p in points)
            point, working = sorted(points, key=lambda p: p["peak"])[len(points) // 2], works[len(works) // 2]
            base = base if base is not None else working
            print(
                f"| {mode} | {frames} | {point['input'] / MIB:.1f} | {point['output'] / MIB:.1f} | "
                f"{point['peak'] / MIB:.1f} | {working / MIB:.1f} | {works[0] / MIB:.1f}-{works[-1] / MIB:.1f} | "
                f"{working / base:.2f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()
