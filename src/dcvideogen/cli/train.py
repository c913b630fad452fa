"""`dcvg train-ae`: train a DC-AE-V on a folder of videos and images (one process, torchrun or accelerate)."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from pathlib import Path

from ..errors import DCVGError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-ae",
        help="train a DC-AE-V autoencoder",
        description="Train a DC-AE-V. Multi-GPU: torchrun --nproc_per_node=N -m dcvideogen.cli.main train-ae ...",
    )
    p.add_argument("--config", default=None, help="YAML config (configs/ae/*.yaml); defaults when omitted")
    p.add_argument("--data", required=True, help="folder of videos (mp4, webm, mov, mkv, gif) and images")
    p.add_argument("--out", default=None, help="run folder (default: runs/<config name>)")
    p.add_argument(
        "--resume",
        default=None,
        metavar="auto|CKPT",
        help="continue from the run folder's newest checkpoint (auto) or from a checkpoint file",
    )
    p.add_argument(
        "--stop-after", type=int, default=None, metavar="N", help="train at most N steps now, then checkpoint"
    )
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. optim.lr=3e-4 steps=2000"
    )
    p.set_defaults(func=cmd_train_ae)


def cmd_train_ae(args: argparse.Namespace) -> int:
    from ..training.checkpoint import list_checkpoints
    from ..training.config import load_config
    from ..training.trainer_ae import TrainingInterrupted, train_ae

    cfg = load_config(args.config, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / (Path(args.config).stem if args.config else "ae")
    if args.resume is None and list_checkpoints(out / "checkpoints"):
        raise DCVGError(
            f"{out} already holds checkpoints; continue it with --resume auto or choose another --out"
        )
    if args.stop_after is not None and args.stop_after < 1:
        raise DCVGError(f"--stop-after {args.stop_after}: must be at least 1")
    if int(os.environ.get("RANK", "0")) != 0:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        model_dir = train_ae(cfg, args.data, out, resume=args.resume, stop_after=args.stop_after)
    except TrainingInterrupted as e:
        return interrupted("train-ae", e, resume_command(args, out))
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"model        {model_dir}")
    return 0


def resume_command(args: argparse.Namespace, out: Path) -> str:
    """The command line that continues the run in `out`."""
    words = ["dcvg", "train-ae"] + (["--config", args.config] if args.config else [])
    return shlex.join(
        [*words, "--data", str(args.data), "--out", str(out), "--resume", "auto", *args.overrides]
    )


def interrupted(command: str, e: KeyboardInterrupt, resume: str) -> int:
    """Exit status 130 after a stop signal (`TrainingInterrupted`), with the command that resumes the run."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"dcvg {command}: {e}; continue with: {resume}", file=sys.stderr)
    return 130
