"""Fréchet distance between Gaussians fitted to detector features (FID, FVD), and streaming feature
statistics with constant memory.

    d^2 = |mu_1 - mu_2|^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))        (Dowson & Landau 1982; Heusel et al. 2017)

For covariances S_1, S_2 (symmetric positive semi-definite), (S_1 S_2)^(1/2) is similar to the symmetric
matrix (S_1^(1/2) S_2 S_1^(1/2))^(1/2), so its trace is the sum of the square roots of that matrix's
eigenvalues: two symmetric eigendecompositions in float64 instead of a general `sqrtm`, no complex parts.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..errors import DCVGError
from ..utils.atomic import atomic_file


def _as_float64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix (negative round-off eigenvalues clipped to 0)."""
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Squared Fréchet distance of N(mu1, sigma1) and N(mu2, sigma2), in float64."""
    mu1, mu2 = _as_float64(mu1), _as_float64(mu2)
    s1, s2 = _as_float64(sigma1), _as_float64(sigma2)
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"need means (D,) and covariances (D, D) of one D, got {mu1.shape}, {s1.shape}, {mu2.shape}, {s2.shape}"
        )
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    r1 = _psd_sqrt(s1)
    eig = np.linalg.eigvalsh(r1 @ s2 @ r1)  # eigenvalues of S1^1/2 S2 S1^1/2 = those of S1 S2
    tr_covmean = np.sqrt(np.clip(eig, 0, None)).sum()
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean, 0.0))


class FeatureStats:
    """Running mean and covariance of feature vectors, merged batch by batch (Chan et al. 1979) in
    float64: memory O(D^2) whatever the number of samples. The covariance is the unbiased one
    (ddof 1), as `np.cov` used by the StyleGAN-V FVD code."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.count = 0
        self.mean = np.zeros(dim, dtype=np.float64)
        self.m2 = np.zeros((dim, dim), dtype=np.float64)  # sum of outer products of deviations

    def update(self, features) -> None:
        """Add a batch (N, D) of feature vectors."""
        f = _as_float64(features)
        if f.ndim != 2 or f.shape[1] != self.dim:
            raise ValueError(f"expected features (N, {self.dim}), got {f.shape}")
        n = f.shape[0]
        if n == 0:
            return
        batch_mean = f.mean(axis=0)
        dev = f - batch_mean
        delta = batch_mean - self.mean
        total = self.count + n
        self.m2 += dev.T @ dev + np.outer(delta, delta) * (self.count * n / total)
        self.mean += delta * (n / total)
        self.count = total

    @property
    def cov(self) -> np.ndarray:
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 samples, have {self.count}")
        return self.m2 / (self.count - 1)

    def save(self, path: str | Path, meta: dict | None = None) -> None:
        """Write to `.npz` atomically, with `meta` (JSON) beside the numbers."""
        with atomic_file(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, count=self.count, mean=self.mean, m2=self.m2, meta=np.array(json.dumps(meta or {})))

    @classmethod
    def load(cls, path: str | Path) -> tuple[FeatureStats, dict]:
        try:
            with np.load(path, allow_pickle=False) as data:
                stats = cls(int(data["mean"].shape[0]))
                stats.count = int(data["count"])
                stats.mean = data["mean"].astype(np.float64)
                stats.m2 = data["m2"].astype(np.float64)
                meta = json.loads(str(data["meta"]))
        except (OSError, KeyError, ValueError) as e:
            raise DCVGError(f"{path}: not a feature-statistics file ({e}); delete it to recompute") from e
        return stats, meta


def frechet_distance_of(a: FeatureStats, b: FeatureStats) -> float:
    return frechet_distance(a.mean, a.cov, b.mean, b.cov)
