"""The one place where DC-AE-V latents move between raw and diffusion space.

`AutoencoderDCV.encode` / `decode` work on raw latents. Diffusion models see
``raw * config.scaling_factor`` (0.7241 for the released f32t4c32, as in the official pipelines), so
that their latents have roughly unit variance.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def to_diffusion_space(latent: torch.Tensor, scaling_factor: float) -> torch.Tensor:
    """Raw encoder output -> diffusion-model latent (after `encode`)."""
    return latent * scaling_factor


def from_diffusion_space(latent: torch.Tensor, scaling_factor: float) -> torch.Tensor:
    """Diffusion-model latent -> raw decoder input (before `decode`)."""
    return latent / scaling_factor


@torch.no_grad()
def estimate_scaling_factor(model, clips: Iterable[torch.Tensor]) -> float:
    """1 / std of the raw latents of `clips` ((B, 3, T, H, W) in [-1, 1]), pooled over every element:
    the scale that gives diffusion latents unit variance."""
    count, total, total_sq = 0, 0.0, 0.0
    for x in clips:
        z = model.encode(x.to(model.device, model.dtype)).latent.double()
        count += z.numel()
        total += z.sum().item()
        total_sq += z.square().sum().item()
    if count == 0:
        raise ValueError("no clips given to estimate the latent scale from")
    var = total_sq / count - (total / count) ** 2
    return float(1.0 / max(var, 1e-12) ** 0.5)
