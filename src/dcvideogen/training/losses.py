"""Training losses of DC-AE-V: reconstruction, LPIPS (perceptual), and the adversarial terms with the
adaptive weight of VQGAN (Esser et al. 2021, Eq. 7)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reconstruction_loss(x_hat: torch.Tensor, x: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Mean L1 or L2 distance of two videos (B, C, T, H, W)."""
    if kind == "l1":
        return (x_hat.float() - x.float()).abs().mean()
    if kind == "l2":
        return (x_hat.float() - x.float()).square().mean()
    raise ValueError(f"unknown reconstruction loss {kind!r}; use l1 or l2")


def frames_of(video: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) -> (B*T, C, H, W)."""
    b, c, t, h, w = video.shape
    return video.transpose(1, 2).reshape(b * t, c, h, w)


def perceptual_loss(lpips: torch.nn.Module, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean LPIPS over all frames."""
    return lpips(frames_of(x_hat).float(), frames_of(x).float()).mean()


def generator_adversarial_loss(logits_fake: torch.Tensor, kind: str) -> torch.Tensor:
    """The generator's adversarial loss on the discriminator's logits for reconstructions."""
    if kind == "hinge":
        return -logits_fake.float().mean()
    return F.softplus(-logits_fake.float()).mean()  # non-saturating


def discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "hinge":
        return F.relu(1 - logits_real.float()).mean() + F.relu(1 + logits_fake.float()).mean()
    return F.softplus(-logits_real.float()).mean() + F.softplus(logits_fake.float()).mean()


def adaptive_weight(
    rec_loss: torch.Tensor, gan_loss: torch.Tensor, last_layer: torch.Tensor, max_weight: float = 1e4
) -> torch.Tensor:
    """||grad_W rec|| / (||grad_W gan|| + 1e-4) at the decoder's last layer W (VQGAN, Eq. 7), detached."""
    g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_gan = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
    return (g_rec.norm() / (g_gan.norm() + 1e-4)).clamp(0, max_weight).detach()
