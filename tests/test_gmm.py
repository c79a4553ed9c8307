"""Ground truth: closed-form scores and densities of the subspace Gaussian mixture."""

import math

import torch
from torch.distributions import MultivariateNormal

from latentdit.data.gmm import SubspaceGMM
from latentdit.diffusion import beta, sigma


def full_ambient_log_prob(g: SubspaceGMM, x: torch.Tensor, t: float) -> torch.Tensor:
    """log p_t(x) built independently: a mixture in R^D with covariances beta^2 B S_k B^T + sigma I."""
    tt = torch.tensor(t, dtype=torch.float64)
    b, s = beta(tt), sigma(tt)
    S = torch.einsum("kij,kj,klj->kil", g.eigvecs, g.eigvals, g.eigvecs)
    comps = []
    for k in range(len(g.weights)):
        cov = b**2 * g.B @ S[k] @ g.B.T + s * torch.eye(g.ambient_dim, dtype=torch.float64)
        mvn = MultivariateNormal(b * g.B @ g.means[k], covariance_matrix=cov)
        comps.append(mvn.log_prob(x) + torch.log(g.weights[k]))
    return torch.logsumexp(torch.stack(comps), 0)


def test_log_prob_matches_full_ambient_mixture():
    g = SubspaceGMM.random(12, 3, 4, seed=1)
    x = g.sample(50, 0.3, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(g.log_prob(x, 0.3), full_ambient_log_prob(g, x, 0.3), atol=1e-8)


def test_score_equals_autograd_of_independent_density_and_lemma():
    g = SubspaceGMM.random(12, 3, 4, seed=2)
    for t in (0.01, 0.5, 3.0):
        x = g.sample(40, t, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
        (grad,) = torch.autograd.grad(full_ambient_log_prob(g, x, t).sum(), x)
        assert torch.allclose(g.score(x.detach(), t), grad, rtol=1e-6, atol=1e-6)
        # Lemma: B grad log p_t^h(B^T x) - (I - B B^T) x / sigma(t)
        xd = x.detach()
        P = g.B @ g.B.T
        lemma = g.latent_score(xd @ g.B, t) @ g.B.T - (xd - xd @ P) / sigma(torch.tensor(t, dtype=torch.float64))
        assert torch.allclose(lemma, grad, rtol=1e-6, atol=1e-6)


def test_latent_score_is_gradient_of_latent_log_prob_with_per_sample_times():
    g = SubspaceGMM.random(8, 4, 3, seed=3)
    h = torch.randn(30, 4, dtype=torch.float64, requires_grad=True)
    t = torch.linspace(0.01, 4.0, 30, dtype=torch.float64)
    (grad,) = torch.autograd.grad(g.latent_log_prob(h, t).sum(), h)
    assert torch.allclose(g.latent_score(h.detach(), t), grad, atol=1e-9)


def test_samples_have_the_closed_form_moments():
    g = SubspaceGMM.random(10, 2, 3, seed=4)
    t = 0.7
    gen = torch.Generator().manual_seed(5)
    x = g.sample(200_000, t, generator=gen)
    tt = torch.tensor(t, dtype=torch.float64)
    mean = beta(tt) * (g.weights @ g.means) @ g.B.T
    assert torch.allclose(x.mean(0), mean, atol=0.01)
    second = beta(tt) ** 2 * g.B @ g.latent_second_moment() @ g.B.T + sigma(tt) * torch.eye(10, dtype=torch.float64)
    assert torch.allclose(x.T @ x / len(x), second, atol=0.02)
    # t = 0: exactly on the subspace
    x0 = g.sample(100, generator=gen)
    assert torch.allclose(x0 - x0 @ g.B @ g.B.T, torch.zeros_like(x0), atol=1e-12)


def test_optimal_f_is_scaled_posterior_mean():
    g = SubspaceGMM.random(8, 2, 2, seed=6)
    h = torch.randn(20, 2, dtype=torch.float64)
    t = torch.full((20,), 0.4, dtype=torch.float64)
    assert torch.allclose(g.optimal_f(h, t), beta(t)[:, None] * g.posterior_mean(h, t))
    # a single Gaussian N(0, v I): E[h0 | h_t] = beta v / (beta^2 v + sigma) h_t
    one = SubspaceGMM(torch.eye(2, dtype=torch.float64), torch.ones(1, dtype=torch.float64),
                      torch.zeros(1, 2, dtype=torch.float64), torch.eye(2, dtype=torch.float64)[None],
                      torch.full((1, 2), 0.5, dtype=torch.float64))
    b, s = beta(t)[:, None], sigma(t)[:, None]
    assert torch.allclose(one.posterior_mean(h, t), b * 0.5 / (b**2 * 0.5 + s) * h)
    assert math.isclose(float(sigma(torch.tensor(1.0, dtype=torch.float64))), 1 - math.exp(-1), rel_tol=1e-12)
