"""Start a DC-AE-V with a patch shortcut (`DCAEVConfig.patch_shortcut`) at the best linear block codec.

The shortcut maps each latent cell's pixel block (3 x t x f x f values, D of them) to its Z latent values and
back, linearly. Among linear codecs of one block, the one of least squared error keeps the block's top Z
principal components (PCA of blocks of the training footage). `fit_patch_shortcut` sets it so, whitened (each
latent channel has unit variance over the blocks, so the network and a diffusion model read latents of one
scale), and zeroes the last layer of both networks: the model's first reconstruction is the PCA codec's, and
training learns what the networks add to it.

    encode: z = diag(1/s) P^T (x - m)      P (D, Z) the top components, s their standard deviations
    decode: x = P diag(s) z + m            m (D,) the mean block
"""

from __future__ import annotations

import torch

from ..models.dcae_v import AutoencoderDCV
from ..models.dcae_v.ops import space_time_to_channel


def blocks_of(clip: torch.Tensor, spatial: int, temporal: int) -> torch.Tensor:
    """(B, 3, T, H, W) -> every whole t x f x f block as a row (N, 3*t*f*f), channel order of the shortcut."""
    t, h, w = clip.shape[2:]
    clip = clip[:, :, : t // temporal * temporal, : h // spatial * spatial, : w // spatial * spatial]
    cells = space_time_to_channel(clip, spatial, temporal)  # (B, D, T', h, w)
    return cells.permute(0, 2, 3, 4, 1).reshape(-1, cells.shape[1])


def principal_components(
    rows: torch.Tensor, k: int, oversample: int = 32, iterations: int = 8, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean (D,), the top-k principal directions (D, k) and their standard deviations (k,) of rows (N, D).

    Randomised subspace iteration (`torch.svd_lowrank`, k + `oversample` directions, `iterations` power steps):
    D = 12,288 for f32t4, where the D x D covariance alone costs N D^2 operations; float32, seeded."""
    n, d = rows.shape
    if n <= k:
        raise ValueError(f"PCA of {n} blocks cannot give {k} components; draw more clips")
    mean = rows.float().mean(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _, s, v = torch.svd_lowrank(rows.float() - mean, q=min(k + oversample, n, d), niter=iterations)
    return mean, v[:, :k], s[:k] / (n - 1) ** 0.5


@torch.no_grad()
def fit_patch_shortcut(model: AutoencoderDCV, rows: torch.Tensor) -> None:
    """Set the model's patch shortcut to the whitened PCA codec of `rows` (N, D) and zero both networks'
    last layers, so model(x) is the PCA codec's reconstruction (up to float rounding)."""
    enc, dec = model.encoder, model.decoder
    if enc.patch_in is None:
        raise ValueError("the model has no patch shortcut: set model.arch.patch_shortcut: true")
    mean, top, std = principal_components(rows, model.arch.latent_channels)
    w_in = top.T / std[:, None]  # (Z, D)
    enc.patch_in.weight.copy_(w_in.view(*w_in.shape, 1, 1, 1))
    enc.patch_in.bias.copy_(-(w_in @ mean))
    w_out = top * std  # (D, Z)
    dec.patch_out.weight.copy_(w_out.view(*w_out.shape, 1, 1, 1))
    dec.patch_out.bias.copy_(mean)
    for conv in (enc.conv_out, dec.conv_out):
        conv.weight.zero_()
        if conv.bias is not None:
            conv.bias.zero_()
