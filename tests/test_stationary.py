"""The stationary-process mixture (latentdit.data.stationary) against dense closed forms.

At small d0 every quantity has a dense form with explicit d0 x d0 covariances built here from the
DFT matrix (no FFT): C_k = F^H diag(lam_k) F. The mixture's log density is then a sum of
multivariate normals (torch.distributions), its score the autograd gradient of that log density,
and the component posterior Bayes' rule on those densities.
"""

from __future__ import annotations

import math

import pytest
import torch

from latentdit.data.stationary import StationaryMixture, frequency_multiplicity, se_spectrum
from latentdit.diffusion import beta, sigma


def full_spectrum(lam_r: torch.Tensor, dim: int) -> torch.Tensor:
    """rfft eigenvalues -> the eigenvalue of every DFT frequency 0..dim-1 (lam_f = lam_{dim-f})."""
    f = torch.arange(dim)
    return lam_r[torch.minimum(f, dim - f)]


def dense_cov(lam_r: torch.Tensor, dim: int) -> torch.Tensor:
    """F^H diag(lam) F with the unitary DFT matrix F, written out."""
    j = torch.arange(dim, dtype=torch.float64)
    F = torch.exp(-2j * math.pi * j[:, None] * j[None, :] / dim) / math.sqrt(dim)
    lam = full_spectrum(lam_r, dim).to(torch.complex128)
    C = F.conj().T @ (lam[:, None] * F)
    assert C.imag.abs().max() < 1e-10
    return C.real


def dense_log_prob(law: StationaryMixture, h: torch.Tensor, t: float) -> torch.Tensor:
    b, s = math.exp(-t / 2), -math.expm1(-t)
    terms = []
    for k in range(law.components):
        cov = b * b * dense_cov(law.spectra[k], law.dim) + s * torch.eye(law.dim, dtype=torch.float64)
        mvn = torch.distributions.MultivariateNormal(b * law.levels[k] * torch.ones(law.dim, dtype=torch.float64), cov)
        terms.append(mvn.log_prob(h) + math.log(law.weights[k]))
    return torch.logsumexp(torch.stack(terms, 1), 1)


@pytest.mark.parametrize("dim", [12, 9])
@pytest.mark.parametrize("t", [1e-3, 0.1, 2.0])
def test_score_and_log_prob_match_dense_mixture(dim, t):
    law = StationaryMixture.make(dim, components=4, seed=1, levels=(-0.6, 0.3), length_scales=(0.5, 3.0))
    h = law.sample(16, t, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    lp = dense_log_prob(law, h, t)
    (grad,) = torch.autograd.grad(lp.sum(), h)
    torch.testing.assert_close(law.latent_log_prob(h.detach(), t), lp.detach(), rtol=1e-9, atol=1e-8)
    torch.testing.assert_close(law.latent_score(h.detach(), t), grad, rtol=1e-7, atol=1e-7)


def test_component_posterior_is_bayes_rule():
    law = StationaryMixture.make(10, components=3, seed=3)
    t = 0.5
    h = law.sample(20, t, generator=torch.Generator().manual_seed(4))
    b, s = math.exp(-t / 2), -math.expm1(-t)
    logs = []
    for k in range(3):
        cov = b * b * dense_cov(law.spectra[k], 10) + s * torch.eye(10, dtype=torch.float64)
        mvn = torch.distributions.MultivariateNormal(b * law.levels[k] * torch.ones(10, dtype=torch.float64), cov)
        logs.append(mvn.log_prob(h) + math.log(law.weights[k]))
    torch.testing.assert_close(law.responsibilities(h, t), torch.softmax(torch.stack(logs, 1), 1))


def test_sample_covariance_matches_spectrum():
    dim, n = 16, 40000
    law = StationaryMixture.make(dim, components=2, seed=0, levels=(-0.5, 0.5), length_scales=(2.0, 2.0))
    h, k = law.sample(n, generator=torch.Generator().manual_seed(0), return_labels=True)
    for c in range(2):
        x = h[k == c]
        torch.testing.assert_close(x.mean(0), torch.full((dim,), float(law.levels[c]), dtype=torch.float64),
                                   atol=0.03, rtol=0)
        emp = torch.cov(x.T)
        want = dense_cov(law.spectra[c], dim)
        assert (emp - want).abs().max() < 0.04
        torch.testing.assert_close(law.dense_covariance(c), want)
    # every coordinate's second moment is 1 by construction (level^2 + variance)
    assert abs(law.second_moment() - 1.0) < 1e-12
    assert abs(float(h.pow(2).mean()) - 1.0) < 0.02


def test_noised_samples_have_the_noised_spectrum():
    dim, t = 8, 0.7
    law = StationaryMixture.make(dim, components=1, seed=0, levels=(0.0, 0.0), length_scales=(1.5, 1.5))
    x = law.sample(60000, t, generator=torch.Generator().manual_seed(5))
    b2, s = math.exp(-t), -math.expm1(-t)
    want = b2 * dense_cov(law.spectra[0], dim) + s * torch.eye(dim, dtype=torch.float64)
    assert (torch.cov(x.T) - want).abs().max() < 0.03


def test_se_spectrum_diagonal_is_the_variance():
    for dim in (7, 64):
        lam = se_spectrum(dim, 3.0, 0.64, 0.1)
        assert abs(float((frequency_multiplicity(dim) * lam).sum()) / dim - 0.64) < 1e-12
        assert float(lam.min()) >= 0.064 - 1e-12


def test_optimal_f_is_the_posterior_mean():
    """f* = beta E[h0 | h_t] for one Gaussian component: beta m + beta^2 C (beta^2 C + sigma I)^{-1} (h - beta m),
    with the dense covariance."""
    dim, t = 6, 0.3
    law = StationaryMixture.make(dim, components=1, seed=0, levels=(0.4, 0.4), length_scales=(1.0, 1.0))
    h = law.sample(5, t, generator=torch.Generator().manual_seed(1))
    b, s = math.exp(-t / 2), -math.expm1(-t)
    C = dense_cov(law.spectra[0], dim)
    m = float(law.levels[0]) * torch.ones(dim, dtype=torch.float64)
    gain = b * b * C @ torch.linalg.inv(b * b * C + s * torch.eye(dim, dtype=torch.float64))
    want = b * m + (h - b * m) @ gain.T
    torch.testing.assert_close(law.optimal_f(h, t), want)


def test_bad_arguments():
    with pytest.raises(ValueError):
        StationaryMixture.make(1)
    with pytest.raises(ValueError):
        StationaryMixture.make(8, levels=(0.0, 1.2))
