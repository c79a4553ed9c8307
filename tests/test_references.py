"""Reference estimators (latentdit.evaluation.references) and the classifier TV bound against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from latentdit.data.gmm import SubspaceGMM
from latentdit.diffusion import beta, sigma
from latentdit.metrics.distances import classifier_tv_bound, erm_score, kde_log_prob, kde_score
from latentdit.evaluation.references import em_mixture, em_reference, fit_em, kde_reference, tune_bandwidth


def test_kde_score_is_the_gradient_of_its_log_density():
    g = torch.Generator().manual_seed(0)
    xtr, x = torch.randn(40, 3, generator=g, dtype=torch.float64), torch.randn(7, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([1e-3, 0.01, 0.1, 0.5, 1.0, 3.0, 8.0], dtype=torch.float64)
    for h in (0.0, 0.05, 0.7):
        xg = x.clone().requires_grad_(True)
        grad, = torch.autograd.grad(kde_log_prob(xtr, xg, t, h).sum(), xg)
        assert torch.allclose(kde_score(xtr, x, t, h, chunk=3), grad, rtol=1e-7, atol=1e-7)
    assert torch.equal(kde_score(xtr, x, t, 0.0), erm_score(xtr, x, t))


def test_kde_log_prob_of_one_point_is_a_gaussian():
    """One centre x_1: the noised KDE is N(beta x_1, (beta^2 h^2 + sigma) I) exactly."""
    x1, x = torch.tensor([[0.3, -1.0]], dtype=torch.float64), torch.tensor([[0.5, 0.2]], dtype=torch.float64)
    t, h = torch.tensor(0.4, dtype=torch.float64), 0.3
    v = beta(t) ** 2 * h * h + sigma(t)
    want = -((x - beta(t) * x1).pow(2).sum() / (2 * v) + math.log(2 * math.pi * v))
    assert float(kde_log_prob(x1, x, t, h)) == pytest.approx(float(want), rel=1e-12)


def test_em_recovers_the_means_of_a_known_mixture():
    law = SubspaceGMM.random(3, 3, 3, seed=1, mean_scale=3.0, var_range=(0.05, 0.2))
    h = law.sample_latent(4000, generator=torch.Generator().manual_seed(2))
    w, mu, cov = fit_em(h, 3, seed=0)
    # match each true mean with its nearest fitted one
    d = torch.cdist(law.means, mu)
    assert sorted(d.argmin(1).tolist()) == [0, 1, 2]
    assert float(d.min(1).values.max()) < 0.05
    assert torch.allclose(w[d.argmin(1)], law.weights, atol=0.03)


def test_em_plug_in_score_is_close_to_the_true_one_and_lives_on_the_training_subspace():
    law = SubspaceGMM.random(10, 2, 2, seed=4, mean_scale=2.0, var_range=(0.1, 0.3))
    x = law.sample(3000, generator=torch.Generator().manual_seed(5))
    fitted = em_mixture(x, 2, 2, seed=0)
    W = fitted.B
    assert float(2 * 2 - 2 * (W.T @ law.B).pow(2).sum()) < 1e-10  # span of the noiseless points
    xt = law.sample(500, 0.5, generator=torch.Generator().manual_seed(6))
    s, s_true = em_reference(x, 2, 2)(xt, 0.5), law.score(xt, 0.5)
    assert float((s - s_true).pow(2).sum(1).mean() / s_true.pow(2).sum(1).mean()) < 0.01


def test_tuned_kde_beats_the_memoriser_at_small_t():
    law = SubspaceGMM.random(6, 2, 2, seed=3, mean_scale=1.0)
    x = law.sample(400, generator=torch.Generator().manual_seed(1))
    score, bw = kde_reference(x, 2, seed=0)
    xt = law.sample(800, 0.01, generator=torch.Generator().manual_seed(2))
    mse = float((score(xt, 0.01) - law.score(xt, 0.01)).pow(2).sum(1).mean())
    mem = float((erm_score(x, xt, 0.01) - law.score(xt, 0.01)).pow(2).sum(1).mean())
    assert 0 < bw < 1 and mse < 0.5 * mem


def test_bandwidth_of_a_gaussian_is_near_the_optimum_order():
    """For N(0, I_1) the MISE-optimal bandwidth is (4/3)^(1/5) n^(-1/5) (about 1.06 n^-1/5)."""
    h = torch.randn(2000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    bw = tune_bandwidth(h)
    opt = (4 / 3) ** 0.2 * 2000 ** -0.2
    assert 0.5 * opt < bw < 2 * opt


@pytest.mark.slow
def test_classifier_tv_bound_floor_and_a_known_tv():
    """Two unit normals in 4-d with means 2 apart along one axis: TV = 2 Phi(1) - 1 = 0.683."""
    g = torch.Generator().manual_seed(0)
    p = torch.randn(3000, 4, generator=g)
    q0, q = torch.randn(3000, 4, generator=g), torch.randn(3000, 4, generator=g)
    q[:, 0] += 2.0
    assert classifier_tv_bound(p, q0) < 0.06
    tv = classifier_tv_bound(p, q)
    exact = math.erf(1 / math.sqrt(2))
    assert exact - 0.06 < tv <= exact + 0.04
