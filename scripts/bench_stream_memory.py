"""Peak memory of DC-AE-V's streaming iterators against clip length, with each output piece dropped as
`dcvg reconstruct` / `dcvg decode` do (CPU: resident-set growth; GPU: the allocator's peak).

    python scripts/bench_stream_memory.py --frames 80,160,320,640 [--preset dc-ae-v-f32t4c32-small]
"""

from __future__ import annotations

import argparse

import torch

from dcvideogen.bench.measure import PeakMemory
from dcvideogen.models.dcae_v import AutoencoderDCV


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="dc-ae-v-f32t4c32-small")
    parser.add_argument("--frames", default="80,160,320,640", help="comma-separated clip lengths")
    parser.add_argument("--size", type=int, default=128, help="square frame side in pixels")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    ae = AutoencoderDCV.from_preset(args.preset).to(device).eval()
    step = ae.stream_frames  # frames per piece; latent pieces are step / 4 frames
    f, t = ae.arch.spatial_compression, ae.arch.temporal_compression
    print("| clip HxWxF | encode_stream peak MiB | decode_stream peak MiB |\n|---|---|---|")
    for frames in (int(n) for n in args.frames.split(",")):
        x = torch.rand(1, 3, frames, args.size, args.size, device=device) * 2 - 1
        z = torch.randn(
            1, ae.arch.latent_channels, frames // t, args.size // f, args.size // f, device=device
        )
        with torch.inference_mode():
            with PeakMemory(device) as enc:
                for _ in ae.encode_stream(x[:, :, i : i + step] for i in range(0, frames, step)):
                    pass
            with PeakMemory(device) as dec:
                for _ in ae.decode_stream(
                    z[:, :, i : i + step // t] for i in range(0, frames // t, step // t)
                ):
                    pass
        mib = [m.peak_bytes / 2**20 for m in (enc, dec)]
        print(f"| {args.size}x{args.size}x{frames} | {mib[0]:.1f} | {mib[1]:.1f} |")


if __name__ == "__main__":
    main()
