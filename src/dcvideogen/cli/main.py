"""`dcvg`: the command line of dcvideogen. Each sub-command lives in its own module with a `register`.

The command modules import torch, diffusers and PyAV inside their commands, so building the parser (and
`dcvg --help`) stays well under a second.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ..errors import DCVGError, first_line
from . import adapt, ae, bench, demo, experiment, generate, train
from . import eval as eval_ae

logger = logging.getLogger("dcvg")

# Modules that add sub-commands: each has register(subparsers) setting `func` on its parser.
COMMAND_MODULES = [ae, train, adapt, eval_ae, generate, bench, demo, experiment]

OOM_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dcvg",
        description="DC-VideoGen: deep-compression video autoencoders (DC-AE-V) and fast video diffusion.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages (and tracebacks)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def _is_out_of_memory(e: BaseException) -> bool:
    """MemoryError, or torch's allocation failures (RuntimeError on CPU, OutOfMemoryError on GPU)."""
    if isinstance(e, MemoryError):
        return True
    return isinstance(e, RuntimeError) and any(m in str(e).lower() for m in OOM_MESSAGES)


def _memory_advice(args: argparse.Namespace) -> str:
    if hasattr(args, "tile"):
        return "tile the frames (--tile 256, or --memory-budget GIB) or use a smaller input (--frames)"
    return "use a smaller input, batch or model"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s", stream=sys.stderr
    )
    for variable in ("DIFFUSERS_VERBOSITY", "TRANSFORMERS_VERBOSITY"):  # read at their first import, later
        os.environ.setdefault(variable, "error")
    for noisy in ("diffusers", "transformers", "urllib3", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    prefix = f"dcvg {args.command}"
    try:
        return int(args.func(args) or 0)
    except DCVGError as e:
        print(f"{prefix}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return 130
    except (MemoryError, RuntimeError) as e:
        if not _is_out_of_memory(e):
            raise
        logger.debug("traceback", exc_info=True)
        print(f"{prefix}: error: out of memory ({first_line(e)}); {_memory_advice(args)}", file=sys.stderr)
        return 2
    except OSError as e:  # the machine's, not ours: a full disk, a permission, a vanished file
        logger.debug("traceback", exc_info=True)
        where = f"{e.filename}: " if e.filename else ""
        print(f"{prefix}: error: {where}{e.strerror or first_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
