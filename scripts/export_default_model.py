"""Package a trained DC-AE-V run as the bundled default model.

    python scripts/export_default_model.py runs/default --data data/samples/train

Loads RUN/model (the EMA weights `dcvg train-ae` exports), sets config.scaling_factor to 1 / std of
its latents on 64 training clips drawn as in training, and writes it in bfloat16 to
src/dcvideogen/assets/dc-ae-v-f32t4c32-small (config.json + safetensors).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from dcvideogen.models.dcae_v import AutoencoderDCV
from dcvideogen.models.dcae_v.latents import estimate_scaling_factor
from dcvideogen.models.dcae_v.loading import default_model_dir
from dcvideogen.training.config import load_config
from dcvideogen.training.data import ClipDataset, scan_media
from dcvideogen.utils.atomic import atomic_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="training run folder (holds config.yaml and model/)")
    parser.add_argument("--data", required=True, help="the training data folder")
    parser.add_argument("--clips", type=int, default=64, help="clips to estimate the latent scale on")
    parser.add_argument("--out", default=str(default_model_dir()), help="output folder")
    args = parser.parse_args()
    run = Path(args.run)
    cfg = load_config(run / "config.yaml")
    model = AutoencoderDCV.from_pretrained(run / "model").float().eval()
    files, _ = scan_media(args.data, cfg.data)
    dataset = ClipDataset(files, cfg.data, seed=12345)  # a seed the run did not train with
    scale = estimate_scaling_factor(model, (dataset[i]["video"][None] for i in range(args.clips)))
    model.register_to_config(scaling_factor=round(scale, 4))
    with atomic_dir(args.out, overwrite=True) as tmp:
        model.to(torch.bfloat16).save_pretrained(tmp)
    size = sum(p.stat().st_size for p in Path(args.out).iterdir()) / 2**20
    print(f"scaling factor {scale:.4f}; wrote {args.out} ({size:.1f} MiB, bfloat16)")


if __name__ == "__main__":
    main()
