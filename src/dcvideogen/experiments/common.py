"""What both experiments share: the resumable sequence of steps, the report folder (report.md, PNG plots,
results.json) and the command line (`python -m dcvideogen.experiments.NAME` and `dcvg experiment NAME`
take the same flags).

An experiment run lives in one folder:

    DIR/experiment.json        which experiment, which scale, its settings (a resume must match them)
    DIR/steps/NAME/            what step NAME wrote (data, run folders with checkpoints, measurements)
    DIR/steps/NAME/done.json   the step's result, written last: a step with it is never run again
    DIR/steps.jsonl            one line per step and session: ran (with seconds) or skipped
    DIR/report/                report.md, *.png, results.json (written last, atomically)

A step interrupted half-way leaves no done.json and runs again on `--resume`; the training steps then
continue from their own newest checkpoint (`resume="auto"` of the trainers), so no finished work is lost.
Only light modules are imported here (the command line is built from it); the report's helpers are imported
where they are used.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import DCVGError
from ..utils.atomic import atomic_dir, atomic_file

logger = logging.getLogger("dcvg.experiments")

SCALE_NAMES = ("smoke", "cpu", "gpu")
STATE_FILE = "experiment.json"
EVENTS_FILE = "steps.jsonl"
DONE_FILE = "done.json"
REPORT_DIR = "report"


class UntilReached(Exception):
    """Raised by `Steps` once the step named by `until` is done: the run stops there, resumable."""


# ---- the step sequence ------------------------------------------------------------------------------------


def settings_of(scale: Any) -> dict:
    """A scale dataclass as plain JSON values (tuples as lists)."""
    return json.loads(json.dumps(dataclasses.asdict(scale)))


def first_difference(old: dict, new: dict, prefix: str = "") -> str | None:
    """The first dotted key whose value differs between two nested dicts (None when equal)."""
    for key in [*new, *(k for k in old if k not in new)]:
        a, b = old.get(key, "(unset)"), new.get(key, "(unset)")
        if isinstance(a, dict) and isinstance(b, dict):
            inner = first_difference(a, b, f"{prefix}{key}.")
            if inner is not None:
                return inner
        elif a != b:
            return f"{prefix}{key}={a!r} there, {b!r} now"
    return None


class Steps:
    """The resumable step sequence of one experiment run in `out` (layout in the module docstring).

    `steps(name, fn)` runs `fn(folder)` -> a JSON-able result unless the step is done already, and returns
    the result either way. `until`: stop (raise `UntilReached`) once that step is done."""

    def __init__(
        self,
        out: str | Path,
        experiment: str,
        scale: str,
        settings: dict,
        names: Sequence[str],
        resume: bool = False,
        until: str | None = None,
    ) -> None:
        self.out, self.names, self.until = Path(out).absolute(), list(names), until  # steps keep paths
        if until is not None and until not in self.names:
            raise DCVGError(f"--until {until}: no such step; the steps are {', '.join(self.names)}")
        state = {"experiment": experiment, "scale": scale, "settings": settings}
        self._start(state, resume)
        self.events: list[dict] = []

    def _start(self, state: dict, resume: bool) -> None:
        out, file = self.out, self.out / STATE_FILE
        if out.exists() and not out.is_dir():
            raise DCVGError(f"--out {out}: is a file; give a folder for the experiment")
        if file.is_file():
            old = json.loads(file.read_text())
            if not resume:
                raise DCVGError(
                    f"--out {out}: holds a {old.get('experiment')} run ({old.get('scale')} scale) already; "
                    "continue it with --resume or choose another --out"
                )
            diff = first_difference(old, state)
            if diff is not None:
                raise DCVGError(
                    f"--out {out}: the run there was made with other settings ({diff}); resume it with its own "
                    f"--scale ({old.get('scale')}) or choose another --out"
                )
            return
        if out.is_dir() and any(out.iterdir()):
            raise DCVGError(
                f"--out {out}: the folder is not empty and holds no {STATE_FILE}; choose a new folder"
            )
        if not out.parent.is_dir():
            raise DCVGError(f"--out {out}: the folder {out.parent} does not exist; create it first")
        out.mkdir(exist_ok=True)
        with atomic_file(file) as tmp:
            tmp.write_text(json.dumps(state, indent=2) + "\n")

    def folder(self, name: str) -> Path:
        return self.out / "steps" / name

    def done(self, name: str) -> bool:
        return (self.folder(name) / DONE_FILE).is_file()

    def result(self, name: str) -> dict:
        """The saved result of a finished step."""
        return json.loads((self.folder(name) / DONE_FILE).read_text())["result"]

    def __call__(self, name: str, fn: Callable[[Path], dict]) -> dict:
        assert name in self.names, f"step {name} is not in the declared list"
        folder = self.folder(name)
        if self.done(name):
            self._event(name, "skipped", 0.0)
            logger.info(f"step {name}: done in an earlier session, skipped")
            result = self.result(name)
        else:
            folder.mkdir(parents=True, exist_ok=True)
            logger.info(f"step {name}: running")
            t0 = time.time()
            result = fn(folder)
            seconds = time.time() - t0
            with atomic_file(folder / DONE_FILE) as tmp:
                tmp.write_text(json.dumps({"result": result, "seconds": seconds}, indent=1) + "\n")
            self._event(name, "ran", seconds)
            logger.info(f"step {name}: done in {seconds:.1f} s")
        if name == self.until:
            raise UntilReached(name)
        return result

    def _event(self, name: str, event: str, seconds: float) -> None:
        row = {"step": name, "event": event, "seconds": round(seconds, 3), "time": time.time()}
        self.events.append(row)
        with open(self.out / EVENTS_FILE, "a") as f:
            f.write(json.dumps(row) + "\n")

    def seconds(self) -> dict[str, float]:
        """Wall seconds of each finished step, in the session that finished it (an interrupted training step
        counts only its last session)."""
        return {
            n: json.loads((self.folder(n) / DONE_FILE).read_text())["seconds"]
            for n in self.names
            if self.done(n)
        }


def read_log(run_dir: Path, key: str) -> list[tuple[int, float]]:
    """(step, value) of `key` in a run's log.jsonl."""
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    return [(int(r["step"]), float(r[key])) for r in rows if isinstance(r.get(key), (int, float))]


# ---- the report -------------------------------------------------------------------------------------------


class Report:
    """report.md built section by section, its figures drawn at `write` (skipped with one note when
    matplotlib is missing), and results.json beside them."""

    def __init__(self, title: str) -> None:
        from ..bench.report import have_matplotlib

        self.lines: list[str] = [f"# {title}", ""]
        self.figures: dict[str, tuple[int, Callable[[list[Any]], None]]] = {}
        self.plots = have_matplotlib()
        self._noted = False

    def text(self, *lines: str) -> None:
        self.lines += [*lines, ""]

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        from ..bench.report import markdown_table

        self.lines += [markdown_table(headers, rows), ""]

    def figure(self, file: str, caption: str, draw: Callable[[list[Any]], None], panels: int = 1) -> None:
        """A PNG drawn by `draw(axes)` on `panels` side-by-side axes, shown in the markdown."""
        if self.plots:
            self.figures[file] = (panels, draw)
            self.text(f"![{caption}]({file})")
        elif not self._noted:
            from ..bench.report import PNG_SKIPPED

            self._noted = True
            self.text(f"({PNG_SKIPPED}; every plotted number is in results.json.)")

    def write(self, folder: str | Path, results: dict) -> list[Path]:
        """report.md, the PNGs and results.json into `folder`, replacing it as a whole."""
        from ..bench.report import new_figure

        folder = Path(folder)
        with atomic_dir(folder, overwrite=True) as tmp:
            (tmp / "report.md").write_text("\n".join(self.lines).rstrip() + "\n")
            (tmp / "results.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
            for file, (panels, draw) in self.figures.items():
                import matplotlib.pyplot as plt

                fig, axes = new_figure(panels)
                draw(axes)
                fig.savefig(tmp / file, format="png", dpi=110, bbox_inches="tight")
                plt.close(fig)
        return sorted(folder.iterdir())


def machine_line(env: dict, seconds: dict[str, float], library: str) -> str:
    """The report's last line: the machine and environment of the run, and each step's seconds."""
    gpu = f", {env['gpu']}" if "gpu" in env else ""
    return (
        f"Machine: {env.get('cpu')} ({env.get('cpu_count')} cores, {env.get('torch_threads')} torch threads), "
        f"device {env.get('device')}{gpu}; torch {env.get('torch')}, {library} {env.get(library)}. Step times "
        "(s): " + ", ".join(f"{n} {v:.0f}" for n, v in seconds.items()) + "."
    )


def fmt(value: float | None, digits: int = 2, signed: bool = False) -> str:
    """A number for the report ('-' for None)."""
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def fmt_g(value: float | None, digits: int = 4) -> str:
    """A number with `digits` significant digits ('-' for None): for values whose scale varies (MSEs)."""
    return "-" if value is None else f"{value:.{digits}g}"


def finish_axes(ax: Any, xlabel: str, ylabel: str, title: str = "") -> None:
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def device_name() -> str:
    """cuda when a GPU is visible (as the trainers choose), else cpu."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# ---- the command line -------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser, step_help: str) -> None:
    """The flags every experiment takes."""
    p.add_argument(
        "--out", required=True, type=Path, help="experiment folder (created; its parent must exist)"
    )
    p.add_argument(
        "--scale",
        choices=SCALE_NAMES,
        default="cpu",
        help="smoke: seconds (the tests); cpu: about 2 hours on 2 cores (default); gpu: larger, for a lent GPU",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out: finished steps are skipped, an interrupted training continues from "
        "its newest checkpoint",
    )
    p.add_argument("--until", metavar="STEP", default=None, help=f"stop after this step ({step_help})")


def run_from_args(run: Callable[..., Path | None], args: argparse.Namespace) -> int:
    """Run an experiment with parsed flags; prints where the report is (or where it stopped)."""
    report = run(args.out, scale=args.scale, resume=args.resume, until=args.until)
    if report is None:
        print(f"stopped after step {args.until}; continue with --resume (--out {args.out})")
    else:
        print(f"report       {report / 'report.md'}")
    return 0


def module_main(
    name: str,
    run: Callable[..., Path | None],
    description: str,
    step_help: str,
    argv: list[str] | None = None,
) -> int:
    """`python -m dcvideogen.experiments.NAME`: the flags of `add_arguments`, one-line errors."""
    p = argparse.ArgumentParser(prog=f"python -m dcvideogen.experiments.{name}", description=description)
    add_arguments(p, step_help)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    for noisy in ("diffusers", "transformers", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        return run_from_args(run, args)
    except DCVGError as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{p.prog}: interrupted; continue with --resume", file=sys.stderr)
        return 130
