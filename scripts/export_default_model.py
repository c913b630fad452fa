"""Package a trained DC-AE-V run as the bundled default model.

    python scripts/export_default_model.py runs/default --data data/samples/train

Loads RUN/model (the EMA weights `dcvg train-ae` exports) or, with --checkpoint, the raw or EMA weights
of one training checkpoint; sets config.scaling_factor to 1 / std of its latents on 64 training clips
drawn as in training (or to --scaling-factor: a run that trained the decoder's side alone keeps its base's
latents, so it keeps their scale too), and writes it in bfloat16 to src/dcvideogen/assets/dc-ae-v-f32t4c32-small
(config.json + safetensors).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dcvideogen.models.dcae_v import AutoencoderDCV
from dcvideogen.models.dcae_v.latents import estimate_scaling_factor
from dcvideogen.models.dcae_v.loading import default_model_dir
from dcvideogen.training.checkpoint import load_checkpoint
from dcvideogen.training.config import load_config
from dcvideogen.training.data import ClipDataset, scan_media
from dcvideogen.training.trainer_ae import build_model
from dcvideogen.utils.atomic import atomic_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="training run folder (holds config.yaml and model/)")
    parser.add_argument("--data", required=True, help="the training data folder")
    parser.add_argument("--clips", type=int, default=64, help="clips to estimate the latent scale on")
    parser.add_argument("--checkpoint", help="a checkpoint of the run to export instead of RUN/model")
    parser.add_argument(
        "--weights", choices=("ema", "raw"), default="ema", help="with --checkpoint: which weights"
    )
    parser.add_argument(
        "--scaling-factor",
        type=float,
        help="keep this latent scale instead of estimating one (a run whose encoder was frozen: its base's)",
    )
    parser.add_argument("--out", default=str(default_model_dir()), help="output folder")
    args = parser.parse_args()
    run = Path(args.run)
    cfg = load_config(run / "config.yaml")
    if args.checkpoint:
        state = load_checkpoint(args.checkpoint)
        model = build_model(cfg)
        model.load_state_dict(state["model" if args.weights == "raw" else "ema"])
    else:
        model = AutoencoderDCV.from_pretrained(run / "model")
    model = model.float().eval()
    if args.scaling_factor is not None:
        scale = args.scaling_factor
    else:
        files, _ = scan_media(args.data, cfg.data)
        dataset = ClipDataset(files, cfg.data, seed=12345)  # a seed the run did not train with
        scale = estimate_scaling_factor(model, (dataset[i]["video"][None] for i in range(args.clips)))
    model.register_to_config(scaling_factor=float(f"{scale:.4g}"))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(args.out, overwrite=True) as tmp:
        torch.nn.Module.to(model, torch.bfloat16).save_pretrained(tmp)  # skips a spurious diffusers warning
        config = json.loads((tmp / "config.json").read_text())
        config.pop("_name_or_path", None)  # the run's local path: meaningless on a user's machine
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    size = sum(p.stat().st_size for p in Path(args.out).iterdir()) / 2**20
    print(f"scaling factor {scale:.4f}; wrote {args.out} ({size:.1f} MiB, bfloat16)")


if __name__ == "__main__":
    main()
