"""FID: the Fréchet distance against closed forms, the fast Inception path against the reference
path, the feature/statistics cache, and a smoke test of the real Inception network."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch

from latentdit.metrics.fid import (
    FEATURE_DIM,
    InceptionFeatures,
    _resize_tf1_bilinear,
    _resize_tf1_bilinear_separable,
    compute_fid,
    fid_from_features,
    fid_from_stats,
    fid_to_reference,
    image_stats,
    sqrt_psd,
)
from latentdit.metrics.fid_stats import cache_key, cached_features, cached_stats


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


def test_separable_resize_closed_form_and_reference():
    # TF1 bilinear of a ramp x[i] = i samples it at s_j = j * in / out, clamped to the last pixel
    n_in, n_out = 28, 299
    ramp = torch.arange(n_in, dtype=torch.float32)
    x = (ramp[:, None] + 0 * ramp[None, :])[None, None]  # rows 0..27, constant along each row
    expected = torch.clamp(torch.arange(n_out, dtype=torch.float64) * n_in / n_out, max=n_in - 1).float()
    y = _resize_tf1_bilinear_separable(x, n_out)
    torch.testing.assert_close(y[0, 0, :, 5], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(y[0, 0, 7], torch.full((n_out,), float(expected[7])), atol=1e-5, rtol=0)
    # and it agrees with the grid_sample form on random images, square or not, any channel count
    for shape, size in (((3, 1, 28, 28), 299), ((2, 3, 5, 9), 11), ((1, 2, 7, 7), 7)):
        x = torch.rand(*shape, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(_resize_tf1_bilinear_separable(x, size), _resize_tf1_bilinear(x, size),
                                   atol=1e-5, rtol=0)


def test_fid_with_precomputed_root_and_reference_stats():
    rng = np.random.default_rng(4)
    f_ref, f = rng.normal(size=(80, 6)), rng.normal(size=(50, 6)) * 1.3 + 0.4
    mu, sigma = f_ref.mean(0), np.cov(f_ref, rowvar=False)
    root = sqrt_psd(sigma)
    np.testing.assert_allclose(root @ root, sigma, atol=1e-12)  # the defining property of S^{1/2}
    np.testing.assert_allclose(root, root.T, atol=1e-14)
    assert fid_from_stats(mu, sigma, *[f.mean(0), np.cov(f, rowvar=False)], root1=root) == pytest.approx(
        fid_from_stats(mu, sigma, f.mean(0), np.cov(f, rowvar=False)), rel=1e-12)
    # fid_to_reference follows fid_from_features on both of its routes (N >= F and N < F)
    assert fid_to_reference(f_ref, (mu, sigma, root), f) == pytest.approx(fid_from_features(f_ref, f), rel=1e-10)
    wide_ref, wide = rng.normal(size=(10, 30)), rng.normal(size=(12, 30))
    s = np.cov(wide_ref, rowvar=False)
    assert fid_to_reference(wide_ref, (wide_ref.mean(0), s, sqrt_psd(s)), wide) == pytest.approx(
        fid_from_features(wide_ref, wide), rel=1e-10)
    with pytest.raises(ValueError, match="root1"):
        fid_from_stats(mu, sigma, mu, sigma, root1=root[:2])


class CountingFeatures:
    """A cheap deterministic extractor (a fixed random ReLU layer) that counts its calls."""

    quantise, precision, fast_resize = True, "fp32", True

    def __init__(self):
        self.calls = 0

    def features(self, images, batch_size=32, progress=False):
        self.calls += 1
        x = torch.as_tensor(np.asarray(images), dtype=torch.float32).reshape(len(images), -1)
        w = torch.randn(x.shape[1], 5, generator=torch.Generator().manual_seed(0))
        return torch.relu(x @ w)


def test_cached_stats_match_features_and_are_reused(tmp_path):
    ext, images = CountingFeatures(), torch.rand(40, 6, 6, generator=torch.Generator().manual_seed(2))
    f = cached_features(images, ext, cache=tmp_path)
    mu, sigma, root = cached_stats(images, ext, cache=tmp_path)
    assert ext.calls == 1  # the stats were computed from the cached features
    a = f.double().numpy()
    np.testing.assert_allclose(mu, a.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, (a - a.mean(0)).T @ (a - a.mean(0)) / (len(a) - 1), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(root @ root, sigma, atol=1e-10)
    (tmp_path / f"features_{cache_key(images, ext)[:20]}.npy").unlink()
    mu2, sigma2, root2 = cached_stats(images, ext, cache=tmp_path)  # read from stats_*.npz alone
    assert ext.calls == 1 and np.array_equal(mu, mu2) and np.array_equal(root, root2)
    assert sorted(p.name.split("_")[0] for p in tmp_path.iterdir()) == ["stats"]  # no temporary file left


def test_cache_key_follows_content_and_extractor(tmp_path):
    # a Gaussian-baseline-like set: the same seed gives the same images, hence a cache hit
    ext = CountingFeatures()
    draw = lambda seed: torch.rand(8, 4, 4, generator=torch.Generator().manual_seed(seed))  # noqa: E731
    cached_features(draw(7), ext, cache=tmp_path)
    cached_features(draw(7), ext, cache=tmp_path)
    assert ext.calls == 1
    cached_features(draw(8), ext, cache=tmp_path)
    assert ext.calls == 2
    other = CountingFeatures()
    other.precision = "bf16"  # a different extractor setting never reuses fp32 features
    assert cache_key(draw(7), other) != cache_key(draw(7), ext)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "nan"])
def test_corrupted_cache_entry_is_recomputed(tmp_path, damage):
    ext, images = CountingFeatures(), torch.rand(12, 5, 5, generator=torch.Generator().manual_seed(3))
    f = cached_features(images, ext, cache=tmp_path)
    mu, _, _ = cached_stats(images, ext, cache=tmp_path)
    key = cache_key(images, ext)[:20]
    for path in (tmp_path / f"features_{key}.npy", tmp_path / f"stats_{key}.npz"):
        if damage == "truncate":
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        elif damage == "garbage":
            path.write_bytes(b"not a numpy file")
        elif path.suffix == ".npy":
            np.save(path, np.full((12, 5), np.nan, np.float32))
        else:
            path.write_bytes(b"PK\x03\x04 broken zip")
    with pytest.warns(RuntimeWarning, match="recomputing"):
        f2 = cached_features(images, ext, cache=tmp_path)
    assert ext.calls == 2 and torch.equal(f, f2)
    with pytest.warns(RuntimeWarning, match="recomputing"):
        mu2, _, _ = cached_stats(images, ext, cache=tmp_path)
    np.testing.assert_allclose(mu2, mu, rtol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # both entries were rewritten whole: read back without a warning
        cached_features(images, ext, cache=tmp_path)
        cached_stats(images, ext, cache=tmp_path)
    assert ext.calls == 2


@pytest.fixture(scope="module")
def inception():
    return InceptionFeatures()


@pytest.mark.slow
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


@pytest.mark.slow
def test_fast_path_matches_reference_path(inception):
    """The default path (separable resize, grayscale resized once, batch norms folded into the
    convolutions) against the reference path of earlier versions (grid_sample on 3 channels, the
    network as shipped), and bf16 autocast against fp32."""
    from latentdit.data.real import load_data

    loaded = load_data("digits")  # 8 x 8 digits shipped with scikit-learn: real images, no download
    images = torch.cat([loaded.to_images(loaded.x[:3]), torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(5))])
    reference, bf16 = copy.copy(inception), copy.copy(inception)  # the same loaded network
    reference.fast_resize, reference.fold_bn, bf16.precision = False, False, "bf16"
    f_ref = reference.features(images)
    assert inception.fast_resize and inception.fold_bn and inception.precision == "fp32"
    assert inception.network() is not inception.model  # the folded copy really runs
    torch.testing.assert_close(inception.features(images), f_ref, atol=2e-4, rtol=1e-4)
    f_bf16 = bf16.features(images)
    assert f_bf16.dtype == torch.float32
    rel = float((f_bf16 - f_ref).norm() / f_ref.norm())
    assert 0 < rel < 0.1  # measured 0.015-0.055 (MNIST, noise, 8x8 digits); nonzero: bf16 really ran
    with pytest.raises(ValueError, match="precision"):
        InceptionFeatures(precision="fp16")


@pytest.mark.slow
def test_inception_bench_quick_writes_all_keys(tmp_path):
    import json

    from latentdit.bench import inception as bench
    from latentdit.provenance import missing_fields

    out = tmp_path / "inception.json"
    assert bench.main(["--out", str(out), "--quick", "--threads", "1", "--images", "2", "--fid-images", "3"]) == 0
    d = json.loads(out.read_text())
    assert set(d["images_per_s"]) == {"reference", "fp32_b2", "bf16_b2"} and min(d["images_per_s"].values()) > 0
    assert d["speedup_over_reference"]["reference"] == pytest.approx(1.0)
    assert d["feature_error"]["fp32_b2"]["max_abs"] < 2e-4  # the fast fp32 path keeps the reference features
    assert 0 < d["feature_error"]["bf16_b2"]["rel_fro"] < 0.1
    fc = d["fid_check"]
    assert fc["bf16_minus_fp32"]["real_halves"] == pytest.approx(fc["bf16"]["real_halves"] - fc["fp32"]["real_halves"])
    assert not missing_fields(d)


def test_fold_failure_falls_back_to_the_shipped_network(inception, monkeypatch):
    import latentdit.metrics.fid as fid_mod

    def broken(model):
        raise RuntimeError("no such graph pass")

    monkeypatch.setattr(fid_mod, "fold_batch_norm", broken)
    e = copy.copy(inception)
    e._folded = None
    with pytest.warns(RuntimeWarning, match="cannot fold"):
        assert e.network() is e.model
    assert not e.fold_bn  # so its cache key names the network that really ran
    assert cache_key(torch.zeros(2, 4, 4), e) != cache_key(torch.zeros(2, 4, 4), inception)
