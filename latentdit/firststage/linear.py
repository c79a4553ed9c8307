"""The linear latent encoder/decoder W_B of eq. (2.5).

W_B in R^{D x d0} has orthonormal columns: the encoder is h = W_B^T x, the decoder x = W_B h. It is
initialised from PCA of the training data (the top-d0 eigenvectors of the *uncentred* second
moment E[x x^T], since the paper's subspace passes through the origin) or at random, and is either
frozen or learned. With ``init="identity"`` (D = d0, a plain DiT on the data's own coordinates)
W_B = I is never stored: encoding and decoding are the identity map at no cost, and ``W_B`` is
None. A learned W_B is the orthonormal factor of an unconstrained D x d0 parameter A
(W_B = qf(A), the QR retraction with diag(R) > 0), so every optimiser step stays on the Stiefel
manifold and the gradient flows through the differentiable thin QR.
"""

from __future__ import annotations

import torch
from torch import nn



def pca_basis(x: torch.Tensor, d0: int, *, randomized: bool = False,
              dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor | float]:
    """Top-d0 eigenvectors of the uncentred E[x x^T] (D x d0, in ``dtype``) and the fraction of energy
    they retain: the package's one PCA.

    Exact (an eigen-decomposition of the D x D moment, or the thin SVD when N < D), or with
    ``randomized=True`` a randomised range finder with four power iterations (no D x D matrix;
    float64 throughout), whose retained fraction is that of the top-d0 part of its range.
    Each column's sign makes its largest-magnitude entry positive.
    """
    n, D = x.shape
    if not 0 < d0 <= min(n, D):
        raise ValueError(f"pca_basis: d0={d0} must be in 1..min(N, D) = {min(n, D)} for x of shape {(n, D)}")
    x = x.to(torch.float64)
    if randomized:
        evals, evecs = _range_finder(x, d0)
    elif D <= n:
        evals, evecs = torch.linalg.eigh(x.T @ x / n)
        evals, evecs = evals.flip(0), evecs.flip(1)
    else:  # fewer samples than dimensions: use the thin SVD
        _, svals, vh = torch.linalg.svd(x, full_matrices=False)
        evals, evecs = svals**2 / n, vh.T
    W = evecs[:, :d0]
    # deterministic sign: largest-magnitude entry of each column positive
    idx = W.abs().argmax(0)
    W = W * torch.sign(W[idx, torch.arange(d0)])[None]
    retained = (evals[:d0].clamp_min(0).sum() / evals.clamp_min(0).sum().clamp_min(1e-300)).item()
    return W.to(dtype), retained


def _range_finder(x: torch.Tensor, d0: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(eigenvalues, eigenvectors) of E[x x^T] on the dominant right singular space of x (N, D),
    found from d0 + 10 seeded random directions and four power iterations."""
    q = min(d0 + 10, min(x.shape))
    g = torch.Generator().manual_seed(0)
    Y = x.T @ (x @ torch.randn(x.shape[1], q, generator=g, dtype=torch.float64))
    for _ in range(4):
        Y, _ = torch.linalg.qr(Y)
        Y = x.T @ (x @ Y)
    Q, _ = torch.linalg.qr(Y)  # (D, q) spans the dominant right singular space
    _, svals, vh = torch.linalg.svd(x @ Q, full_matrices=False)
    return svals**2 / x.shape[0], Q @ vh.T


class _Stiefel(nn.Module):
    """A D x d0 matrix with orthonormal columns: W = qf(A) for an unconstrained parameter A."""

    def __init__(self, W: torch.Tensor):
        super().__init__()
        self.A = nn.Parameter(W.clone())  # qf(W) = W for an orthonormal W

    def forward(self) -> torch.Tensor:
        Q, R = torch.linalg.qr(self.A)
        # sign convention diag(R) > 0 makes qf unique and continuous in A
        return Q * torch.sign(torch.diagonal(R)).where(torch.diagonal(R) != 0, torch.ones_like(torch.diagonal(R)))


class LinearEncoder(nn.Module):
    """W_B: encode h = W_B^T x (N, d0), decode x = W_B h (N, D)."""

    def __init__(self, ambient_dim: int, latent_dim: int, *, learn: bool = False,
                 init: torch.Tensor | str | None = None, generator: torch.Generator | None = None):
        super().__init__()
        if not 0 < latent_dim <= ambient_dim:
            raise ValueError(f"LinearEncoder: latent_dim={latent_dim} must be in 1..ambient_dim={ambient_dim}")
        self.identity = isinstance(init, str) and init == "identity"
        if self.identity:
            if latent_dim != ambient_dim or learn:
                raise ValueError(f"LinearEncoder: init='identity' needs latent_dim = ambient_dim = {ambient_dim} "
                                 f"(got {latent_dim}) and learn=False")
            self.ambient_dim, self.latent_dim, self.learn = ambient_dim, latent_dim, False
            return
        if isinstance(init, str):
            raise ValueError(f"LinearEncoder: unknown init {init!r}; pass a tensor, None or 'identity'")
        if init is None:
            # a stream derived from the generator, so that a random encoder never coincides with a
            # ground-truth subspace drawn by the same construction from the same seed
            seed = int(torch.randint(0, 2**62, (1,), generator=generator)) ^ 0x5DEECE66D
            a = torch.randn(ambient_dim, latent_dim, generator=torch.Generator().manual_seed(seed),
                            dtype=torch.float64)
            init = torch.linalg.qr(a)[0].to(torch.float32)
        if init.shape != (ambient_dim, latent_dim):
            raise ValueError(f"LinearEncoder: init has shape {tuple(init.shape)}, expected ({ambient_dim}, {latent_dim})")
        self.ambient_dim, self.latent_dim, self.learn = ambient_dim, latent_dim, learn
        if learn:
            self.stiefel = _Stiefel(init.float())
        else:
            self.register_buffer("W_frozen", init.float().clone())

    @property
    def W_B(self) -> torch.Tensor | None:
        """The current D x d0 orthonormal matrix (None for the identity encoder)."""
        if self.identity:
            return None
        return self.stiefel() if self.learn else self.W_frozen

    def encode(self, x: torch.Tensor, W: torch.Tensor | None = None) -> torch.Tensor:
        """h = W_B^T x, batched as x @ W_B: (N, D) -> (N, d0)."""
        if self.identity:
            return x
        return x @ (self.W_B if W is None else W)

    def decode(self, h: torch.Tensor, W: torch.Tensor | None = None) -> torch.Tensor:
        """x = W_B h, batched as h @ W_B^T: (N, d0) -> (N, D)."""
        if self.identity:
            return h
        return h @ (self.W_B if W is None else W).T
