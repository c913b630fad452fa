"""Wan's flow-matching objective (FACTS section 3), as small pure functions.

x_t = (1 - sigma) x0 + sigma eps; the transformer predicts the velocity eps - x0 at timestep 1000 sigma;
sigma is drawn uniformly or logit-normally and shifted toward noise: sigma' = s sigma / (1 + (s - 1) sigma).
Stages 1b and 2 of AE-Adapt-V train with this loss (DC-VideoGen Sec. 3.3).
"""

from __future__ import annotations

import torch

NUM_TRAIN_TIMESTEPS = 1000


def shift_sigma(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """sigma' = s sigma / (1 + (s - 1) sigma): the timestep shift of Wan's scheduler (s = 1: none)."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def sample_sigma(
    generator: torch.Generator,
    sampling: str = "uniform",
    mean: float = 0.0,
    std: float = 1.0,
    shift: float = 1.0,
) -> torch.Tensor:
    """One training sigma in (0, 1) (0-dim), from `generator`: uniform or logit-normal, then shifted."""
    if sampling == "uniform":
        u = torch.rand((), generator=generator, dtype=torch.float64)
    elif sampling == "logit_normal":
        u = torch.sigmoid(mean + std * torch.randn((), generator=generator, dtype=torch.float64))
    else:
        raise ValueError(f"unknown sigma sampling {sampling!r}; use uniform or logit_normal")
    return shift_sigma(u, shift).float()


def noisy_latent(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - sigma) x0 + sigma eps. x0, noise (B, C, T, h, w); sigma (B,)."""
    s = sigma.view(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)  # (B, 1, 1, 1, 1)
    return (1 - s) * x0 + s * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """What the transformer predicts: d x_t / d sigma = eps - x0."""
    return noise - x0


def timestep_of(sigma: torch.Tensor) -> torch.Tensor:
    """The transformer's timestep on Wan's 0-1000 scale."""
    return sigma * NUM_TRAIN_TIMESTEPS


def flow_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error in float32 (unweighted, as Wan's training)."""
    return torch.mean((pred.float() - target.float()) ** 2)
