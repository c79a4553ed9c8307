"""Forward OU process and the denoising score-matching objective."""

import math
from dataclasses import asdict

import pytest
import torch

from latentdit.config import ModelConfig
from latentdit.data.gmm import SubspaceGMM
from latentdit.diffusion import (DSMLoss, add_noise, beta, dsm_loss_from_score, log_snr, sample_times, sigma,
                                 t_from_log_snr)
from latentdit.models.score import LatentScoreNet


def test_beta_sigma_closed_forms_and_sigma_is_a_variance():
    t = torch.tensor([1e-3, 0.5, 2.0, 10.0], dtype=torch.float64)
    assert torch.allclose(beta(t), torch.exp(-t / 2))
    assert torch.allclose(sigma(t), 1 - torch.exp(-t))
    assert torch.allclose(beta(t) ** 2 + sigma(t), torch.ones_like(t))  # OU preserves unit variance
    assert torch.allclose(t_from_log_snr(log_snr(t)), t, rtol=1e-10)


def test_add_noise_moments_match_the_ou_kernel():
    n = 400_000
    x0 = torch.full((n, 1), 2.0, dtype=torch.float64)
    t = torch.full((n,), 0.8, dtype=torch.float64)
    xt = add_noise(x0, t, torch.randn(n, 1, dtype=torch.float64))
    assert math.isclose(xt.mean().item(), 2 * math.exp(-0.4), abs_tol=5e-3)
    assert math.isclose(xt.var().item(), 1 - math.exp(-0.8), rel_tol=1e-2)


def test_sample_times_uniform_on_interval():
    t = sample_times(100_000, 0.01, 5.0, generator=torch.Generator().manual_seed(0))
    assert t.min() >= 0.01 and t.max() <= 5.0
    assert math.isclose(t.mean().item(), 2.505, rel_tol=1e-2)


@pytest.mark.parametrize("weighting", ["none", pytest.param("sigma", marks=pytest.mark.slow),
                                       pytest.param("sigma2", marks=pytest.mark.slow)])  # one in the fast loop
def test_dsm_loss_is_minimised_by_the_exact_score(weighting):
    g = SubspaceGMM.random(16, 4, 3, seed=0)
    gen = torch.Generator().manual_seed(1)
    n = 20_000
    x0 = g.sample(n, generator=gen)
    t = sample_times(n, 0.05, 3.0, generator=gen, dtype=torch.float64)
    z = torch.randn(n, 16, generator=gen, dtype=torch.float64)
    exact = dsm_loss_from_score(g.score, x0, t, z, weighting)
    for seed, eps in [(2, 0.3), (3, 0.1), (4, 0.03)]:
        d = torch.randn(16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        for pert in (lambda x, tt: g.score(x, tt) + eps * d,  # constant shift
                     lambda x, tt: (1 + eps) * g.score(x, tt),  # rescaling
                     lambda x, tt: g.score(x, tt) + eps * torch.tanh(x @ torch.ones(16, 16, dtype=torch.float64))):
            assert dsm_loss_from_score(pert, x0, t, z, weighting) > exact


def test_model_latent_loss_equals_score_matching_definition():
    torch.manual_seed(0)
    cfg = ModelConfig(hidden=32, depth=1, heads=2, patch=2)
    m = LatentScoreNet(20, 16, **asdict(cfg)).double()
    for p in m.parameters():  # non-trivial network output
        torch.nn.init.normal_(p, std=0.1)
    x0 = torch.randn(64, 20, dtype=torch.float64)
    t = torch.rand(64, dtype=torch.float64) * 3 + 0.01
    z = torch.randn(64, 20, dtype=torch.float64)
    for w in ("none", "sigma", "sigma2"):
        assert torch.allclose(DSMLoss(w)(m, x0, t, z), dsm_loss_from_score(m, x0, t, z, w), rtol=1e-9)
