"""Start a DC-AE-V with a patch shortcut (`DCAEVConfig.patch_shortcut`) at the best linear block codec.

The shortcut maps each latent cell's pixel block (3 x t x f x f values, D of them) to its Z latent values and
back, linearly. Among linear codecs of one block, the one of least squared error keeps the block's top Z
principal components (PCA of blocks of the training footage). `fit_patch_shortcut` sets it so, whitened (each
latent channel has unit variance over the blocks, so the network and a diffusion model read latents of one
scale), and zeroes the last layer of both networks: the model's first reconstruction is the PCA codec's, and
training learns what the networks add to it.

    encode: z = diag(1/s) P^T (x - m)      P (D, Z) the top components, s their standard deviations
    decode: x = P diag(s) z + m            m (D,) the mean block

With `patch_shortcut_kernel` k > 1 the decoder's side reads each block from its cell's k x k neighbourhood of
latents. `fit_lapped_decoder` then refits it, given the PCA encoder, by least squares over the footage's
blocks (a lapped linear decoder: the neighbours' latents carry what the block's edges share with theirs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.dcae_v import AutoencoderDCV
from ..models.dcae_v.ops import space_time_to_channel


def cells_of(clip: torch.Tensor, spatial: int, temporal: int) -> torch.Tensor:
    """(B, 3, T, H, W) -> its whole t x f x f blocks as latent cells (B, 3*t*f*f, T', h, w), the rest dropped."""
    t, h, w = clip.shape[2:]
    clip = clip[:, :, : t // temporal * temporal, : h // spatial * spatial, : w // spatial * spatial]
    return space_time_to_channel(clip, spatial, temporal)


def blocks_of(clip: torch.Tensor, spatial: int, temporal: int) -> torch.Tensor:
    """(B, 3, T, H, W) -> every whole t x f x f block as a row (N, 3*t*f*f), channel order of the shortcut."""
    cells = cells_of(clip, spatial, temporal)  # (B, D, T', h, w)
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


def neighbourhoods(z: torch.Tensor, k: int) -> torch.Tensor:
    """(B, Z, T', h, w) -> (B*T'*h*w, Z*k*k): each cell's k x k spatial neighbourhood (replicate padding at the
    frame's edge), ordered as the weight of a (1, k, k) convolution flattens: index = (z*k + dy)*k + dx."""
    b, c, t, h, w = z.shape
    p = k // 2
    planes = F.pad(z.transpose(1, 2).reshape(b * t, c, h, w), (p, p, p, p), mode="replicate")
    cols = F.unfold(planes, k)  # (B*T', Z*k*k, h*w)
    return cols.transpose(1, 2).reshape(-1, c * k * k)


@torch.no_grad()
def fit_lapped_decoder(model: AutoencoderDCV, clips, ridge: float = 1e-4) -> None:
    """Refit the decoder's patch shortcut of kernel k (after `fit_patch_shortcut`): the linear map from each
    cell's k x k neighbourhood of latents to its pixel block of least squared error over the blocks of `clips`
    (an iterable of (B, 3, T, H, W)), with a ridge of `ridge` x the mean feature energy (the bias is free).
    Latents come from the encoder's shortcut alone: the fit zeroed the networks."""
    enc, dec = model.encoder, model.decoder
    k, f, t = model.arch.patch_shortcut_kernel, *enc.factors
    gram = cross = 0
    for clip in clips:
        cells = cells_of(clip.float(), f, t)  # (B, D, T', h, w)
        x = neighbourhoods(enc.patch_in(cells), k)  # (N, Z*k*k), rows in (B, T', h, w) order
        x = torch.cat([x, torch.ones(x.shape[0], 1)], 1).double()  # + the bias
        y = cells.permute(0, 2, 3, 4, 1).reshape(x.shape[0], -1).double()  # (N, D) the blocks, same order
        gram, cross = gram + x.T @ x, cross + x.T @ y
    if isinstance(gram, int):
        raise ValueError("no clips to fit the lapped decoder on")
    reg = torch.eye(gram.shape[0], dtype=gram.dtype) * ridge * gram.diagonal()[:-1].mean()
    reg[-1, -1] = 0
    a = torch.linalg.solve(gram + reg, cross).float()  # (Z*k*k + 1, D)
    dec.patch_out.weight.copy_(a[:-1].T.reshape(dec.patch_out.weight.shape))  # (D, Z, 1, k, k)
    dec.patch_out.bias.copy_(a[-1])
