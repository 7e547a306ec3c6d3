"""PSNR / SSIM on known inputs; confidence intervals and lag binning on known data."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from fademem.embedded.world import render
from fademem.metrics import binned_by_lag, mean_ci, psnr, ssim

RNG = np.random.default_rng(0)


def test_identical_frames():
    a = RNG.random((3, 32, 32, 3))
    assert np.all(np.isinf(psnr(a, a))) and np.all(psnr(a, a) > 0)
    assert np.allclose(psnr(a, a, max_db=100.0), 100.0)
    assert np.allclose(ssim(a, a), 1.0)
    assert psnr(a[0], a[0]).shape == ()  # a single frame gives a scalar


def test_psnr_known_mse():
    a = RNG.random((4, 16, 16, 3))
    b = a + RNG.normal(0, 0.05, a.shape)
    mse = ((a - b) ** 2).mean(axis=(1, 2, 3))
    assert np.allclose(psnr(a, b), 10 * np.log10(1.0 / mse))
    assert np.allclose(psnr(a, a + 0.1), 20.0)
    assert np.allclose(psnr(a * 255, a * 255 + 25.5, data_range=255.0), 20.0)


def test_ssim_constant_images_closed_form():
    c1, c2, C1 = 0.3, 0.6, (0.01 * 1.0) ** 2
    a, b = np.full((20, 20, 3), c1), np.full((20, 20, 3), c2)
    assert math.isclose(float(ssim(a, b)), (2 * c1 * c2 + C1) / (c1**2 + c2**2 + C1), rel_tol=1e-9)


def _ssim_reference(a, b):
    """Direct per-window SSIM (loops), Gaussian weights, valid windows, mean over channels."""
    x = np.arange(11) - 5.0
    g = np.exp(-x**2 / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    C1, C2 = 0.01**2, 0.03**2
    vals = []
    for c in range(a.shape[-1]):
        for i in range(a.shape[0] - 10):
            for j in range(a.shape[1] - 10):
                pa, pb = a[i:i + 11, j:j + 11, c], b[i:i + 11, j:j + 11, c]
                ma, mb = (w * pa).sum(), (w * pb).sum()
                va, vb = (w * (pa - ma) ** 2).sum(), (w * (pb - mb) ** 2).sum()
                cov = (w * (pa - ma) * (pb - mb)).sum()
                vals.append((2 * ma * mb + C1) * (2 * cov + C2) / ((ma**2 + mb**2 + C1) * (va + vb + C2)))
    return np.mean(vals)


def test_ssim_matches_direct_computation():
    a = RNG.random((16, 18, 2))
    b = np.clip(a + RNG.normal(0, 0.2, a.shape), 0, 1)
    assert math.isclose(float(ssim(a, b)), _ssim_reference(a, b), rel_tol=1e-9)


def test_shifted_video_lower_ssim_and_torch():
    v = render("a large red circle standing still over a checkered green background, camera is static", 0, 4)
    shifted = np.roll(v, 2, axis=2)
    s = ssim(v, shifted)
    assert s.shape == (4,) and np.all(s < 0.95)
    assert np.all(ssim(v, np.roll(v, 1, axis=2)) > s)  # more shift, less similar
    t = ssim(torch.from_numpy(v), torch.from_numpy(shifted))
    assert isinstance(t, torch.Tensor) and np.allclose(t.numpy(), s)
    with pytest.raises(ValueError):
        ssim(v[:, :8, :8], v[:, :8, :8])


def test_ssim_matches_skimage_if_installed():
    metrics = pytest.importorskip("skimage.metrics")
    a, b = RNG.random((40, 36, 3)), RNG.random((40, 36, 3))
    b = 0.5 * a + 0.5 * b
    ref = metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                        data_range=1.0, channel_axis=-1)
    assert math.isclose(float(ssim(a, b)), ref, rel_tol=1e-6)


def test_mean_ci_known():
    m, lo, hi = mean_ci([1, 2, 3, 4, 5])
    half = stats.t.ppf(0.975, 4) * math.sqrt(2.5) / math.sqrt(5)  # 2.776 * s / sqrt(n)
    assert m == 3 and math.isclose(lo, 3 - half) and math.isclose(hi, 3 + half)
    assert mean_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    m, lo, hi = mean_ci(RNG.normal(10, 1, 400), method="bootstrap")
    assert lo < m < hi and hi - lo == pytest.approx(2 * 1.96 / 20, rel=0.2)
    assert math.isnan(mean_ci([1.0])[1])
    with pytest.raises(ValueError):
        mean_ci([1.0, math.inf])


def test_binned_by_lag():
    lags = np.array([0, 1, 5, 5, 20, 100])  # shared by all episodes; 100 is outside the bins
    errors = np.array([[1, 1, 2, 4, 10, 99], [3, 3, 4, 6, 20, 99]], float)
    r = binned_by_lag(errors, lags, [0, 2, 10, 50])
    assert np.allclose(r.mean, [2.0, 4.0, 15.0])  # episode means (1,3) (3,5) (10,20), then their mean
    assert list(r.n_episodes) == [2, 2, 2] and list(r.n_frames) == [4, 4, 2]
    half = stats.t.ppf(0.975, 1) * np.std([1, 3], ddof=1) / math.sqrt(2)
    assert math.isclose(r.low[0], 2 - half) and math.isclose(r.high[0], 2 + half)
    # ragged episodes with their own lags; an empty bin gives nan
    r = binned_by_lag([np.array([1.0, 2.0]), np.array([3.0])], [np.array([0, 0]), np.array([1])], [0, 1, 2, 3])
    assert np.allclose(r.mean[:2], [1.5, 3.0]) and np.isnan(r.mean[2]) and list(r.n_episodes) == [1, 1, 0]
