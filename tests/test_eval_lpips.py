"""LPIPS against the lpips package's own outputs on seeded random backbones (shared/fixtures/lpips)."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dcvideogen.errors import DCVGError
from dcvideogen.metrics.lpips import BACKBONES, LPIPS, build_features, lpips_per_frame

from conftest import SHARED

FIXTURES = SHARED / "fixtures" / "lpips"


def seeded_backbone(net: str, seed: int) -> dict[str, torch.Tensor]:
    """torchvision-format `features` weights drawn as described in the fixture's meta.json."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, v in build_features(BACKBONES[net]).state_dict().items():
        if key.endswith("weight"):
            sd[key] = torch.randn(v.shape, generator=g) * math.sqrt(2 / v[0].numel())
        else:
            sd[key] = 0.01 * torch.randn(v.shape, generator=g)
    return sd


def save_backbone(path: Path, net: str, seed: int, whole_model: bool = True) -> Path:
    """As torchvision saves a whole model (`features.*` + `classifier.*`) or the features alone."""
    sd = seeded_backbone(net, seed)
    if whole_model:
        sd = {f"features.{k}": v for k, v in sd.items()} | {"classifier.0.weight": torch.zeros(2, 2)}
    torch.save(sd, path)
    return path


@pytest.fixture(scope="module")
def fixture():
    if not FIXTURES.is_dir():
        pytest.skip(f"LPIPS fixtures not found at {FIXTURES} (set DCVG_SHARED)")
    return load_file(str(FIXTURES / "io.safetensors")), json.loads((FIXTURES / "meta.json").read_text())


@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_matches_lpips_package(net, fixture, tmp_path):
    io, meta = fixture
    weights = save_backbone(tmp_path / f"{net}.pth", net, meta["nets"][net]["seed"], whole_model=net == "vgg")
    metric = LPIPS(net=net, backbone_weights=weights)
    got = metric(io["a"], io["b"])
    assert got.shape == (4,)
    torch.testing.assert_close(got, io[f"lpips_{net}"], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(metric(io["a"], io["a"]), torch.zeros(4), rtol=0, atol=1e-7)
    assert f"{net} backbone" in metric.description


def test_loss_api_frozen_and_differentiable(fixture, tmp_path):
    io, _ = fixture
    metric = LPIPS(net="alex", backbone_weights=save_backbone(tmp_path / "a.pth", "alex", 1))
    assert not any(p.requires_grad for p in metric.parameters())
    x = io["a"][:2].clone().requires_grad_(True)
    loss = metric(x, io["b"][:2]).sum()
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # a small step against the gradient lowers the distance
    with torch.no_grad():
        assert metric(x - 1e-2 * x.grad.sign(), io["b"][:2]).sum() < loss


def test_per_frame_video_matches_image_calls(fixture, tmp_path):
    io, _ = fixture
    metric = LPIPS(net="alex", backbone_weights=save_backbone(tmp_path / "a.pth", "alex", 1))
    a = io["a"].view(2, 2, 3, 64, 64).transpose(1, 2)  # (B=2, 3, T=2, H, W)
    b = io["b"].view(2, 2, 3, 64, 64).transpose(1, 2)
    per_frame = lpips_per_frame(metric, a, b, frames_per_batch=3)
    torch.testing.assert_close(per_frame.flatten(), io["lpips_alex"], rtol=1e-4, atol=1e-6)


def test_errors_name_the_missing_file(tmp_path):
    with pytest.raises(DCVGError, match=r"vgg16-397923af\.pth.*backbone_weights=PATH"):
        LPIPS(net="vgg")
    with pytest.raises(DCVGError, match="no such vgg backbone weights file"):
        LPIPS(net="vgg", backbone_weights=tmp_path / "missing.pth")
    with pytest.raises(DCVGError, match="not supported"):
        LPIPS(net="squeezenet", backbone_weights=tmp_path / "x.pth")
    alex = save_backbone(tmp_path / "alex.pth", "alex", 1)
    with pytest.raises(DCVGError, match="not a torchvision vgg state dict"):
        LPIPS(net="vgg", backbone_weights=alex)
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(DCVGError, match="cannot read"):
        LPIPS(net="alex", backbone_weights=tmp_path / "junk.pth")
    with pytest.raises(DCVGError, match=r"lin0\.model\.1\.weight"):
        LPIPS(net="alex", backbone_weights=alex, linear_weights=alex)
