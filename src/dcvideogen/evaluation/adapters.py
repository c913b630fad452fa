"""One small interface over the video autoencoders users compare (Table 1 of the paper).

Every adapter takes and returns videos (B, 3, T, H, W) in [-1, 1], knows the frame counts and sizes
its model accepts, and handles its latent normalisation, so evaluation and benchmarks treat all
autoencoders alike. `reconstruct` pads a clip to an accepted shape (repeating the last frame in time,
the edge pixels in space), runs the model, and crops back to the input's shape.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import DCVGError
from ..models.dcae_v import AutoencoderDCV
from ..models.dcae_v.loading import load_autoencoder


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


class VideoAutoencoder(ABC):
    """Adapter: encode / decode / reconstruct with the model's own frame rule and latent normalisation."""

    name: str
    spatial_factor: int
    temporal_factor: int
    latent_channels: int

    @property
    def notation(self) -> str:
        """The paper's fXtYcZ."""
        return f"f{self.spatial_factor}t{self.temporal_factor}c{self.latent_channels}"

    @property
    def compression_ratio(self) -> float:
        return 3 * self.spatial_factor**2 * self.temporal_factor / self.latent_channels

    @abstractmethod
    def valid_num_frames(self, num_frames: int) -> int:
        """Smallest frame count >= num_frames that the model takes (e.g. 1 + 4k for Wan)."""

    def valid_size(self, height: int, width: int) -> tuple[int, int]:
        return round_up(height, self.spatial_factor), round_up(width, self.spatial_factor)

    @abstractmethod
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Video of an accepted shape -> latent, normalised as the model's diffusion pipelines use it."""

    @abstractmethod
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent from `encode` -> video."""

    @property
    @abstractmethod
    def device(self) -> torch.device: ...

    @property
    @abstractmethod
    def dtype(self) -> torch.dtype: ...

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """Pad (B, 3, T, H, W) to an accepted shape, repeating the last frame and the edge pixels."""
        t, h, w = x.shape[2:]
        vt = self.valid_num_frames(t)
        vh, vw = self.valid_size(h, w)
        if vt > t:
            x = torch.cat([x, x[:, :, -1:].expand(-1, -1, vt - t, -1, -1)], dim=2)
        if (vh, vw) != (h, w):
            x = F.pad(x, (0, vw - w, 0, vh - h, 0, 0), mode="replicate")
        return x

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction with exactly the input's shape, in the input's dtype, on the input's device."""
        t, h, w = x.shape[2:]
        xp = self.pad(x.to(self.device, self.dtype))
        y = self.decode(self.encode(xp))
        return y[:, :, :t, :h, :w].to(x.device, x.dtype)


class DCAEVAdapter(VideoAutoencoder):
    """Our DC-AE-V (any preset, official or our checkpoints). Latents are scaled by config.scaling_factor."""

    def __init__(self, model: AutoencoderDCV, name: str = "dc-ae-v") -> None:
        self.model = model.eval()
        self.name = name
        a = model.arch
        self.spatial_factor, self.temporal_factor, self.latent_channels = (
            a.spatial_compression,
            a.temporal_compression,
            a.latent_channels,
        )

    def valid_num_frames(self, num_frames: int) -> int:
        return round_up(num_frames, self.model.arch.frame_multiple)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode(x).latent * self.model.config.scaling_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.decode(z / self.model.config.scaling_factor).sample


class WanAdapter(VideoAutoencoder):
    """diffusers `AutoencoderKLWan` (Wan 2.1 f8t4c16, Wan 2.2 f16t4c48): 1 + 4k frames, latents
    normalised with the config's per-channel latents_mean / latents_std, posterior mode."""

    def __init__(self, model, name: str = "wan") -> None:
        self.model = model.eval()
        self.name = name
        cfg = model.config
        self.spatial_factor = int(cfg.scale_factor_spatial)
        self.temporal_factor = int(cfg.scale_factor_temporal)
        self.latent_channels = int(cfg.z_dim)
        c = self.latent_channels
        self._mean = torch.tensor(cfg.latents_mean, dtype=torch.float32).view(1, c, 1, 1, 1)
        self._std = torch.tensor(cfg.latents_std, dtype=torch.float32).view(1, c, 1, 1, 1)

    def valid_num_frames(self, num_frames: int) -> int:
        t = self.temporal_factor
        return 1 + round_up(max(num_frames - 1, 0), t)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        z = self.model.encode(x).latent_dist.mode()
        return (z - self._mean.to(z)) / self._std.to(z)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        z = z * self._std.to(z) + self._mean.to(z)
        return self.model.decode(z).sample


def _class_name(folder: Path) -> str | None:
    config = folder / "config.json"
    if not config.is_file():
        return None
    try:
        return json.loads(config.read_text()).get("_class_name")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DCVGError(f"{config}: not valid JSON ({e})") from e


def load_video_autoencoder(
    spec: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> VideoAutoencoder:
    """An adapter for a model folder (DC-AE-V or a diffusers video autoencoder), an official DC-AE-V
    `.pt`, or 'default' (the bundled DC-AE-V)."""
    path = Path(spec)
    cls = _class_name(path) if path.is_dir() else None
    if cls == "AutoencoderKLWan":
        from diffusers import AutoencoderKLWan

        model = AutoencoderKLWan.from_pretrained(path).to(device=device, dtype=dtype)
        return WanAdapter(model, name=path.name)
    if cls in (None, "AutoencoderDCV"):
        model = load_autoencoder(str(spec), device=device, dtype=dtype)
        name = "dc-ae-v-default" if str(spec) == "default" else path.stem if path.suffix else path.name
        return DCAEVAdapter(model, name=name)
    raise DCVGError(
        f"{spec}: holds a {cls}, which has no adapter (supported: AutoencoderDCV, AutoencoderKLWan)"
    )
