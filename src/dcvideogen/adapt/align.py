"""Stage 1a of AE-Adapt-V, patch embedder alignment (DC-VideoGen Sec. 3.3, Eq. 2).

    L = MSE(e_new, avgpool(e_base)),  e_new = E_new(z_dcae),  e_base = E_base(z_wan)

The base embedder E_base (frozen) and the new one E_new are both a Conv3d with kernel = stride, i.e. a linear
map of each flattened patch plus a bias. The target avgpool(e_base) is fixed, so Eq. 2 is an ordinary linear
least-squares problem in (W, b): its exact minimiser comes from two sums over the data,

    G = sum_x [x; 1][x; 1]^T      (K+1, K+1),  K = C_new * pt * ph * pw
    R = sum_x [x; 1] y^T          (K+1, D),    y = the pooled base token

    [W^T; b^T] = (G + lambda I)^-1 R

accumulated in one streaming pass over the cache (and all-reduced across ranks), then solved once. The
paper's AdamW loop (lr 1e-4, batch 4, 20k steps) minimises the same loss and is kept as an option.

Alignment is done on clean latents, as Eq. 2 reads: the embedder is linear, so aligning on noisy inputs
x_t = (1 - s) x0 + s eps would only add the (independent) noise terms to both sides.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def token_grid(latent_shape: tuple[int, int, int], patch_size: tuple[int, int, int]) -> tuple[int, int, int]:
    """(T', h, w) latent -> the transformer's token grid (T'/pt, h/ph, w/pw)."""
    return tuple(n // p for n, p in zip(latent_shape, patch_size))


def pool_factor(teacher_grid, student_grid) -> tuple[int, int, int]:
    """How many base tokens average into one new token along (t, h, w); every ratio must be a whole number."""
    factors = []
    for a, b in zip(teacher_grid, student_grid):
        if b == 0 or a % b:
            raise ValueError(
                f"base token grid {tuple(teacher_grid)} does not pool onto the new grid {tuple(student_grid)}: "
                "the ratios must be whole numbers (check the frame count, frame size and patch sizes)"
            )
        factors.append(a // b)
    return tuple(factors)


@torch.no_grad()
def pooled_base_tokens(base_embedder: nn.Conv3d, wan_latent: torch.Tensor, student_grid) -> torch.Tensor:
    """The Eq. 2 target: base tokens average-pooled onto the new token grid.

    wan_latent (B, C_base, T', H', W') (already paired in time) -> (B, D, t, h, w) with (t, h, w) = student_grid.
    """
    w = base_embedder.weight
    e_base = base_embedder(wan_latent.to(w.dtype))  # (B, D, T'/pt, H'/ph, W'/pw)
    k = pool_factor(e_base.shape[2:], student_grid)
    return F.avg_pool3d(e_base, kernel_size=k, stride=k) if k != (1, 1, 1) else e_base


def patch_rows(x: torch.Tensor, patch_size: tuple[int, int, int]) -> torch.Tensor:
    """Flattened patches in Conv3d weight order: (B, C, T, H, W) -> (N, C * pt * ph * pw), tokens in the
    transformer's order (f, h, w)."""
    b, c, t, h, w = x.shape
    pt, ph, pw = patch_size
    x = x.view(b, c, t // pt, pt, h // ph, ph, w // pw, pw)
    x = x.permute(0, 2, 4, 6, 1, 3, 5, 7)  # (B, t, h, w, C, pt, ph, pw)
    return x.reshape(-1, c * pt * ph * pw)


def token_rows(e: torch.Tensor) -> torch.Tensor:
    """(B, D, t, h, w) tokens -> (N, D) in the same order as `patch_rows`."""
    return e.permute(0, 2, 3, 4, 1).reshape(-1, e.shape[1])


def alignment_loss(e_new: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 2: MSE(e_new, avgpool(e_base)), both (B, D, t, h, w)."""
    return torch.mean((e_new.float() - target.float()) ** 2)


class LeastSquaresSums:
    """The sufficient statistics of Eq. 2 (float64): G = sum [x;1][x;1]^T, R = sum [x;1] y^T, and what the
    loss at any (W, b) needs: sum |y|^2 and the row count."""

    def __init__(self, in_features: int, out_features: int, device: torch.device | str = "cpu") -> None:
        k = in_features + 1
        f64 = {"dtype": torch.float64, "device": device}
        self.gram = torch.zeros(k, k, **f64)  # (K+1, K+1)
        self.cross = torch.zeros(k, out_features, **f64)  # (K+1, D)
        self.target_sq = torch.zeros((), **f64)
        self.rows = torch.zeros((), **f64)

    @torch.no_grad()
    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """x (N, K) new patches, y (N, D) pooled base tokens."""
        x, y = x.to(self.gram.device, torch.float64), y.to(self.gram.device, torch.float64)
        xa = torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)  # (N, K+1)
        self.gram += xa.T @ xa
        self.cross += xa.T @ y
        self.target_sq += y.square().sum()
        self.rows += x.shape[0]

    def tensors(self) -> list[torch.Tensor]:
        return [self.gram, self.cross, self.target_sq, self.rows]

    def solve(self, ridge: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
        """(W (D, K), b (D,)) minimising Eq. 2, with ridge lambda = ridge x mean diagonal of G on the weights
        (not the bias)."""
        if self.rows.item() == 0:
            raise ValueError("no data accumulated for the stage 1a solve")
        k = self.gram.shape[0] - 1
        reg = torch.zeros_like(self.gram)
        lam = ridge * self.gram.diagonal()[:k].mean()
        reg.diagonal()[:k] = lam
        sol = torch.linalg.solve(self.gram + reg, self.cross)  # (K+1, D)
        return sol[:k].T.contiguous().cpu(), sol[k].contiguous().cpu()

    def loss(self, weight: torch.Tensor, bias: torch.Tensor) -> float:
        """Eq. 2's MSE over the accumulated data at (W, b), from the sums alone (no second pass)."""
        f64 = {"dtype": torch.float64, "device": self.gram.device}
        wa = torch.cat([weight.detach().to(**f64).T, bias.detach().to(**f64)[None]], dim=0)  # (K+1, D)
        sse = self.target_sq - 2 * (wa * self.cross).sum() + (wa * (self.gram @ wa)).sum()
        return float(sse / (self.rows * weight.shape[0]))


def set_embedder(embedder: nn.Conv3d, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Write a solved (W (D, K), b (D,)) into a Conv3d embedder (D, C, pt, ph, pw)."""
    with torch.no_grad():
        embedder.weight.copy_(weight.view_as(embedder.weight).to(embedder.weight.dtype))
        embedder.bias.copy_(bias.to(embedder.bias.dtype))


def embedder_weight_rows(embedder: nn.Conv3d) -> tuple[torch.Tensor, torch.Tensor]:
    """The Conv3d as (W (D, K), b (D,)), K in `patch_rows` order."""
    return embedder.weight.reshape(embedder.weight.shape[0], -1), embedder.bias
