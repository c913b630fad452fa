"""A StyleGAN2-style residual discriminator extended to video (DC-VideoGen trains DC-AE-V with one,
Sec. 3.1): 3D convolutions, residual blocks that halve space (and time while it is long enough), a
minibatch standard-deviation feature, and a global-average-pooled linear head, so it takes clips of
any size."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _downsample(x: torch.Tensor) -> torch.Tensor:
    """Average-pool (B, C, T, H, W) by 2 in space, and in time when T >= 2."""
    kt = 2 if x.shape[2] >= 2 else 1
    return F.avg_pool3d(x, kernel_size=(kt, 2, 2))


class DiscriminatorBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, in_channels, 3, padding=1)
        self.conv2 = nn.Conv3d(in_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv3d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.conv1(x), 0.2)
        h = _downsample(F.leaky_relu(self.conv2(h), 0.2))
        return (h + self.skip(_downsample(x))) / math.sqrt(2)  # (B, C_out, T', H/2, W/2)


class VideoDiscriminator(nn.Module):
    def __init__(
        self, channels: int = 32, max_channels: int = 256, num_blocks: int = 4, mbstd_group: int = 4
    ) -> None:
        super().__init__()
        self.mbstd_group = mbstd_group
        widths = [min(channels * 2**i, max_channels) for i in range(num_blocks + 1)]
        self.from_rgb = nn.Conv3d(3, widths[0], 1)
        self.blocks = nn.ModuleList(DiscriminatorBlock(widths[i], widths[i + 1]) for i in range(num_blocks))
        self.conv_out = nn.Conv3d(widths[-1] + 1, widths[-1], 3, padding=1)
        self.head = nn.Sequential(
            nn.Linear(widths[-1], widths[-1]), nn.LeakyReLU(0.2), nn.Linear(widths[-1], 1)
        )

    def minibatch_std(self, x: torch.Tensor) -> torch.Tensor:
        """Append the std over groups of samples, averaged over all features (StyleGAN2)."""
        b = x.shape[0]
        g = min(self.mbstd_group, b)
        while b % g:
            g -= 1
        y = x.reshape(g, b // g, *x.shape[1:]).float()
        y = y.var(dim=0, unbiased=False).add(1e-8).sqrt().mean(dim=(1, 2, 3, 4))  # (B/g,)
        y = y.repeat(g).reshape(b, 1, 1, 1, 1).expand(b, 1, *x.shape[2:]).to(x.dtype)
        return torch.cat([x, y], dim=1)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        # video: (B, 3, T, H, W) in [-1, 1] -> logits (B,)
        x = F.leaky_relu(self.from_rgb(video), 0.2)
        for block in self.blocks:
            x = block(x)
        x = F.leaky_relu(self.conv_out(self.minibatch_std(x)), 0.2)
        return self.head(x.mean(dim=(2, 3, 4))).squeeze(1)
