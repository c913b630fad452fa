"""The paper's latency figures (DC-VideoGen, Table 7; Table 2 repeats the 480p point in seconds).

One H100, TensorRT, transformer only, minutes per video at 50 denoising steps; Wan-2.1 generates 81
frames where DC-VideoGen generates 80 (each pipeline's frame rule, see cost_model).
"""

from __future__ import annotations

from dataclasses import dataclass

PAPER_STEPS = 50
PAPER_DEVICE = "H100 (TensorRT)"


@dataclass(frozen=True)
class PaperLatency:
    model: str  # our model name: wan-1.3b, wan-14b
    height: int
    width: int
    frames: int
    base_minutes: float  # Wan-2.1
    ours_minutes: float  # DC-VideoGen

    @property
    def speedup(self) -> float:
        return self.base_minutes / self.ours_minutes


TABLE7: tuple[PaperLatency, ...] = (
    # Resolution sweep, 80 frames, Wan-2.1-1.3B.
    PaperLatency("wan-1.3b", 480, 832, 80, 1.49, 0.24),
    PaperLatency("wan-1.3b", 720, 1280, 80, 5.76, 0.70),
    PaperLatency("wan-1.3b", 1080, 1920, 80, 25.46, 2.27),
    PaperLatency("wan-1.3b", 2160, 3840, 80, 375.12, 25.41),
    # Length sweep at 720p, Wan-2.1-1.3B.
    PaperLatency("wan-1.3b", 720, 1280, 160, 20.18, 1.99),
    PaperLatency("wan-1.3b", 720, 1280, 320, 75.77, 6.03),
    PaperLatency("wan-1.3b", 720, 1280, 640, 296.30, 20.86),
    # Wan-2.1-14B at 720p.
    PaperLatency("wan-14b", 720, 1280, 80, 27.52, 3.58),
)


def paper_latency(model: str, height: int, width: int, frames: int) -> PaperLatency | None:
    """The Table 7 entry for this model and clip size, if the paper has one (81 frames count as 80)."""
    frames = frames - 1 if frames % 4 == 1 else frames
    for row in TABLE7:
        if (row.model, row.height, row.width, row.frames) == (model, height, width, frames):
            return row
    return None
