"""Weight-free metrics in plain torch: PSNR and SSIM between paired images, and the Fréchet distance between two
feature sets (float64 Gaussian statistics, eigendecomposition square root; no SciPy).

Images are [N, C, H, W] in [-1, 1] (so ``data_range=2``); video [N, C, F, H, W] is folded to N*F frames and the
per-frame values are averaged over frames. PSNR and SSIM return one value per sample, a float64 tensor [N].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03
PSNR_CAP = 100.0   # dB reported for an exact reproduction in tables and means


def _paired_frames(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Check shapes; returns (a, b) as float64 [N*F, C, H, W] and F (1 for images)."""
    if a.shape != b.shape:
        raise ValueError(f"image batches must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dim() == 5:
        n, c, f, h, w = a.shape
        a, b = (x.transpose(1, 2).reshape(n * f, c, h, w) for x in (a, b))
        return a.double(), b.double(), f
    if a.dim() == 4:
        return a.double(), b.double(), 1
    raise ValueError(f"expected images [N, C, H, W] or video [N, C, F, H, W], got shape {tuple(a.shape)}")


def _per_sample(values: torch.Tensor, frames: int) -> torch.Tensor:
    return values.view(-1, frames).mean(dim=1)


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0, cap: float | None = None) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per sample, [N] float64 (videos: mean over frames); identical samples give
    +inf, or ``cap`` (e.g. ``PSNR_CAP``), which applies per frame, so one exact frame cannot make a video's mean +inf."""
    x, y, frames = _paired_frames(a, b)
    mse = (x - y).pow(2).flatten(1).mean(dim=1)
    per_frame = 10 * torch.log10(data_range ** 2 / mse)
    return _per_sample(per_frame if cap is None else per_frame.clamp(max=cap), frames)


def _gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) per sample, [N] float64: 11x11 Gaussian window (sigma 1.5), K1 0.01,
    K2 0.03, population (co)variances, mean over channels and the valid (unpadded) window positions. Equals
    scikit-image's ``structural_similarity(gaussian_weights=True, use_sample_covariance=False)``."""
    x, y, frames = _paired_frames(a, b)
    if min(x.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {tuple(x.shape[-2:])}")
    c = x.shape[1]
    g = _gaussian_window().to(x.device)
    # separable filtering of the 5 maps (x, y, x^2, y^2, xy) for every channel at once
    maps = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    maps = F.conv2d(maps, g.view(1, 1, 1, -1).expand(5 * c, 1, 1, -1), groups=5 * c)
    maps = F.conv2d(maps, g.view(1, 1, -1, 1).expand(5 * c, 1, -1, 1), groups=5 * c)
    mu_x, mu_y, xx, yy, xy = maps.split(c, dim=1)
    var_x, var_y, cov = xx - mu_x ** 2, yy - mu_y ** 2, xy - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return _per_sample(s.flatten(1).mean(dim=1), frames)


def gaussian_stats(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Features [N, D] -> (mean [D], covariance [D, D]), float64, covariance with the unbiased 1/(N-1)."""
    if feats.dim() != 2 or feats.shape[0] < 2:
        raise ValueError(f"expected features [N, D] with N >= 2, got shape {tuple(feats.shape)}")
    f = feats.double()
    return f.mean(dim=0), torch.cov(f.T).reshape(f.shape[1], f.shape[1])


def _sqrt_psd(m: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix (negative round-off eigenvalues clamped to 0)."""
    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def frechet_distance_from_stats(stats_a: tuple[torch.Tensor, torch.Tensor],
                                stats_b: tuple[torch.Tensor, torch.Tensor]) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between two Gaussians (mean, covariance).

    tr((S_a S_b)^(1/2)) is computed as the sum of the square roots of the eigenvalues of the symmetric PSD matrix
    S_a^(1/2) S_b S_a^(1/2), which has the same spectrum as S_a S_b."""
    (mu_a, s_a), (mu_b, s_b) = [(m.double(), s.double()) for m, s in (stats_a, stats_b)]
    if mu_a.shape != mu_b.shape or s_a.shape != s_b.shape:
        raise ValueError(f"feature dimensions differ: {tuple(mu_a.shape)} vs {tuple(mu_b.shape)}")
    root_a = _sqrt_psd(s_a)
    inner = root_a @ s_b @ root_a
    tr_cross = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp(min=0).sqrt().sum()
    d = (mu_a - mu_b).pow(2).sum() + s_a.trace() + s_b.trace() - 2 * tr_cross
    return max(float(d), 0.0)


def frechet_distance(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N_a, D] and [N_b, D]."""
    if feats_a.dim() != 2 or feats_b.dim() != 2 or feats_a.shape[1] != feats_b.shape[1]:
        raise ValueError(f"expected features [N_a, D] and [N_b, D], got {tuple(feats_a.shape)} and {tuple(feats_b.shape)}")
    return frechet_distance_from_stats(gaussian_stats(feats_a), gaussian_stats(feats_b))
