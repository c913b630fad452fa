"""Video quality metrics as pure functions over (B, C, T, H, W) tensors in [-1, 1]."""

from .lpips import LPIPS, lpips_per_frame
from .psnr import psnr, psnr_per_frame
from .ssim import ssim, ssim_per_frame

__all__ = ["LPIPS", "lpips_per_frame", "psnr", "psnr_per_frame", "ssim", "ssim_per_frame"]
