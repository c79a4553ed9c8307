"""Reference score estimators built from the same n training points as a network (Thm 3.2's axes).

Three references place a trained network's estimation error between a bad and a good estimator:

- the **memoriser** (:func:`memoriser_score`, the closed-form empirical risk minimiser of denoising
  score matching, :func:`latentdit.metrics.distances.erm_score`): its samples are the training
  points, its error near T0 is nearest-neighbour geometry. The *worst* reasonable reference;
- a **kernel density score** (:func:`kde_reference`): the Gaussian KDE of the n points in the latent
  coordinates of their own PCA basis, with its bandwidth chosen on a held-out fifth of the points by
  likelihood (:func:`tune_bandwidth`); the noised KDE is a Gaussian mixture with centres beta h_i and
  variance beta^2 h^2 + sigma, so its score is closed form (:func:`latentdit.metrics.distances.kde_score`);
- the **EM plug-in** (:func:`em_reference`): a Gaussian mixture with the true number of components
  fitted by EM (:func:`fit_em`) in the same latent coordinates, whose noised score is closed form
  (:class:`latentdit.data.gmm.SubspaceGMM`): parametric, about n^-1 when the model is right.

The KDE and the EM references use the PCA basis of the n training points (never population
points); off that basis their score is -(I - W W^T) x / sigma(t), like the network of eq. (2.5).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from latentdit.data.gmm import SubspaceGMM
from latentdit.diffusion import sigma
from latentdit.firststage.linear import pca_basis
from latentdit.metrics.distances import erm_score, kde_log_prob, kde_score

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

memoriser_score = erm_score  # the memorising empirical risk minimiser (the worst reasonable reference)


def training_basis(x_train: torch.Tensor, d0: int) -> torch.Tensor:
    """The PCA basis (D, d0), float64, of the n training points themselves."""
    return pca_basis(x_train, d0)[0].double()


def latent_to_ambient(latent_score: ScoreFn, W: torch.Tensor) -> ScoreFn:
    """s(x, t) = W s_lat(W^T x, t) - (I - W W^T) x / sigma(t): a latent score lifted by eq. (2.5)'s form."""
    def score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x64 = x.double()
        tt = torch.as_tensor(t, dtype=torch.float64).expand(x64.shape[0])
        h = x64 @ W
        out = latent_score(h, tt).double() @ W.T - (x64 - h @ W.T) / sigma(tt)[:, None]
        return out.to(x.dtype)
    return score


def held_out_fifth(n: int, seed: int, fraction: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit indices, held-out indices): a seeded permutation of range(n), ``fraction`` of it (at least 1) held out."""
    if n < 2:
        raise ValueError(f"held_out_fifth: need n >= 2 points, got {n}")
    k = min(n - 1, max(1, round(fraction * n)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7_919 + 11))
    return perm[k:], perm[:k]


def tune_bandwidth(h: torch.Tensor, *, seed: int = 0, fraction: float = 0.2, grid: int = 13) -> float:
    """The KDE bandwidth for the n latent points ``h`` (n, d) by held-out likelihood.

    Candidates: Scott's h_S = s n^(-1/(d+4)) (s the mean coordinate standard deviation) times
    2^(k/2) for k = -8 .. grid - 9; each KDE is fitted on the points outside a held-out ``fraction``
    and scored by the mean log density of the held-out points (at t = 0). The winner is rescaled
    from the fitted count to n by Scott's exponent, (n_fit / n)^(1/(d+4))."""
    n, d = h.shape
    fit, out = held_out_fifth(n, seed, fraction)
    s = float(h.double().std(0, correction=0).mean().clamp_min(1e-8))
    scott = s * len(fit) ** (-1.0 / (d + 4))
    cands = [scott * 2 ** ((k - 8) / 2) for k in range(grid)]
    lik = [float(kde_log_prob(h[fit], h[out], 0.0, c).mean()) for c in cands]
    best = cands[max(range(grid), key=lambda i: lik[i])]
    return best * (len(fit) / n) ** (1.0 / (d + 4))


def kde_reference(x_train: torch.Tensor, d0: int, *, seed: int = 0) -> tuple[ScoreFn, float]:
    """(ambient score function, bandwidth) of the tuned latent KDE of the n training points."""
    W = training_basis(x_train, d0)
    h = x_train.double() @ W
    bw = tune_bandwidth(h, seed=seed)
    return latent_to_ambient(lambda hh, tt: kde_score(h, hh, tt, bw), W), bw


def _kmeans_pp(x: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: k rows of x, each drawn with probability proportional to the squared
    distance to the rows already chosen."""
    idx = [int(torch.randint(len(x), (1,), generator=g))]
    for _ in range(1, k):
        d2 = torch.cdist(x, x[idx]).pow(2).min(1).values
        idx.append(int(torch.multinomial(d2 / d2.sum(), 1, generator=g)) if d2.sum() > 0 else
                   int(torch.randint(len(x), (1,), generator=g)))
    return x[idx].clone()


def _e_step(x: torch.Tensor, w: torch.Tensor, mu: torch.Tensor, cov: torch.Tensor):
    """(responsibilities (n, k), mean log likelihood) of a full-covariance Gaussian mixture."""
    chol = torch.linalg.cholesky(cov)  # (k, d, d)
    r = x[None] - mu[:, None]  # (k, n, d)
    z = torch.linalg.solve_triangular(chol, r.transpose(1, 2), upper=False)  # (k, d, n)
    logdet = 2 * torch.log(torch.diagonal(chol, dim1=1, dim2=2)).sum(1)
    logp = -0.5 * (z.pow(2).sum(1) + logdet[:, None] + x.shape[1] * math.log(2 * math.pi)) + torch.log(w)[:, None]
    ll = torch.logsumexp(logp, 0)
    return torch.exp(logp - ll[None]).T, float(ll.mean())


def fit_em(x: torch.Tensor, k: int, *, seed: int = 0, iters: int = 300, restarts: int = 3, tol: float = 1e-9,
           reg: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(weights (k,), means (k, d), covariances (k, d, d)) of a k-component Gaussian mixture fitted to
    x (n, d) by EM (float64), the best of ``restarts`` k-means++ starts by likelihood. Each M step adds
    ``reg`` times the mean coordinate variance of x to every covariance's diagonal (so that a
    component with fewer than d points stays non-singular); k is capped at n."""
    x = x.double()
    n, d = x.shape
    k = min(k, n)
    g = torch.Generator().manual_seed(seed)
    eye = reg * float(x.var(0, correction=0).mean().clamp_min(1e-12)) * torch.eye(d, dtype=torch.float64)
    best, best_ll = None, -math.inf
    for _ in range(restarts):
        mu = _kmeans_pp(x, k, g)
        cov = (torch.cov(x.T, correction=0).reshape(d, d) + eye).expand(k, d, d).clone()
        w = torch.full((k,), 1.0 / k, dtype=torch.float64)
        prev = -math.inf
        for _ in range(iters):
            resp, ll = _e_step(x, w, mu, cov)
            nk = resp.sum(0).clamp_min(1e-10)  # (k,)
            w, mu = nk / n, (resp.T @ x) / nk[:, None]
            r = x[None] - mu[:, None]  # (k, n, d)
            cov = torch.einsum("kn,kni,knj->kij", resp.T, r, r) / nk[:, None, None] + eye
            if ll - prev < tol:
                break
            prev = ll
        ll = _e_step(x, w, mu, cov)[1]
        if ll > best_ll:
            best, best_ll = (w, mu, cov), ll
    return best


def em_mixture(x_train: torch.Tensor, d0: int, k: int, *, seed: int = 0) -> SubspaceGMM:
    """The EM-fitted mixture of the n training points in their own PCA coordinates, as a ground truth
    object (closed-form noised score, density and samples) on span(W)."""
    W = training_basis(x_train, d0)
    w, mu, cov = fit_em(x_train.double() @ W, k, seed=seed)
    evals, evecs = torch.linalg.eigh(cov)
    return SubspaceGMM(W, w, mu, evecs, evals.clamp_min(1e-12))


def em_reference(x_train: torch.Tensor, d0: int, k: int, *, seed: int = 0) -> ScoreFn:
    """The plug-in score of :func:`em_mixture` (ambient, eq. (2.5)'s form)."""
    law = em_mixture(x_train, d0, k, seed=seed)
    return lambda x, t: law.score(x, t)
