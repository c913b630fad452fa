"""Run logging on rank 0: a JSONL file of metrics and, when available, TensorBoard."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

logger = logging.getLogger(__name__)


class RunLog:
    def __init__(self, run_dir: Path, tensorboard: bool) -> None:
        self.path = run_dir / "log.jsonl"
        self.file = open(self.path, "a", buffering=1)  # noqa: SIM115 - lives as long as the run
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:
                logger.info(
                    "tensorboard is not installed; logging to log.jsonl only (pip install 'dcvideogen[train]')"
                )

    def log(self, step: int, metrics: dict[str, float]) -> None:
        clean = {k: (float(v) if math.isfinite(float(v)) else str(float(v))) for k, v in metrics.items()}
        self.file.write(json.dumps({"step": step, **clean}) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(k, float(v), step)

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def plot_metric(run_dir: Path, key: str, out: Path, title: str = "") -> Path | None:
    """A PNG of `key` against the logged step from the run's log.jsonl (None without matplotlib or data)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    points = []
    for line in (run_dir / "log.jsonl").read_text().splitlines():
        row = json.loads(line)
        if key in row and isinstance(row[key], (int, float)):
            points.append((row["step"], row[key]))
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(*zip(*points), marker="o")
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.set_title(title or key)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
