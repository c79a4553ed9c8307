"""FID: the Fréchet distance against closed forms, and a smoke test of the real Inception network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentdit.metrics.fid import (
    FEATURE_DIM,
    InceptionFeatures,
    _resize_tf1_bilinear,
    compute_fid,
    fid_from_features,
    fid_from_stats,
    image_stats,
)


def _samples_with_moments(mu: np.ndarray, cov: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n points whose sample mean and (unbiased) sample covariance are exactly mu and cov."""
    z = np.random.default_rng(seed).normal(size=(n, len(mu)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T  # sample covariance I
    return mu + z @ np.linalg.cholesky(cov).T


def test_fid_diagonal_gaussians_closed_form():
    # diagonal covariances: FD = |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2
    mu1, mu2 = np.array([0.0, 1.0, -2.0, 0.5]), np.array([1.0, 1.0, 0.0, 0.0])
    a, b = np.array([1.0, 4.0, 0.25, 2.0]), np.array([9.0, 1.0, 0.25, 0.5])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert fid_from_stats(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    f1 = _samples_with_moments(mu1, np.diag(a), 500, seed=0)
    f2 = _samples_with_moments(mu2, np.diag(b), 300, seed=1)
    assert fid_from_features(torch.from_numpy(f1), f2) == pytest.approx(expected, rel=1e-8)


def test_fid_non_commuting_2d_closed_form():
    # 2 x 2: tr (S1 S2)^{1/2} = sqrt(tr(S1 S2) + 2 sqrt(det S1 det S2)), valid for non-commuting S1, S2
    s1 = np.array([[2.0, 0.8], [0.8, 1.0]])
    s2 = np.array([[0.5, -0.3], [-0.3, 3.0]])
    mu1, mu2 = np.array([0.3, -1.0]), np.array([-0.2, 0.4])
    tr_root = np.sqrt(np.trace(s1 @ s2) + 2 * np.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_root
    assert fid_from_stats(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)
    f1 = _samples_with_moments(mu1, s1, 200, seed=2)
    f2 = _samples_with_moments(mu2, s2, 200, seed=3)
    assert fid_from_features(f1, f2) == pytest.approx(expected, rel=1e-8)


def test_fid_identical_and_singular_covariances():
    # fewer samples than dimensions: singular covariances; FID(f, f) must still be ~0
    rng = np.random.default_rng(0)
    f, g = rng.normal(size=(20, 64)), rng.normal(size=(30, 64)) * 1.5 + 0.2
    assert fid_from_features(f, f) == pytest.approx(0.0, abs=1e-8)
    assert fid_from_features(f, f + 1.0) == pytest.approx(64.0, rel=1e-8)
    # the sample-space route (N < F) and the covariance route agree
    mu_f, s_f = f.mean(0), np.cov(f, rowvar=False)
    mu_g, s_g = g.mean(0), np.cov(g, rowvar=False)
    assert fid_from_features(f, g) == pytest.approx(fid_from_stats(mu_f, s_f, mu_g, s_g), rel=1e-6)
    assert fid_from_stats(mu_f, s_f, mu_f, s_f) == pytest.approx(0.0, abs=1e-6)


def test_resize_is_identity_at_target_size_and_keeps_constants():
    x = torch.rand(2, 3, 7, 7)
    torch.testing.assert_close(_resize_tf1_bilinear(x, 7), x)
    c = torch.full((1, 1, 5, 9), 0.3)
    torch.testing.assert_close(_resize_tf1_bilinear(c, 11), torch.full((1, 1, 11, 11), 0.3))


@pytest.fixture(scope="module")
def inception():
    return InceptionFeatures()


def test_inception_smoke(inception, tmp_path, monkeypatch):
    images = torch.rand(8, 28, 28, generator=torch.Generator().manual_seed(0))  # (N, H, W) grayscale
    assert compute_fid(images, images, extractor=inception, batch_size=4) == pytest.approx(0.0, abs=1e-3)
    f = inception.features(images[:2], batch_size=2)
    assert f.shape == (2, FEATURE_DIM) and f.dtype == torch.float32 and torch.isfinite(f).all()
    # a grayscale image and its RGB copy (numpy, channels last) give the same features
    rgb = images[:2, :, :, None].expand(-1, -1, -1, 3).numpy()
    torch.testing.assert_close(inception.features(rgb), f, atol=1e-4, rtol=1e-4)
    # cached reference statistics are reused without running the network again
    cache = tmp_path / "real_stats.npz"
    mu, sigma = image_stats(images[:4], inception, cache_path=cache)
    assert cache.is_file() and mu.shape == (FEATURE_DIM,) and sigma.shape == (FEATURE_DIM, FEATURE_DIM)
    monkeypatch.setattr(inception, "features", lambda *a, **k: pytest.fail("cache not used"))
    mu2, sigma2 = image_stats(images[:4], inception, cache_path=cache)
    assert np.array_equal(mu, mu2) and np.array_equal(sigma, sigma2)


def test_inception_rejects_bad_images(inception):
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        inception.features(torch.rand(2, 8, 8) * 2 - 1)
    with pytest.raises(ValueError, match="must be"):
        inception.features(torch.rand(2, 8, 8, 2))
