"""`dcvg`: the command line of dcvideogen. Each sub-command lives in its own module with a `register`."""

from __future__ import annotations

import argparse
import logging
import sys

from ..errors import DCVGError
from . import adapt, ae, bench, generate, train
from . import eval as eval_ae

# Modules that add sub-commands: each has register(subparsers) setting `func` on its parser.
COMMAND_MODULES = [ae, train, adapt, eval_ae, generate, bench]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dcvg",
        description="DC-VideoGen: deep-compression video autoencoders (DC-AE-V) and fast video diffusion.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s", stream=sys.stderr
    )
    for noisy in ("diffusers", "transformers", "urllib3", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        return int(args.func(args) or 0)
    except DCVGError as e:
        print(f"dcvg {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dcvg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
