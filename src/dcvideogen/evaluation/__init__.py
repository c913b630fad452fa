"""Evaluation of video autoencoders (PSNR, SSIM, LPIPS, FVD) behind one small autoencoder interface."""
