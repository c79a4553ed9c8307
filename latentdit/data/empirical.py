"""Memorisation of training points: how often generated samples sit closer to the training set
than fresh samples of the true law do (the score of the memorising empirical risk minimiser itself
is :func:`latentdit.metrics.distances.erm_score`)."""

from __future__ import annotations

import torch


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
