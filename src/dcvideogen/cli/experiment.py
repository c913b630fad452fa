"""`dcvg experiment NAME`: reproduce one of the paper's two claims at small scale on real footage.

    dcvg experiment temporal_modes --out runs/exp-temporal [--scale smoke|cpu|gpu] [--resume]
    dcvg experiment adaptation --out runs/exp-adapt

The same flags as `python -m dcvideogen.experiments.NAME`; what each measures is in docs/experiments.md.
"""

from __future__ import annotations

import argparse
import importlib

from ..experiments import EXPERIMENTS
from ..experiments.common import add_arguments, run_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "experiment",
        help="reproduce a claim of the paper at small scale (temporal_modes, adaptation)",
        description="Train, evaluate and report one of the paper's claims at small scale on real footage: "
        "temporal_modes (chunk-causal against causal and non-causal on longer clips) or adaptation (AE-Adapt-V "
        "against a random embedder and head). Writes DIR/report/ (report.md, PNG plots, results.json).",
    )
    p.add_argument("name", choices=EXPERIMENTS, help="which experiment")
    add_arguments(p, "the names of DIR/steps/*, listed in docs/experiments.md")
    p.set_defaults(func=cmd_experiment)


def cmd_experiment(args: argparse.Namespace) -> int:
    module = importlib.import_module(f"dcvideogen.experiments.{args.name}")
    return run_from_args(module.run, args)
