"""Save two tiny random-weight video autoencoders for trying `dcvg eval-ae` (docs/evaluation.md):
a DC-AE-V f32t4c32 (the test preset, chunk 8) and a Wan-2.1-layout AutoencoderKLWan f8t4c16 with narrow
widths. Random weights: the numbers they get measure the pipeline, not a trained model.

    python scripts/tiny_eval_models.py OUTDIR    # writes OUTDIR/dcae-v-tiny and OUTDIR/wan-tiny
"""

import argparse
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan

from dcvideogen.models.dcae_v import AutoencoderDCV


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", help="folder to write the two model folders into")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args()
    out = Path(args.outdir)
    torch.manual_seed(args.seed)
    AutoencoderDCV.from_preset("dc-ae-v-f32t4c32-tiny").save_pretrained(out / "dcae-v-tiny")
    # Wan 2.1's layout (z_dim 16, 8x space, 4x time, its latents_mean/std defaults) at base width 8.
    AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1).save_pretrained(
        out / "wan-tiny"
    )
    print(f"wrote {out / 'dcae-v-tiny'} and {out / 'wan-tiny'}")


if __name__ == "__main__":
    main()
