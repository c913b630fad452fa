"""Evaluate video autoencoders on the clips of a folder with one protocol (Table 1 of the paper).

Each video is decoded once; every clip goes through every autoencoder (encode and decode timed
separately) and is scored with PSNR and SSIM (always), LPIPS (with backbone weights) and FVD features
(with the I3D detector). Everything streams: per-clip numbers and running feature statistics are all
that is kept. The reference (real) FVD statistics are cached on disk under a key of the data files,
the protocol and the detector file's hash.
"""

from __future__ import annotations

import logging
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from ..errors import DCVGError
from ..metrics.frechet import FeatureStats
from ..metrics.fvd import I3D_KWARGS, I3D_SIZE, I3DDetector, fvd
from ..metrics.lpips import LPIPS, lpips_per_frame
from ..metrics.psnr import psnr_per_frame
from ..metrics.ssim import ssim_per_frame
from ..utils.hashing import file_sha256, json_sha256
from ..video import VideoError
from ..video.io import to_uint8
from .adapters import VideoAutoencoder
from .protocol import Protocol, data_fingerprint, find_videos, read_clips

logger = logging.getLogger(__name__)

NO_LPIPS = "not computed: no LPIPS backbone weights given (--lpips-weights PATH)"
NO_FVD = "not computed: no FVD detector given (--fvd-detector PATH)"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dcvideogen" / "fvd-reference"


@dataclass(frozen=True)
class EvalConfig:
    protocol: Protocol = field(default_factory=Protocol)
    lpips_net: str = "alex"  # the lpips package's default for evaluation
    lpips_weights: Path | None = None  # torchvision ImageNet weights of the backbone
    lpips_linear: Path | None = None  # v0.1 linear layers (default: the lpips package's data file)
    fvd_detector: Path | None = None  # StyleGAN-V i3d_torchscript.pt
    cache_dir: Path | None = None  # reference FVD statistics (default: ~/.cache/dcvideogen/fvd-reference)
    sample_clips: int = 2  # clips shown side by side in the report
    device: str = "cpu"  # where the metrics' networks run


@dataclass
class ClipScore:
    video: str
    clip: int
    frames: int
    psnr: float
    ssim: float
    lpips: float | None = None


@dataclass
class ModelRun:
    """All that is kept of one autoencoder's evaluation."""

    name: str
    spec: str
    kind: str
    notation: str
    compression_ratio: float
    frame_rule: str
    padded_frames: int  # frames added at the end of each clip to meet the frame rule (excluded from metrics)
    dtype: str
    device: str
    scores: list[ClipScore] = field(default_factory=list)
    long_scores: dict[int, list[ClipScore]] = field(default_factory=dict)
    encode_seconds: list[float] = field(default_factory=list)
    decode_seconds: list[float] = field(default_factory=list)
    features: FeatureStats | None = None
    fvd: float | None = None
    samples: dict[str, torch.Tensor] = field(default_factory=dict)  # clip -> (F, H, W, 3) uint8


@dataclass
class Evaluation:
    config: EvalConfig
    data: str
    videos: list[str]
    runs: list[ModelRun]
    clips: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # unreadable: (video, reason)
    too_short: list[tuple[str, int]] = field(default_factory=list)  # (video, frames it has)
    sample_frames: list[int] = field(default_factory=list)  # frame indices shown side by side
    reference_samples: dict[str, torch.Tensor] = field(default_factory=dict)
    lpips: dict | None = None  # description and file hashes
    fvd: dict | None = None  # detector file, hash, reference statistics source
    not_computed: dict[str, str] = field(default_factory=dict)  # metric -> why
    seconds: float = 0.0
    environment: dict = field(default_factory=dict)


# ---- pieces -------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def timed_reconstruct(ae: VideoAutoencoder, x: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """(B, 3, T, H, W) -> (reconstruction with x's shape, clamped to [-1, 1], float32 on x's device,
    encode seconds, decode seconds). Padded frames and pixels are cropped away before returning."""
    t, h, w = x.shape[2:]
    xp = ae.pad(x.to(ae.device, ae.dtype))
    _sync(ae.device)
    t0 = time.perf_counter()
    z = ae.encode(xp)
    _sync(ae.device)
    t1 = time.perf_counter()
    y = ae.decode(z)
    _sync(ae.device)
    t2 = time.perf_counter()
    y = y[:, :, :t, :h, :w].float().clamp(-1, 1).to(x.device)
    return y, t1 - t0, t2 - t1


@torch.inference_mode()
def score_clip(x: torch.Tensor, y: torch.Tensor, lpips: LPIPS | None) -> tuple[float, float, float | None]:
    """PSNR, SSIM and LPIPS of one clip (1, 3, T, H, W): per frame, averaged over frames."""
    p = psnr_per_frame(y, x).mean().item()
    s = ssim_per_frame(y, x).mean().item()
    d = lpips_per_frame(lpips, y, x).mean().item() if lpips is not None else None
    return p, s, d


def environment(device: torch.device) -> dict:
    import av
    import diffusers
    import numpy

    import dcvideogen

    env = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "dcvideogen": dcvideogen.__version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "numpy": numpy.__version__,
        "av": av.__version__,
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def _load_lpips(config: EvalConfig, device: torch.device) -> tuple[LPIPS | None, dict | None]:
    if config.lpips_weights is None:
        return None, None
    metric = LPIPS(config.lpips_net, config.lpips_weights, config.lpips_linear).to(device)
    info = {
        "net": metric.net,
        "version": "v0.1",
        "description": metric.description,
        "backbone_file": str(metric.backbone_path),
        "backbone_sha256": file_sha256(metric.backbone_path),
        "linear_file": str(metric.linear_path),
        "linear_sha256": file_sha256(metric.linear_path),
    }
    return metric, info


def _reference_cache_file(config: EvalConfig, fingerprint: list, detector: I3DDetector) -> tuple[Path, str]:
    p = config.protocol
    key = json_sha256(
        {
            "data": fingerprint,
            "protocol": {k: v for k, v in p.to_dict().items() if k != "long_factors"},
            "detector_sha256": detector.sha256,
            "detector_input": {"size": I3D_SIZE, **I3D_KWARGS},
        }
    )
    folder = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    return folder / f"i3d-{key[:32]}.npz", key


# ---- the evaluation -----------------------------------------------------------------------------------


def evaluate(
    autoencoders: list[VideoAutoencoder], data: str | Path, config: EvalConfig, specs: list[str] | None = None
) -> Evaluation:
    """Evaluate every autoencoder on the clips of `data` under `config.protocol`."""
    start = time.perf_counter()
    protocol = config.protocol
    device = torch.device(config.device)
    videos = find_videos(data, protocol.max_videos)
    root = Path(data)
    specs = specs or [ae.name for ae in autoencoders]
    if len(specs) != len(autoencoders):
        raise ValueError(f"{len(specs)} specs for {len(autoencoders)} autoencoders")
    length = protocol.frames
    runs = [
        ModelRun(
            name=ae.name,
            spec=str(spec),
            kind=ae.kind,
            notation=ae.notation,
            compression_ratio=ae.compression_ratio,
            frame_rule=ae.frame_rule,
            padded_frames=ae.valid_num_frames(length) - length,
            dtype=str(ae.dtype).removeprefix("torch."),
            device=str(ae.device),
        )
        for ae, spec in zip(autoencoders, specs)
    ]
    result = Evaluation(
        config=config,
        data=str(data),
        videos=[v.relative_to(root).as_posix() for v in videos],
        runs=runs,
        sample_frames=sorted({0, length // 2, length - 1}),
        environment=environment(device),
    )

    lpips, result.lpips = _load_lpips(config, device)
    if lpips is None:
        result.not_computed["lpips"] = NO_LPIPS
    detector, real_stats, cache_file, cache_key = None, None, None, None
    if config.fvd_detector is not None:
        detector = I3DDetector(config.fvd_detector, device)
        cache_file, cache_key = _reference_cache_file(config, data_fingerprint(root, videos), detector)
        if cache_file.is_file():
            real_stats, _ = FeatureStats.load(cache_file)
            logger.info(f"FVD reference statistics from the cache: {cache_file} ({real_stats.count} clips)")
        result.fvd = {
            "detector_file": str(detector.path),
            "detector_sha256": detector.sha256,
            "description": detector.description,
            "reference_statistics": str(cache_file),
            "reference_from_cache": real_stats is not None,
            "cache_key": cache_key,
        }
    else:
        result.not_computed["fvd"] = NO_FVD
    compute_real = detector is not None and real_stats is None

    bar = tqdm(videos, desc="eval-ae", unit="video", disable=None, leave=False)
    for path in bar:
        name = path.relative_to(root).as_posix()
        try:
            video = read_clips(path, name, protocol)
        except VideoError as e:
            logger.warning(f"skipped {name}: {e}")
            result.skipped.append((name, str(e)))
            continue
        if not video.clips:
            result.too_short.append((name, video.frames_read))
            continue
        for i, clip in enumerate(video.clips):
            x = clip[None].to(device)  # (1, 3, T, S, S)
            clip_name = f"{name}#{i}"
            show = result.clips < config.sample_clips
            if show:
                result.reference_samples[clip_name] = torch.from_numpy(
                    to_uint8(clip[:, result.sample_frames])
                )
            if compute_real:
                f = detector.features(x)
                if real_stats is None:
                    real_stats = FeatureStats(f.shape[1])
                real_stats.update(f)
            for ae, run in zip(autoencoders, runs):
                y, enc, dec = timed_reconstruct(ae, x)
                run.encode_seconds.append(enc)
                run.decode_seconds.append(dec)
                p, s, d = score_clip(x, y, lpips)
                run.scores.append(ClipScore(name, i, length, p, s, d))
                if detector is not None:
                    f = detector.features(y)
                    if run.features is None:
                        run.features = FeatureStats(f.shape[1])
                    run.features.update(f)
                if show:
                    run.samples[clip_name] = torch.from_numpy(to_uint8(y[0, :, result.sample_frames].cpu()))
            result.clips += 1
        for k, long_clip in video.long.items():  # length generalisation: the first k * length frames
            x = long_clip[None].to(device)
            for ae, run in zip(autoencoders, runs):
                y, _, _ = timed_reconstruct(ae, x)
                p, s, d = score_clip(x, y, lpips)
                run.long_scores.setdefault(k, []).append(ClipScore(name, 0, x.shape[2], p, s, d))
        bar.set_postfix(clips=result.clips, skipped=len(result.skipped) + len(result.too_short))
    bar.close()

    if result.clips == 0:
        raise DCVGError(
            f"--data {data}: no clip of {length} frames could be read (video files: {len(videos)}, unreadable: "
            f"{len(result.skipped)}, shorter than {length} frames: {len(result.too_short)}); check the files or "
            "lower --frames"
        )
    if detector is not None:
        _finish_fvd(result, real_stats, compute_real, cache_file, cache_key)
    result.seconds = time.perf_counter() - start
    return result


def _finish_fvd(result: Evaluation, real_stats, computed: bool, cache_file: Path, cache_key: str) -> None:
    if real_stats.count != result.clips:
        raise DCVGError(
            f"{cache_file}: the cached FVD reference statistics hold {real_stats.count} clips but this run read "
            f"{result.clips}; delete the file to recompute them"
        )
    if computed:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        real_stats.save(cache_file, meta={"key": cache_key, "clips": result.clips, "data": result.data})
        logger.info(f"FVD reference statistics cached in {cache_file}")
    if result.clips < 2:
        result.not_computed["fvd"] = f"not computed: FVD needs at least 2 clips, {result.clips} was read"
        return
    for run in result.runs:
        run.fvd = fvd(real_stats, run.features)
    if result.clips <= real_stats.dim:
        result.fvd["note"] = (
            f"{result.clips} clips for {real_stats.dim}-d features: the covariances are rank-deficient and FVD is "
            "biased upwards; compare models only on the same clips"
        )


def summarize(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None
