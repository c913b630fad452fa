"""Clip sizes a bench runs over, parsed from the command line (`480x832,720x1280x160` and `--frames 80`)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import DCVGError


@dataclass(frozen=True)
class ClipSize:
    height: int
    width: int
    frames: int

    @property
    def label(self) -> str:
        return f"{self.height}x{self.width}x{self.frames}"

    @property
    def resolution(self) -> str:
        return f"{self.height}x{self.width}"


def _positive_int(text: str, what: str, flag: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise DCVGError(f"{flag} {what} {text!r}: not a whole number") from None
    if value < 1:
        raise DCVGError(f"{flag} {what} {value}: must be at least 1")
    return value


def parse_frames(text: str) -> list[int]:
    """'80,160' -> [80, 160]."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise DCVGError(f"--frames {text!r}: give frame counts separated by commas, e.g. 80,160")
    return [_positive_int(t, "frame count", "--frames") for t in items]


def parse_clip_sizes(sizes: str, frames: str) -> list[ClipSize]:
    """Sizes 'HxW' (taking every count of `frames`) or 'HxWxF' (that frame count only), in order, without
    repeats: '480x832,720x1280x160' with frames '80' -> 480x832x80, 720x1280x160."""
    frame_counts = parse_frames(frames)
    clips: list[ClipSize] = []
    items = [t.strip().lower() for t in sizes.split(",") if t.strip()]
    if not items:
        raise DCVGError(f"--sizes {sizes!r}: give sizes HxW or HxWxF separated by commas, e.g. 480x832")
    for item in items:
        parts = item.split("x")
        if len(parts) not in (2, 3):
            raise DCVGError(
                f"--sizes item {item!r}: write HEIGHTxWIDTH (480x832) or HEIGHTxWIDTHxFRAMES (720x1280x160)"
            )
        h, w = (_positive_int(p, "size", "--sizes") for p in parts[:2])
        counts = [_positive_int(parts[2], "frame count", "--sizes")] if len(parts) == 3 else frame_counts
        for f in counts:
            clip = ClipSize(h, w, f)
            if clip not in clips:
                clips.append(clip)
    return clips


# The paper's sweep (Table 7): 480p to 2160p at 80 frames, and 720p at 160 to 640 frames.
PAPER_SIZES = "480x832,720x1280,1080x1920,2160x3840,720x1280x160,720x1280x320,720x1280x640"
