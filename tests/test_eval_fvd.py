"""FVD end to end with a tiny TorchScript detector that has the StyleGAN-V I3D calling convention."""

from pathlib import Path

import numpy as np
import pytest
import torch

from dcvideogen.errors import DCVGError
from dcvideogen.metrics.frechet import FeatureStats, frechet_distance
from dcvideogen.metrics.fvd import I3DDetector, fvd, preprocess_for_i3d

from conftest import random_video


class TinyI3D(torch.nn.Module):
    """Stands in for i3d_torchscript.pt: (B, 3, T, 224, 224) in [-1, 1] -> (B, 16) features."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(3, 8, kernel_size=(3, 8, 8), stride=(2, 8, 8))

    def forward(
        self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = True
    ) -> torch.Tensor:
        assert x.shape[-2] == 224 and x.shape[-1] == 224, "the detector takes 224x224 frames"
        assert not rescale and not resize and return_features
        assert bool(x.min() >= -1.0) and bool(x.max() <= 1.0), "values in [-1, 1]"
        h = torch.tanh(self.conv(x))
        return torch.cat([h.mean(dim=(2, 3, 4)), h.amax(dim=(2, 3, 4))], dim=1)


def make_tiny_i3d(path: Path) -> Path:
    torch.manual_seed(0)
    torch.jit.script(TinyI3D()).save(str(path))
    return path


def test_preprocessing():
    x = random_video(b=2, t=3, h=48, w=64)
    y = preprocess_for_i3d(x)
    assert y.shape == (2, 3, 3, 224, 224) and y.dtype == torch.float32 and y.abs().max() <= 1
    flat = torch.zeros(1, 3, 2, 256, 256) + 0.25  # a constant video stays constant
    torch.testing.assert_close(preprocess_for_i3d(flat), torch.full((1, 3, 2, 224, 224), 0.25))


def test_fvd_end_to_end(tmp_path):
    detector = I3DDetector(make_tiny_i3d(tmp_path / "i3d.pt"))
    assert len(detector.sha256) == 64 and "224x224" in detector.description
    real = [random_video(b=1, t=6, h=32, w=40, seed=s) for s in range(8)]
    g = torch.Generator().manual_seed(1)

    def stats_of(videos):
        s, rows = FeatureStats(16), []
        for v in videos:
            f = detector.features(v)
            s.update(f)
            rows.append(f.numpy())
        return s, np.concatenate(rows)

    real_stats, real_f = stats_of(real)
    assert real_stats.count == 8
    assert fvd(real_stats, real_stats) == pytest.approx(0.0, abs=1e-8)
    distances = []
    for sigma in (0.05, 0.3):
        fake = [(v + sigma * torch.randn(v.shape, generator=g)).clamp(-1, 1) for v in real]
        fake_stats, fake_f = stats_of(fake)
        d = fvd(real_stats, fake_stats)
        ref = frechet_distance(
            real_f.mean(0), np.cov(real_f, rowvar=False), fake_f.mean(0), np.cov(fake_f, rowvar=False)
        )
        assert d == pytest.approx(ref, rel=1e-5)  # both float64; the difference is round-off
        distances.append(d)
    assert 0 < distances[0] < distances[1]


def test_detector_errors(tmp_path):
    with pytest.raises(DCVGError, match=r"no such FVD detector file.*i3d_torchscript\.pt.*--fvd-detector"):
        I3DDetector(tmp_path / "missing.pt")
    torch.save({"w": torch.zeros(1)}, tmp_path / "state.pt")
    with pytest.raises(DCVGError, match="not a TorchScript detector"):
        I3DDetector(tmp_path / "state.pt")
