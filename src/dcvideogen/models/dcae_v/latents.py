"""The one place where DC-AE-V latents move between raw and diffusion space.

`AutoencoderDCV.encode` / `decode` work on raw latents. Diffusion models see
``raw * config.scaling_factor`` (0.7241 for the released f32t4c32, as in the official pipelines), so
that their latents have roughly unit variance.
"""

from __future__ import annotations

import torch


def to_diffusion_space(latent: torch.Tensor, scaling_factor: float) -> torch.Tensor:
    """Raw encoder output -> diffusion-model latent (after `encode`)."""
    return latent * scaling_factor


def from_diffusion_space(latent: torch.Tensor, scaling_factor: float) -> torch.Tensor:
    """Diffusion-model latent -> raw decoder input (before `decode`)."""
    return latent / scaling_factor
