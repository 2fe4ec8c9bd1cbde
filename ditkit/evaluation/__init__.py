"""Evaluation: PSNR / SSIM / Fréchet distance (metrics), ditkit's MNIST classifier (its features drive the Fréchet
distance on MNIST; not FID) and ``ditkit eval`` (evaluate)."""
from .metrics import frechet_distance, frechet_distance_from_stats, gaussian_stats, psnr, ssim

__all__ = ["frechet_distance", "frechet_distance_from_stats", "gaussian_stats", "psnr", "ssim"]
