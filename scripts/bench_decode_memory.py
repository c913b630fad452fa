"""Working memory of DC-AE-V's whole-clip `decode` and `forward` against clip length (CPU, random weights).

Working memory = the peak of bytes torch allocates during the call (`bench.measure.allocated_peak_bytes`:
the CPU allocator's events, exact and the same on every run) less the output's bytes; the input exists
before the call and is not counted. It should not grow with the clip: pieces are written into one
preallocated output, as the streaming iterators do. (The resident set was measured before and moved by up to
10 MiB from run to run, more than the bound it had to check.)

    python scripts/bench_decode_memory.py --frames 80,160,320,640 --size 128
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys

import torch

from dcvideogen.bench.measure import allocated_peak_bytes, machine_info
from dcvideogen.models.dcae_v import AutoencoderDCV

MIB = 2**20
MODES = ("decode", "forward")


def measure(ae: AutoencoderDCV, mode: str, frames: int, size: int) -> dict[str, int]:
    """One point: bytes of input and output, and the allocator's peak during the call."""
    f, tc = ae.spatial_compression_ratio, ae.temporal_compression_ratio
    torch.manual_seed(0)
    if mode == "decode":
        x = torch.randn(1, ae.arch.latent_channels, frames // tc, size // f, size // f)  # (1, Z, T', h, w)
    else:
        x = torch.rand(1, 3, frames, size, size) * 2 - 1  # (1, 3, T, H, W)
    with torch.inference_mode():
        y, peak = allocated_peak_bytes(lambda: ae.decode(x).sample if mode == "decode" else ae(x).sample)
    return {"input": x.numel() * x.element_size(), "output": y.numel() * y.element_size(), "peak": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="dc-ae-v-f32t4c32-tiny", help="DC-AE-V preset, random weights")
    parser.add_argument("--frames", default="80,160,320,640", help="comma-separated clip lengths")
    parser.add_argument("--size", type=int, default=128, help="square frame side in pixels")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated: decode, forward")
    args = parser.parse_args()

    info = machine_info(torch.device("cpu"))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    command = shlex.join(["python", *sys.argv])
    print(f"Machine: {info['cpu']}, {info['cpu_cores']} cores, {info['host_memory_gib']} GiB, "
          f"load average {load:.1f} at start; {platform.python_implementation()} {info['python']}, "
          f"torch {info['torch']}  ")  # fmt: skip
    print(f"Preset {args.preset} (random weights), {args.size}x{args.size}, batch 1, float32, inference  ")
    print(f"Command: `{command}`\n")
    print("| mode | frames | input MiB | output MiB | allocated peak MiB | working MiB | working / first |")
    print("|---|---|---|---|---|---|---|")
    torch.manual_seed(0)
    ae = AutoencoderDCV.from_preset(args.preset).eval()
    for mode in args.modes.split(","):
        base = None
        for frames in (int(n) for n in args.frames.split(",")):
            point = measure(ae, mode, frames, args.size)
            working = point["peak"] - point["output"]
            base = base if base is not None else working
            print(
                f"| {mode} | {frames} | {point['input'] / MIB:.2f} | {point['output'] / MIB:.2f} | "
                f"{point['peak'] / MIB:.2f} | {working / MIB:.2f} | {working / base:.3f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()
