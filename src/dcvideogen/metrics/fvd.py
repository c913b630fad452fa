"""FVD (Unterthiner et al. 2018): Fréchet distance between Gaussians of I3D features of real and
reconstructed clips, with the detector most projects use: StyleGAN-V's I3D TorchScript file
(`i3d_torchscript.pt`, Kinetics-400 I3D, 400-d logits before the softmax), loaded from a local path.

Preprocessing as in the StyleGAN-V / common FVD code: frames resized bilinearly (short side, then the
central square) to 224x224, values in [-1, 1], layout (B, 3, T, 224, 224), and the detector called with
`rescale=False, resize=False, return_features=True` (it neither rescales nor resizes again).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import DCVGError, first_line
from ..utils.hashing import file_sha256
from ..video.transforms import resize_center_crop
from .frechet import FeatureStats, frechet_distance_of

I3D_URL = "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt"
I3D_SIZE = 224
I3D_KWARGS = {"rescale": False, "resize": False, "return_features": True}


def preprocess_for_i3d(video: torch.Tensor, size: int = I3D_SIZE) -> torch.Tensor:
    """(B, 3, T, H, W) in [-1, 1] -> (B, 3, T, size, size) in [-1, 1], float32."""
    if video.dim() != 5 or video.shape[1] != 3:
        raise ValueError(f"expected videos (B, 3, T, H, W), got {tuple(video.shape)}")
    return resize_center_crop(video.float(), size, antialias=False).clamp(-1, 1)


class I3DDetector:
    """The StyleGAN-V I3D TorchScript detector: `features(video)` -> (B, D) float64 on the CPU."""

    def __init__(self, path: str | Path, device: torch.device | str = "cpu") -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DCVGError(
                f"{self.path}: no such FVD detector file; download StyleGAN-V's i3d_torchscript.pt ({I3D_URL}) "
                "on a machine with internet and pass its path (--fvd-detector PATH)"
            )
        try:
            self.model = torch.jit.load(str(self.path), map_location=device).eval()
        except (RuntimeError, ValueError) as e:
            first = first_line(e)
            raise DCVGError(
                f"{self.path}: not a TorchScript detector ({first}); give StyleGAN-V's i3d_torchscript.pt"
            ) from e
        self.device = torch.device(device)
        self.sha256 = file_sha256(self.path)

    @property
    def description(self) -> str:
        return (
            f"I3D TorchScript {self.path.name} (sha256 {self.sha256[:16]}...), {I3D_SIZE}x{I3D_SIZE}, [-1, 1]"
        )

    @torch.no_grad()
    def features(self, video: torch.Tensor) -> torch.Tensor:
        x = preprocess_for_i3d(video.to(self.device))
        try:
            f = self.model(x, **I3D_KWARGS)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise DCVGError(
                f"{self.path}: the detector failed on a clip of shape {tuple(x.shape)} ({first}); is it "
                "StyleGAN-V's i3d_torchscript.pt?"
            ) from e
        if f.dim() != 2 or f.shape[0] != x.shape[0]:
            raise DCVGError(
                f"{self.path}: the detector returned {tuple(f.shape)} for {x.shape[0]} clips; expected "
                "(clips, features)"
            )
        return f.double().cpu()


def fvd(real: FeatureStats, fake: FeatureStats) -> float:
    """FVD between two sets of accumulated detector features."""
    if real.dim != fake.dim:
        raise ValueError(f"feature widths differ: {real.dim} vs {fake.dim}")
    return frechet_distance_of(real, fake)
