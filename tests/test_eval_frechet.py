"""Fréchet distance against a scipy.linalg.sqrtm reference; streaming statistics against np.cov."""

import numpy as np
import pytest
import scipy.linalg

from dcvideogen.errors import DCVGError
from dcvideogen.metrics.frechet import FeatureStats, frechet_distance, frechet_distance_of


def reference_frechet(mu1, s1, mu2, s2) -> float:
    """The formula as FID/FVD code writes it, with a general matrix square root."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def random_stats(rng, d, n):
    f = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) + rng.standard_normal(d)
    return f.mean(axis=0), np.cov(f, rowvar=False), f


@pytest.mark.parametrize("d,n", [(4, 50), (32, 200), (64, 40)])  # the last: rank-deficient covariances
def test_matches_sqrtm_reference(d, n):
    rng = np.random.default_rng(d)
    mu1, s1, _ = random_stats(rng, d, n)
    mu2, s2, _ = random_stats(rng, d, n)
    ref = reference_frechet(mu1, s1, mu2, s2)
    assert ref > 1
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-6)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(ref, rel=1e-6)


def test_zero_for_identical_statistics_and_mean_shift_only():
    rng = np.random.default_rng(0)
    mu, s, _ = random_stats(rng, 16, 100)
    assert frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-8)
    shift = np.full(16, 0.5)
    assert frechet_distance(mu, s, mu + shift, s) == pytest.approx(16 * 0.25, rel=1e-7)
    with pytest.raises(ValueError, match="one D"):
        frechet_distance(mu, s, mu[:4], s[:4, :4])


def test_streaming_stats_match_numpy_in_any_batching(tmp_path):
    rng = np.random.default_rng(1)
    _, _, f = random_stats(rng, 8, 103)
    f = f + 1e4  # a large offset: the naive sum-of-squares formula would lose digits here
    stats = FeatureStats(8)
    for chunk in np.array_split(f, [1, 2, 40, 41, 90]):
        stats.update(chunk)
    assert stats.count == 103
    np.testing.assert_allclose(stats.mean, f.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats.cov, np.cov(f, rowvar=False), rtol=1e-9, atol=1e-9)

    stats.save(tmp_path / "s.npz", meta={"key": "abc"})
    loaded, meta = FeatureStats.load(tmp_path / "s.npz")
    assert meta == {"key": "abc"} and loaded.count == 103
    assert frechet_distance_of(stats, loaded) == pytest.approx(0.0, abs=1e-6)

    with pytest.raises(ValueError, match="at least 2 samples"):
        _ = FeatureStats(8).cov
    (tmp_path / "bad.npz").write_bytes(b"junk")
    with pytest.raises(DCVGError, match="not a feature-statistics file"):
        FeatureStats.load(tmp_path / "bad.npz")
