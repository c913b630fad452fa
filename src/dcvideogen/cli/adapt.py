"""`dcvg adapt cache|train|export`: AE-Adapt-V, a Wan model moved into the DC-AE-V latent space.

    dcvg adapt cache  --config adapt.yaml                 latents of both autoencoders + text (+ image)
    dcvg adapt train  --config adapt.yaml [--resume auto] stage 1a -> 1b -> 2 (or --stage NAME)
    dcvg adapt export RUN OUT [--fuse]                    a pipeline folder, or LoRA + adapted modules

Each runs on one process or on many (`torchrun --nproc_per_node=N -m dcvideogen.cli.main adapt ...`).
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
from pathlib import Path

from ..errors import DCVGError
from .common import require_extra
from .train import interrupted

ADAPT_MODULES = ("transformers", "peft", "accelerate")

STAGE_NAMES = ("align-embedder", "align-head", "finetune")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "adapt",
        help="AE-Adapt-V: adapt a Wan model to a DC-AE-V latent (cache, train, export)",
        description="AE-Adapt-V (DC-VideoGen Sec. 3.3). Multi-GPU: torchrun --nproc_per_node=N -m "
        "dcvideogen.cli.main adapt ...",
    )
    steps = p.add_subparsers(dest="adapt_command", metavar="STEP", required=True)

    c = steps.add_parser("cache", help="encode the captioned clips with both autoencoders and UMT5")
    c.add_argument("--config", required=True, help="adaptation YAML (configs/adapt/*.yaml)")
    c.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. data.cache=DIR")
    c.set_defaults(func=cmd_cache)

    t = steps.add_parser("train", help="run stages 1a (align-embedder), 1b (align-head), 2 (finetune)")
    t.add_argument("--config", required=True, help="adaptation YAML (configs/adapt/*.yaml)")
    t.add_argument("--out", default=None, help="run folder (default: runs/adapt-<config name>)")
    t.add_argument(
        "--resume",
        default=None,
        metavar="auto|CKPT",
        help="continue from the run folder's newest checkpoint (auto) or a checkpoint file",
    )
    t.add_argument(
        "--stage",
        choices=STAGE_NAMES,
        default=None,
        help="run only this stage (from what the run folder holds; a fresh folder starts it from the "
        "random embedder / zero head)",
    )
    t.add_argument(
        "--stop-after", type=int, default=None, metavar="N", help="train at most N steps now, then checkpoint"
    )
    t.add_argument(
        "--full-finetune",
        action="store_true",
        help="stage 2 trains every weight instead of LoRA (paper Fig. 8); same as finetune.full_finetune=true",
    )
    t.add_argument(
        "--skip",
        choices=STAGE_NAMES[:2],
        action="append",
        default=[],
        help="leave out stage 1a or 1b (random embedder / zero head: the paper's Fig. 6 and 11 ablations)",
    )
    t.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. finetune.steps=100"
    )
    t.set_defaults(func=cmd_train)

    e = steps.add_parser("export", help="write the adapted model for `dcvg generate` or as LoRA files")
    e.add_argument("run", help="the run folder of `dcvg adapt train`")
    e.add_argument("out", help="output folder (must not exist or be empty)")
    e.add_argument(
        "--fuse",
        action="store_true",
        help="a pipeline folder with the LoRA merged (else: LoRA + adapted modules for a base Wan pipeline)",
    )
    e.add_argument("--base", default=None, help="the base Wan folder, if it moved since training")
    e.add_argument("--autoencoder", default=None, help="the DC-AE-V, if it moved since training")
    e.set_defaults(func=cmd_export)


def _quiet_other_ranks() -> None:
    if int(os.environ.get("RANK", "0")) != 0:
        logging.getLogger().setLevel(logging.WARNING)


def cmd_cache(args: argparse.Namespace) -> int:
    require_extra("adapt", "AE-Adapt-V", ADAPT_MODULES)
    from ..adapt.cache import build_cache
    from ..adapt.config import load_adapt_config
    from ..training.engine import setup_distributed

    cfg = load_adapt_config(args.config, args.overrides)
    cfg.require("model.base", "data.source", "data.cache")
    _quiet_other_ranks()
    d = setup_distributed()
    report = build_cache(cfg, rank=d.rank, world=d.world, device=d.device)
    if d.main:
        print(f"cache        {cfg.data.cache}")
        print(f"clips        {report.clips} cached, {report.skipped} skipped")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    require_extra("adapt", "AE-Adapt-V", ADAPT_MODULES)
    from ..adapt.config import load_adapt_config
    from ..adapt.train import train_adapt
    from ..training.checkpoint import list_checkpoints
    from ..training.engine import TrainingInterrupted

    overrides = list(args.overrides)
    if args.full_finetune:
        overrides.append("finetune.full_finetune=true")
    for stage in args.skip:
        overrides.append(("align_embedder" if stage == "align-embedder" else "align_head") + ".enabled=false")
    cfg = load_adapt_config(args.config, overrides)
    out = Path(args.out) if args.out else Path("runs") / f"adapt-{Path(args.config).stem}"
    if args.resume is None and list_checkpoints(out / "checkpoints"):
        raise DCVGError(
            f"{out} already holds checkpoints; continue it with --resume auto or choose another --out"
        )
    if args.stop_after is not None and args.stop_after < 1:
        raise DCVGError(f"--stop-after {args.stop_after}: must be at least 1")
    _quiet_other_ranks()
    try:
        result = train_adapt(cfg, out, resume=args.resume, stage=args.stage, stop_after=args.stop_after)
    except TrainingInterrupted as e:
        return interrupted("adapt train", e, resume_command(args, out))
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"run          {out}")
        if result is not None:
            print(f"adapted      {result}")
    return 0


def resume_command(args: argparse.Namespace, out: Path) -> str:
    """The command line that continues the run in `out` (the same switches and overrides)."""
    words = ["dcvg", "adapt", "train", "--config", args.config, "--out", str(out), "--resume", "auto"]
    words += ["--full-finetune"] if args.full_finetune else []
    words += [w for stage in args.skip for w in ("--skip", stage)]
    words += ["--stage", args.stage] if args.stage else []
    return shlex.join([*words, *args.overrides])


def cmd_export(args: argparse.Namespace) -> int:
    require_extra("adapt", "AE-Adapt-V", ADAPT_MODULES)
    from ..adapt.export import export_run

    out = export_run(args.run, args.out, fuse=args.fuse, base=args.base, autoencoder=args.autoencoder)
    print(f"{'pipeline' if args.fuse else 'adapter':<12} {out}")
    return 0
