"""LPIPS v0.1 (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric").

LPIPS(x, y) = sum_l mean_hw( w_l . (n(f_l(x)) - n(f_l(y)))^2 ), where f_l are five ReLU feature maps of an
ImageNet backbone (VGG16 or AlexNet), n normalises each feature vector to unit length over channels, and
w_l are the learned non-negative linear weights of v0.1 (Eq. 1 of the paper).

The backbones are written here in plain torch with torchvision's `features` layout, so torchvision's own
state dicts (`vgg16-397923af.pth`, `alexnet-owt-7be5be79.pth`) load as they are; the linear weights are
read from the `lpips` package's data files (`lpips/weights/v0.1/{vgg,alex}.pth`) without importing it.
The two variants give quite different numbers: reports must say which one was used.

    m = LPIPS(net="vgg", backbone_weights="vgg16-397923af.pth")   # frozen nn.Module
    d = m(x, y)                                                  # (N,) for (N, 3, H, W) in [-1, 1]
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import DCVGError

EPS = 1e-10  # in the unit normalisation of features, as in the reference implementation
# The reference ScalingLayer: inputs in [-1, 1] are shifted and scaled towards ImageNet statistics.
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


# ---- backbones ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Conv:
    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int = 1
    padding: int = 1


@dataclass(frozen=True)
class Pool:
    kernel_size: int
    stride: int


RELU = "relu"  # a ReLU layer (no parameters)


@dataclass(frozen=True)
class BackboneSpec:
    """torchvision's `features` Sequential, up to the last tapped ReLU; `taps` index the tapped ReLUs."""

    layers: tuple[Conv | Pool | str, ...]
    taps: tuple[int, ...]
    weights_file: str  # torchvision's ImageNet file name, for error messages
    weights_url: str

    @property
    def channels(self) -> tuple[int, ...]:
        out, width = [], 3
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Conv):
                width = layer.out_channels
            if i in self.taps:
                out.append(width)
        return tuple(out)


def _vgg16_layers() -> tuple[Conv | Pool | str, ...]:
    layers: list[Conv | Pool | str] = []
    width = 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512):
        if v == "M":
            layers.append(Pool(2, 2))
        else:
            layers += [Conv(width, v, 3), RELU]
            width = v
    return tuple(layers)


BACKBONES: dict[str, BackboneSpec] = {
    # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
    "vgg": BackboneSpec(
        _vgg16_layers(),
        taps=(3, 8, 15, 22, 29),
        weights_file="vgg16-397923af.pth",
        weights_url="https://download.pytorch.org/models/vgg16-397923af.pth",
    ),
    # relu1 .. relu5
    "alex": BackboneSpec(
        (
            Conv(3, 64, 11, stride=4, padding=2),
            RELU,
            Pool(3, 2),
            Conv(64, 192, 5, padding=2),
            RELU,
            Pool(3, 2),
            Conv(192, 384, 3),
            RELU,
            Conv(384, 256, 3),
            RELU,
            Conv(256, 256, 3),
            RELU,
        ),
        taps=(1, 4, 7, 9, 11),
        weights_file="alexnet-owt-7be5be79.pth",
        weights_url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    ),
}


def build_features(spec: BackboneSpec) -> nn.Sequential:
    """The backbone as an nn.Sequential whose state-dict keys are torchvision's (`0.weight`, ...)."""
    modules: list[nn.Module] = []
    for layer in spec.layers:
        if isinstance(layer, Conv):
            modules.append(
                nn.Conv2d(
                    layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding
                )
            )
        elif isinstance(layer, Pool):
            modules.append(nn.MaxPool2d(layer.kernel_size, layer.stride))
        else:
            modules.append(nn.ReLU())
    return nn.Sequential(*modules)


def _load_tensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise DCVGError(f"{path}: no such {what} file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # any unreadable file is the user's input error
        raise DCVGError(f"{path}: cannot read the {what} ({type(e).__name__}: {e})") from e
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise DCVGError(f"{path}: the {what} file holds a {type(sd).__name__}, not a state dict")
    return sd


def backbone_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys of a torchvision model (`features.0.weight`, `classifier.*`) or of its `features` alone
    (`0.weight`) -> the `features` keys."""
    if any(k.startswith("features.") for k in state):
        return {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    return dict(state)


# ---- the metric ---------------------------------------------------------------------------------------


def lpips_package_weights(net: str) -> Path:
    """Path of the lpips package's v0.1 linear weights for `net`, found without importing lpips."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        raise DCVGError(
            f"the LPIPS v0.1 linear weights lpips/weights/v0.1/{net}.pth were not found: the lpips package is "
            f"not installed; run `pip install --no-deps lpips` or pass linear_weights=PATH ({net}.pth from "
            "github.com/richzhang/PerceptualSimilarity, folder lpips/weights/v0.1)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "weights" / "v0.1" / f"{net}.pth"
    if not path.is_file():
        raise DCVGError(
            f"{path}: missing from the installed lpips package; reinstall it (`pip install --no-deps "
            f"--force-reinstall lpips`) or pass linear_weights=PATH"
        )
    return path


class LPIPS(nn.Module):
    """LPIPS v0.1 distance with a VGG16 or AlexNet backbone; parameters frozen, differentiable in the inputs.

    net: "vgg" or "alex". backbone_weights: torchvision's ImageNet state dict of that network (.pth or
    .safetensors; whole model or `features` only). linear_weights: the v0.1 linear layers (default: the
    lpips package's data file). `forward(x, y)` takes (N, 3, H, W) in [-1, 1] and returns (N,).
    """

    def __init__(
        self,
        net: str = "vgg",
        backbone_weights: str | Path | None = None,
        linear_weights: str | Path | None = None,
    ) -> None:
        super().__init__()
        if net not in BACKBONES:
            raise DCVGError(f"LPIPS net {net!r} is not supported; choose one of {', '.join(BACKBONES)}")
        spec = BACKBONES[net]
        if backbone_weights is None:
            raise DCVGError(
                f"LPIPS-{net} needs the ImageNet backbone weights {spec.weights_file} (torchvision's, from "
                f"{spec.weights_url}); download it on a machine with internet and pass its path "
                "(backbone_weights=PATH, or --lpips-weights PATH on the command line)"
            )
        self.net = net
        self.spec = spec
        self.backbone_path = Path(backbone_weights)
        self.linear_path = Path(linear_weights) if linear_weights is not None else lpips_package_weights(net)

        self.features = build_features(spec)
        sd = backbone_state_dict(_load_tensors(self.backbone_path, f"{net} backbone weights"))
        expected = self.features.state_dict()
        missing = sorted(set(expected) - set(sd), key=lambda k: int(k.split(".")[0]))
        if missing:
            raise DCVGError(
                f"{self.backbone_path}: not a torchvision {net} state dict (missing {', '.join(missing[:4])}"
                f"{' ...' if len(missing) > 4 else ''}); give {spec.weights_file}"
            )
        bad = [k for k in expected if tuple(sd[k].shape) != tuple(expected[k].shape)]
        if bad:
            k = bad[0]
            raise DCVGError(
                f"{self.backbone_path}: {k} has shape {tuple(sd[k].shape)}, LPIPS-{net} needs "
                f"{tuple(expected[k].shape)}; give {spec.weights_file}"
            )
        self.features.load_state_dict({k: sd[k].float() for k in expected})

        lin = _load_tensors(self.linear_path, f"LPIPS {net} linear weights")
        self.linear = nn.ParameterList()
        for i, c in enumerate(spec.channels):
            w = lin.get(f"lin{i}.model.1.weight")
            if w is None or tuple(w.shape) != (1, c, 1, 1):
                raise DCVGError(
                    f"{self.linear_path}: lin{i}.model.1.weight should be (1, {c}, 1, 1) for LPIPS-{net}, "
                    f"got {None if w is None else tuple(w.shape)}; give lpips/weights/v0.1/{net}.pth"
                )
            self.linear.append(nn.Parameter(w.float().view(c)))
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    @property
    def description(self) -> str:
        return f"LPIPS v0.1, {self.net} backbone ({self.backbone_path.name}), linear {self.linear_path.name}"

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.spec.taps:
                out.append(x)
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3 or x.shape != y.shape:
            raise ValueError(
                f"LPIPS takes two (N, 3, H, W) batches of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        n = x.shape[0]
        dtype = self.shift.dtype
        xy = torch.cat([x.to(dtype), y.to(dtype)])  # (2N, 3, H, W): one backbone pass for both
        xy = (xy - self.shift) / self.scale
        total = xy.new_zeros(n)
        for feat, w in zip(self._taps(xy), self.linear):
            feat = feat / (feat.square().sum(dim=1, keepdim=True).sqrt() + EPS)  # unit length over channels
            diff = (feat[:n] - feat[n:]).square()  # (N, C_l, H_l, W_l)
            total = total + torch.einsum("nchw,c->nhw", diff, w).mean(dim=(1, 2))
        return total  # (N,)


@torch.no_grad()
def lpips_per_frame(
    metric: LPIPS, x: torch.Tensor, y: torch.Tensor, frames_per_batch: int = 16
) -> torch.Tensor:
    """(B, T) LPIPS of videos (B, 3, T, H, W) in [-1, 1], frame by frame, a few frames at a time."""
    if x.dim() != 5 or x.shape != y.shape:
        raise ValueError(
            f"expected two videos (B, 3, T, H, W) of one shape, got {tuple(x.shape)}, {tuple(y.shape)}"
        )
    b, c, t, h, w = x.shape
    device = metric.shift.device
    xf = x.transpose(1, 2).reshape(b * t, c, h, w)  # (B*T, 3, H, W)
    yf = y.transpose(1, 2).reshape(b * t, c, h, w)
    out = [
        metric(xf[i : i + frames_per_batch].to(device), yf[i : i + frames_per_batch].to(device)).float().cpu()
        for i in range(0, b * t, frames_per_batch)
    ]
    return torch.cat(out).view(b, t)
