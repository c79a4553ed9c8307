"""Reference points for real-data metrics: retained variance of the encoder, the Gaussian latent
baseline, exact W2 between equal-size point sets, classifier features and balanced labels."""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from latentdit.errors import DataError
from latentdit.models.guidance import balanced_labels  # noqa: F401 (its home; kept importable here)


def retained_variance(x: torch.Tensor, W: torch.Tensor) -> dict[str, float]:
    """Fractions of the uncentred energy and of the centred variance of rows x (N, D) kept by span(W).

    W (D, d0) has orthonormal columns.
    """
    x = x.detach().cpu().double()
    W = W.detach().cpu().double()
    energy = float((x @ W).pow(2).sum() / x.pow(2).sum().clamp_min(1e-300))
    xc = x - x.mean(0)
    variance = float((xc @ W).pow(2).sum() / xc.pow(2).sum().clamp_min(1e-300))
    return {"pca_retained_energy": energy, "pca_retained_variance": variance}


class GaussianLatentBaseline:
    """A Gaussian fitted in the encoder's latent space: h ~ N(mean, cov) of W_B^T x, x = W_B h.

    ``mean`` (d0,) and ``cov`` (d0, d0) are the sample mean and (unbiased) covariance of the
    latent codes of the data, so the baseline matches the data's first two latent moments exactly
    and differs from the data only in the shape of the latent law.
    """

    def __init__(self, W: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor):
        self.W = W.detach().cpu().double()  # (D, d0)
        self.mean = mean.double()  # (d0,)
        self.cov = cov.double()  # (d0, d0)
        evals, evecs = torch.linalg.eigh((self.cov + self.cov.T) / 2)
        self._root = evecs * evals.clamp_min(0).sqrt()  # cov = root root^T, also when singular

    @classmethod
    def fit(cls, x: torch.Tensor, W: torch.Tensor) -> "GaussianLatentBaseline":
        """Fit to rows x (N, D), N >= 2, in the span of W (D, d0)."""
        if x.shape[0] < 2:
            raise DataError("the Gaussian baseline needs at least two data points")
        h = x.detach().cpu().double() @ W.detach().cpu().double()  # (N, d0)
        return cls(W, h.mean(0), torch.cov(h.T).reshape(h.shape[1], h.shape[1]))

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, d0) draws of N(mean, cov), float64."""
        z = torch.randn(n, self.mean.shape[0], generator=generator, dtype=torch.float64)
        return self.mean + z @ self._root.T

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, D) float32 samples W_B h in the normalised data space."""
        return (self.sample_latent(n, generator) @ self.W.T).float()


def w2_equal(a: torch.Tensor, b: torch.Tensor) -> float:
    """Exact 2-Wasserstein distance between two empirical laws of equally many points (m, D).

    With uniform weights on equal sizes an optimal plan is a permutation (Birkhoff), so W2^2 is
    the minimum-cost assignment of the squared distances (Hungarian algorithm, scipy).
    """
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"need two (m, D) point sets of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    a64, b64 = a.detach().cpu().double(), b.detach().cpu().double()
    cost = torch.cdist(a64, b64).pow(2).numpy()
    rows, cols = linear_sum_assignment(cost)
    return float(np.sqrt(cost[rows, cols].mean()))


@torch.no_grad()
def classifier_features(clf, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Penultimate-layer features (N, F) of an evaluation classifier for normalised rows x (N, D)."""
    clf.eval()
    body = clf.net[:-1]  # everything but the final linear layer
    return torch.cat([body(clf._as_input(x[i:i + batch_size].float())) for i in range(0, len(x), batch_size)])
