import math

import numpy as np
import pytest
import torch

from ditkit.core.metrics import PSNR_CAP, frechet_distance, frechet_distance_from_stats, gaussian_stats, psnr, ssim

skm = pytest.importorskip("skimage.metrics")


def _skimage(a: torch.Tensor, b: torch.Tensor):
    """Reference values per sample: scikit-image with Wang et al.'s Gaussian-window settings."""
    ps, ss = [], []
    for x, y in zip(a.double().numpy(), b.double().numpy()):
        ps.append(skm.peak_signal_noise_ratio(x, y, data_range=2.0))
        ss.append(skm.structural_similarity(x, y, data_range=2.0, channel_axis=0, gaussian_weights=True, sigma=1.5,
                                            use_sample_covariance=False))
    return np.array(ps), np.array(ss)


def test_identical_images():
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    assert torch.isinf(psnr(x, x)).all()
    assert torch.allclose(ssim(x, x), torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize("channels,size", [(1, 32), (3, 24)])
def test_matches_skimage_on_random_images(channels, size):
    g = torch.Generator().manual_seed(0)
    a = torch.rand(4, channels, size, size, generator=g) * 2 - 1
    b = (a + 0.3 * torch.randn(a.shape, generator=g)).clamp(-1, 1)
    p, s = psnr(a, b), ssim(a, b)
    assert p.shape == s.shape == (4,) and p.dtype == torch.float64
    ref_p, ref_s = _skimage(a, b)
    np.testing.assert_allclose(p.numpy(), ref_p, atol=1e-4)
    np.testing.assert_allclose(s.numpy(), ref_s, atol=1e-4)


def test_matches_skimage_on_noisy_mnist():
    from ditkit.data.images import mnist_split
    a = mnist_split("heldout").images[:6]
    noisy = (a + 0.1 * torch.randn(a.shape, generator=torch.Generator().manual_seed(1))).clamp(-1, 1)
    p, s = psnr(a, noisy), ssim(a, noisy)
    ref_p, ref_s = _skimage(a, noisy)
    np.testing.assert_allclose(p.numpy(), ref_p, atol=1e-4)
    np.testing.assert_allclose(s.numpy(), ref_s, atol=1e-4)
    assert 0.3 < s.min() and s.max() < 1.0


def test_video_averages_frames():
    g = torch.Generator().manual_seed(2)
    a = torch.rand(2, 3, 4, 16, 16, generator=g) * 2 - 1
    b = (a + 0.2 * torch.randn(a.shape, generator=g)).clamp(-1, 1)
    for fn in (psnr, ssim):
        per_frame = torch.stack([fn(a[:, :, f], b[:, :, f]) for f in range(4)], dim=1)
        torch.testing.assert_close(fn(a, b), per_frame.mean(dim=1))


def test_psnr_cap_applies_per_frame():
    g = torch.Generator().manual_seed(3)
    a = torch.rand(1, 1, 2, 16, 16, generator=g) * 2 - 1
    b = a.clone()
    b[:, :, 1] += 0.1                                       # frame 0 exact, frame 1: MSE 0.01 -> 26.0 dB
    assert psnr(a, b).item() == float("inf")
    torch.testing.assert_close(psnr(a, b, cap=PSNR_CAP), torch.tensor([(PSNR_CAP + 10 * math.log10(4 / 0.01)) / 2],
                                                                   dtype=torch.float64))


def test_shape_errors():
    with pytest.raises(ValueError, match=r"\(2, 1, 32, 32\) and \(2, 3, 32, 32\)"):
        ssim(torch.zeros(2, 1, 32, 32), torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        psnr(torch.zeros(32, 32), torch.zeros(32, 32))


def test_frechet_closed_form_diagonal():
    mu_a, mu_b = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, -1.0, 2.0])
    var_a, var_b = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    # diagonal Gaussians: ||mu_a - mu_b||^2 + sum (sqrt(var_a) - sqrt(var_b))^2 = 5 + (4 + 1 + 0)
    d = frechet_distance_from_stats((mu_a, torch.diag(var_a)), (mu_b, torch.diag(var_b)))
    assert d == pytest.approx(10.0, abs=1e-10)


def test_frechet_general_covariances_match_scipy():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(6, 6, generator=g, dtype=torch.float64), torch.randn(6, 6, generator=g, dtype=torch.float64)
    s_a, s_b = a @ a.T + 0.1 * torch.eye(6), b @ b.T + 0.1 * torch.eye(6)
    mu_a, mu_b = torch.randn(6, generator=g, dtype=torch.float64), torch.zeros(6, dtype=torch.float64)
    ref = ((mu_a - mu_b) ** 2).sum().item() + np.trace(s_a.numpy() + s_b.numpy()
                                                       - 2 * scipy_linalg.sqrtm(s_a.numpy() @ s_b.numpy()).real)
    assert frechet_distance_from_stats((mu_a, s_a), (mu_b, s_b)) == pytest.approx(ref, rel=1e-8)


def test_frechet_of_features():
    g = torch.Generator().manual_seed(4)
    a = torch.randn(500, 8, generator=g) @ torch.randn(8, 8, generator=g) + 1.0
    b = torch.randn(300, 8, generator=g) * 2
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9)
    # an affine copy 2a + 3 has mean 2 mu + 3 and covariance 4 S: distance ||mu + 3||^2 + tr(S), exactly
    mu, cov = gaussian_stats(a)
    assert frechet_distance(a, 2 * a + 3) == pytest.approx(((mu + 3) ** 2).sum().item() + cov.trace().item(), rel=1e-9)
    np.testing.assert_allclose(cov.numpy(), np.cov(a.double().numpy().T), rtol=1e-12)
    with pytest.raises(ValueError, match=r"\(500, 8\) and \(3, 4\)"):
        frechet_distance(a, torch.zeros(3, 4))
    assert math.isfinite(frechet_distance(a[:5], b[:5]))  # rank-deficient covariances are fine
