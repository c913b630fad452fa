"""One small interface over the video autoencoders users compare (Table 1 of the paper).

Every adapter takes and returns videos (B, 3, T, H, W) in [-1, 1], knows the frame counts and sizes
its model accepts, and handles its latent normalisation (as the model's own diffusion pipelines do), so
evaluation and benchmarks treat all autoencoders alike. `reconstruct` pads a clip to an accepted shape
(repeating the last frame in time, the edge pixels in space), runs the model, and crops back to the
input's shape, so padded frames never reach a metric.

Frame rules and normalisations, as in diffusers 0.42 (models and pipelines):

| model                      | frames       | latent seen by the diffusion model                 |
| -------------------------- | ------------ | -------------------------------------------------- |
| AutoencoderDCV (ours)      | multiple of the chunk (40) | z * scaling_factor                    |
| AutoencoderKLWan 2.1 / 2.2 | 1 + 4k       | (z - latents_mean) / latents_std (config lists)    |
| AutoencoderKLLTXVideo      | 1 + 8k       | (z - latents_mean) * scaling_factor / latents_std (buffers) |
| AutoencoderKLHunyuanVideo  | 1 + 4k       | z * scaling_factor                                 |
| AutoencoderKLCogVideoX     | 1 + 8k       | (z - shift_factor) * scaling_factor                |
| AutoencoderDC (image)      | any          | z * scaling_factor, frame by frame                 |
| naive-fXtYcZ (baseline)    | multiple of Y | frame means, area-downsampled by X sqrt(3/Z)      |

The KL autoencoders use their posterior's mode (mean), the usual choice for reconstruction.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import DCVGError, first_line
from ..models.dcae_v import AutoencoderDCV
from ..models.dcae_v.loading import load_autoencoder
from .naive import NaiveCodec, parse_naive


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def one_plus_multiple(n: int, k: int) -> int:
    """Smallest 1 + k*j >= n (the causal first-frame rule of most video VAEs)."""
    return 1 + round_up(max(n - 1, 0), k)


class VideoAutoencoder(ABC):
    """Adapter: encode / decode / reconstruct with the model's own frame rule and latent normalisation."""

    name: str
    spatial_factor: int
    temporal_factor: int
    latent_channels: int
    model: torch.nn.Module

    @property
    def notation(self) -> str:
        """The paper's fXtYcZ."""
        return f"f{self.spatial_factor}t{self.temporal_factor}c{self.latent_channels}"

    @property
    def compression_ratio(self) -> float:
        return 3 * self.spatial_factor**2 * self.temporal_factor / self.latent_channels

    @property
    def kind(self) -> str:
        """The model class, for reports."""
        return type(self.model).__name__

    @property
    @abstractmethod
    def frame_rule(self) -> str:
        """The accepted frame counts in words, e.g. '1 + 4k'."""

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
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

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


class FirstFrameCausalAdapter(VideoAutoencoder):
    """A video VAE that takes 1 + k * `frame_step` frames (its first frame is encoded on its own)."""

    @property
    def frame_step(self) -> int:
        return self.temporal_factor

    @property
    def frame_rule(self) -> str:
        return f"1 + {self.frame_step}k"

    def valid_num_frames(self, num_frames: int) -> int:
        return one_plus_multiple(num_frames, self.frame_step)


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

    @property
    def frame_rule(self) -> str:
        return f"multiple of {self.model.arch.frame_multiple}"

    def valid_num_frames(self, num_frames: int) -> int:
        return round_up(num_frames, self.model.arch.frame_multiple)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode(x).latent * self.model.config.scaling_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.decode(z / self.model.config.scaling_factor).sample


def _channel_view(values, channels: int, what: str) -> torch.Tensor:
    """Per-channel statistics as a (1, C, 1, 1, 1) float32 tensor, checked against the latent width."""
    t = torch.as_tensor(values, dtype=torch.float32).flatten()
    if t.numel() != channels:
        raise DCVGError(f"the model's {what} has {t.numel()} entries for {channels} latent channels")
    return t.view(1, channels, 1, 1, 1)


class WanAdapter(FirstFrameCausalAdapter):
    """diffusers `AutoencoderKLWan` (Wan 2.1 f8t4c16, Wan 2.2 f16t4c48): 1 + 4k frames, latents
    normalised with the config's per-channel latents_mean / latents_std, posterior mode."""

    def __init__(self, model, name: str = "wan") -> None:
        self.model = model.eval()
        self.name = name
        cfg = model.config
        # From the architecture (one 2x spatial downsampling per stage after the first, 2x in time where
        # temperal_downsample says so, then the patchify of Wan 2.2); the config's scale_factor_* fields
        # are missing from older saved configs.
        self.spatial_factor = 2 ** (len(cfg.dim_mult) - 1) * int(cfg.patch_size or 1)
        self.temporal_factor = 2 ** sum(bool(d) for d in cfg.temperal_downsample[: len(cfg.dim_mult) - 1])
        self.latent_channels = int(cfg.z_dim)
        self._mean = _channel_view(cfg.latents_mean, self.latent_channels, "latents_mean")
        self._std = _channel_view(cfg.latents_std, self.latent_channels, "latents_std")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        z = self.model.encode(x).latent_dist.mode()
        return (z - self._mean.to(z)) / self._std.to(z)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        z = z * self._std.to(z) + self._mean.to(z)
        return self.model.decode(z).sample


class LTXVideoAdapter(FirstFrameCausalAdapter):
    """diffusers `AutoencoderKLLTXVideo` (LTX-Video f32t8c128): 1 + 8k frames; latents normalised as
    `LTXPipeline._normalize_latents`: (z - latents_mean) * scaling_factor / latents_std, with the model's
    latents_mean / latents_std buffers. A decoder with timestep conditioning (LTX 0.9.1+) is run at
    `decode_timestep` (the pipeline's default 0.0, no decode noise), so reconstruction is deterministic."""

    def __init__(self, model, name: str = "ltx-video", decode_timestep: float = 0.0) -> None:
        self.model = model.eval()
        self.name = name
        self.decode_timestep = decode_timestep
        self.spatial_factor = int(model.spatial_compression_ratio)
        self.temporal_factor = int(model.temporal_compression_ratio)
        self.latent_channels = int(model.config.latent_channels)
        self._scale = float(model.config.scaling_factor)

    def _stats(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.latent_channels
        return (
            self.model.latents_mean.view(1, c, 1, 1, 1).to(z),
            self.model.latents_std.view(1, c, 1, 1, 1).to(z),
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        z = self.model.encode(x).latent_dist.mode()
        mean, std = self._stats(z)
        return (z - mean) * self._scale / std

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(z)
        z = z * std / self._scale + mean
        temb = None
        if self.model.config.timestep_conditioning:
            temb = torch.full((z.shape[0],), self.decode_timestep, device=z.device, dtype=z.dtype)
        return self.model.decode(z, temb).sample


class HunyuanVideoAdapter(FirstFrameCausalAdapter):
    """diffusers `AutoencoderKLHunyuanVideo` (f8t4c16): 1 + 4k frames, latents z * scaling_factor
    (0.476986 in the release), posterior mode."""

    def __init__(self, model, name: str = "hunyuan-video") -> None:
        self.model = model.eval()
        self.name = name
        self.spatial_factor = int(model.config.spatial_compression_ratio)
        self.temporal_factor = int(model.config.temporal_compression_ratio)
        self.latent_channels = int(model.config.latent_channels)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode(x).latent_dist.mode() * self.model.config.scaling_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.decode(z / self.model.config.scaling_factor).sample


class CogVideoXAdapter(FirstFrameCausalAdapter):
    """diffusers `AutoencoderKLCogVideoX` (f8t4c16): frames 1 + 8k (49, 81 in the releases). The model
    encodes 8 frames and decodes 2 latent frames at a time; other counts (e.g. 1 + 4k with k odd) come
    back with the wrong length. Latents (z - shift_factor) * scaling_factor as in the pipelines."""

    def __init__(self, model, name: str = "cogvideox") -> None:
        self.model = model.eval()
        self.name = name
        cfg = model.config
        self.spatial_factor = 2 ** (len(cfg.block_out_channels) - 1)
        self.temporal_factor = int(cfg.temporal_compression_ratio)
        self.latent_channels = int(cfg.latent_channels)
        self._frame_step = math.lcm(
            int(model.num_sample_frames_batch_size),
            int(model.num_latent_frames_batch_size) * self.temporal_factor,
        )
        self._scale = float(cfg.scaling_factor)
        self._shift = float(cfg.shift_factor or 0.0)

    @property
    def frame_step(self) -> int:
        return self._frame_step

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return (self.model.encode(x).latent_dist.mode() - self._shift) * self._scale

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.decode(z / self._scale + self._shift).sample


class ImageDCAEAdapter(VideoAutoencoder):
    """diffusers `AutoencoderDC` (the image DC-AE, f32c32 / f64c128 / f128c512) applied frame by frame:
    any frame count, no temporal compression (t1), latents z * scaling_factor."""

    def __init__(self, model, name: str = "dc-ae", frames_per_batch: int = 8) -> None:
        self.model = model.eval()
        self.name = name
        self.frames_per_batch = frames_per_batch
        self.spatial_factor = int(model.spatial_compression_ratio)
        self.temporal_factor = 1
        self.latent_channels = int(model.config.latent_channels)

    @property
    def frame_rule(self) -> str:
        return "any"

    def valid_num_frames(self, num_frames: int) -> int:
        return max(num_frames, 1)

    def _framewise(self, x: torch.Tensor, fn) -> torch.Tensor:
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)  # (B*T, C, H, W)
        out = torch.cat(
            [fn(frames[i : i + self.frames_per_batch]) for i in range(0, b * t, self.frames_per_batch)]
        )
        return out.view(b, t, *out.shape[1:]).transpose(1, 2)  # (B, C', T, H', W')

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.model.config.scaling_factor
        return self._framewise(x, lambda f: self.model.encode(f).latent * scale)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        scale = self.model.config.scaling_factor
        return self._framewise(z, lambda f: self.model.decode(f / scale).sample)


class NaiveCodecAdapter(VideoAutoencoder):
    """The naive fXtYcZ codec (`naive.py`): frame averaging + area downsampling to the latent's number of
    values, bicubic back up. The floor a learned autoencoder of the same compression must beat."""

    def __init__(self, spatial: int, temporal: int, channels: int, name: str | None = None) -> None:
        self.model = NaiveCodec(spatial, temporal, channels)
        self.spatial_factor, self.temporal_factor, self.latent_channels = spatial, temporal, channels
        self.name = name or f"naive-f{spatial}t{temporal}c{channels}"

    @property
    def frame_rule(self) -> str:
        return f"multiple of {self.temporal_factor}"

    def valid_num_frames(self, num_frames: int) -> int:
        return round_up(num_frames, self.temporal_factor)

    def valid_size(self, height: int, width: int) -> tuple[int, int]:
        return height, width  # any size: the downsampling is by a real factor

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.decode(z)


# diffusers class name -> (adapter, default name)
DIFFUSERS_ADAPTERS: dict[str, type[VideoAutoencoder]] = {
    "AutoencoderKLWan": WanAdapter,
    "AutoencoderKLLTXVideo": LTXVideoAdapter,
    "AutoencoderKLHunyuanVideo": HunyuanVideoAdapter,
    "AutoencoderKLCogVideoX": CogVideoXAdapter,
    "AutoencoderDC": ImageDCAEAdapter,
}


def _class_name(folder: Path) -> str | None:
    config = folder / "config.json"
    if not config.is_file():
        return None
    try:
        return json.loads(config.read_text()).get("_class_name")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DCVGError(f"{config}: not valid JSON ({e})") from e


def _display_name(path: Path) -> str:
    """A model's name in reports: the folder (its parent for a pipeline's `vae/`) or the file stem."""
    if path.suffix:
        return path.stem
    name = path.resolve().name
    return f"{path.resolve().parent.name}/{name}" if name == "vae" else name


def load_video_autoencoder(
    spec: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> VideoAutoencoder:
    """An adapter for a model folder (DC-AE-V or a diffusers video autoencoder, or a diffusers pipeline
    folder with a `vae/`), an official DC-AE-V `.pt`, 'default' (the bundled DC-AE-V), or 'naive-fXtYcZ'
    (the naive codec of that compression, the baseline)."""
    naive = parse_naive(str(spec)) if not Path(spec).exists() else None
    if naive is not None:
        ae = NaiveCodecAdapter(*naive)
        ae.model.to(device=device, dtype=dtype)
        return ae
    path = Path(spec)
    if path.is_dir() and not (path / "config.json").is_file() and (path / "vae" / "config.json").is_file():
        path = path / "vae"  # a pipeline folder (model_index.json + vae/)
    cls = _class_name(path) if path.is_dir() else None
    if cls in DIFFUSERS_ADAPTERS:
        import diffusers

        try:
            model = getattr(diffusers, cls).from_pretrained(path, torch_dtype=dtype)
        except (OSError, RuntimeError, ValueError) as e:
            first = first_line(e)
            raise DCVGError(f"{path}: cannot load the {cls} ({first})") from e
        return DIFFUSERS_ADAPTERS[cls](model.to(device), name=_display_name(path))
    if cls in (None, "AutoencoderDCV"):
        model = load_autoencoder(str(spec), device=device, dtype=dtype)
        name = "dc-ae-v-default" if str(spec) == "default" else _display_name(path)
        return DCAEVAdapter(model, name=name)
    raise DCVGError(
        f"{spec}: holds a {cls}, which has no adapter (supported: AutoencoderDCV, "
        f"{', '.join(DIFFUSERS_ADAPTERS)})"
    )
