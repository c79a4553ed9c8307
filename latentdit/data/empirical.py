"""The empirical risk minimiser of denoising score matching, and memorisation of training points.

For n training points x_i the noised empirical law is p_t^n(x) = (1/n) sum_i N(x; beta(t) x_i,
sigma(t) I), and its score

    grad log p_t^n(x) = sum_i w_i(x) (beta x_i - x) / sigma,   w = softmax_i(-|x - beta x_i|^2 / (2 sigma)),

is the minimiser of the DSM objective over all functions given those n points: the best any
unconstrained estimator trained on them can do, and a pure memoriser (its reverse process
reproduces the training points). It is the reference curve of the sample-complexity sweep.
"""

from __future__ import annotations

import torch

from latentdit.diffusion import beta, sigma


def erm_score(x: torch.Tensor, t: torch.Tensor | float, points: torch.Tensor, *, chunk: int = 1 << 22) -> torch.Tensor:
    """grad log p_t^n(x) of the noised empirical law of ``points`` (n, D) at ``x`` (N, D), t scalar or (N,).

    Float64, evaluated in row chunks so that N x n stays below ``chunk`` entries; same dtype as ``x``.
    """
    if x.ndim != 2 or points.ndim != 2 or x.shape[1] != points.shape[1]:
        raise ValueError(f"erm_score: x {tuple(x.shape)} and points {tuple(points.shape)} must be (N, D) and (n, D)")
    p = points.to(torch.float64)
    t = torch.as_tensor(t, dtype=torch.float64).expand(x.shape[0])
    out = torch.empty(x.shape, dtype=torch.float64)
    rows = max(1, chunk // max(1, p.shape[0]))
    sq = p.pow(2).sum(1)
    for lo in range(0, x.shape[0], rows):
        xs, tt = x[lo:lo + rows].to(torch.float64), t[lo:lo + rows]
        b, s = beta(tt)[:, None], sigma(tt)[:, None]
        # |x - b x_i|^2 = |x|^2 - 2 b <x, x_i> + b^2 |x_i|^2 (the |x|^2 term cancels in the softmax)
        logits = -(b * b * sq[None] - 2 * b * (xs @ p.T)) / (2 * s)
        w = torch.softmax(logits, dim=1)
        out[lo:lo + rows] = (b * (w @ p) - xs) / s
    return out.to(x.dtype)


def nearest_distances(a: torch.Tensor, b: torch.Tensor, chunk: int = 1 << 22) -> torch.Tensor:
    """For each row of ``a`` (N, d) its Euclidean distance to the nearest row of ``b`` (n, d), float64."""
    a, b = a.to(torch.float64), b.to(torch.float64)
    rows = max(1, chunk // max(1, b.shape[0]))
    return torch.cat([torch.cdist(a[lo:lo + rows], b).min(1).values for lo in range(0, a.shape[0], rows)])


def memorisation_fraction(generated: torch.Tensor, train: torch.Tensor, fresh: torch.Tensor,
                          quantile: float = 0.1) -> float:
    """The fraction of ``generated`` samples closer to their nearest training point than the
    ``quantile`` of the same nearest-training-point distance over ``fresh`` true samples.

    All three (N, d) sets in the same coordinates (the rates use aligned latent coordinates at T0,
    where generated and fresh samples carry the same noise). A sampler of the true law gives about
    ``quantile``; a memoriser, whose samples sit at training points, gives values near 1.
    """
    if not 0 < quantile < 1:
        raise ValueError(f"memorisation_fraction: quantile={quantile} must lie in (0, 1)")
    thr = torch.quantile(nearest_distances(fresh, train), quantile)
    return float((nearest_distances(generated, train) < thr).double().mean())
