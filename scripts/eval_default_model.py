"""The bundled model (or any DC-AE-V) against the naive codec of its compression on the test split.

    python scripts/sample_data.py data/samples
    python scripts/eval_default_model.py data/samples/test [--model default] [--json out.json]

Prints a markdown table: PSNR / SSIM per clip for the model and the naive codec, the gain, and the largest
per-channel mean error (a colour cast), then the mean over the clips.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from dcvideogen.errors import DCVGError
from dcvideogen.evaluation.adapters import DCAEVAdapter, NaiveCodecAdapter
from dcvideogen.evaluation.footage import score_clip, score_table
from dcvideogen.models.dcae_v.loading import load_autoencoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clips", help="folder of test clips (mp4)")
    parser.add_argument("--model", default="default", help="DC-AE-V folder, official .pt or 'default'")
    parser.add_argument("--frames", type=int, default=None, help="first N frames of each clip")
    parser.add_argument("--json", help="also write the scores as JSON here")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = load_autoencoder(args.model).float().eval()
    ae = DCAEVAdapter(model)
    naive = NaiveCodecAdapter(ae.spatial_factor, ae.temporal_factor, ae.latent_channels)
    paths = sorted(Path(args.clips).glob("*.mp4"))
    if not paths:
        raise DCVGError(
            f"{args.clips}: no .mp4 clips; write the splits with python scripts/sample_data.py data/samples"
        )
    scores = [score_clip(ae, naive, p, args.frames) for p in paths]
    print(score_table(scores))
    if args.json:
        Path(args.json).write_text(json.dumps([dataclasses.asdict(s) for s in scores], indent=1))


if __name__ == "__main__":
    try:
        main()
    except DCVGError as e:  # a missing folder or model: one line, no traceback
        raise SystemExit(f"eval_default_model.py: error: {e}") from None
