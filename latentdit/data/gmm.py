"""Ground truth: data on a linear subspace with a Gaussian-mixture latent (Assumptions 2.1-2.3).

x = B h with B in R^{D x d0} (orthonormal columns) and h ~ sum_k pi_k N(mu_k, S_k). Under the OU
process the latent stays a Gaussian mixture,

    h_t = B^T x_t ~ sum_k pi_k N(beta(t) mu_k, beta(t)^2 S_k + sigma(t) I),

and the orthogonal part of x_t is N(0, sigma(t) (I - B B^T)). Everything is therefore closed form:
samples, log densities and scores of the noised law at any t. Each S_k = Q_k diag(lam_k) Q_k^T is
stored by its eigen-decomposition, so beta^2 S_k + sigma I = Q_k diag(beta^2 lam_k + sigma) Q_k^T
and per-sample times cost no extra factorisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from latentdit.schedule import beta, sigma


def random_orthonormal(rows: int, cols: int, generator: torch.Generator,
                       dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A Haar-random rows x cols matrix with orthonormal columns (QR with sign fix)."""
    a = torch.randn(rows, cols, generator=generator, dtype=dtype)
    q, r = torch.linalg.qr(a)
    return q * torch.sign(torch.diagonal(r))[None, :]


@dataclass
class SubspaceGMM:
    """x = B h, h a Gaussian mixture in R^{d0}. All tensors float64 on CPU; inputs are cast."""

    B: torch.Tensor  # (D, d0), orthonormal columns
    weights: torch.Tensor  # (K,)
    means: torch.Tensor  # (K, d0)
    eigvecs: torch.Tensor  # (K, d0, d0): Q_k
    eigvals: torch.Tensor  # (K, d0): lam_k > 0

    @classmethod
    def random(cls, ambient_dim: int, latent_dim: int, components: int, seed: int = 0,
               mean_scale: float = 0.8, var_range: tuple[float, float] = (0.05, 0.4)) -> "SubspaceGMM":
        """A random model whose latent second moment per coordinate is about 1.

        Means ~ N(0, mean_scale^2 I), component covariances with eigenvalues uniform in
        ``var_range`` and random eigenvectors, mixture weights softmax(0.3 z) (mildly unequal).
        """
        if not 0 < latent_dim <= ambient_dim:
            raise ValueError(f"need 0 < d0 <= D, got d0={latent_dim}, D={ambient_dim}")
        if components < 1:
            raise ValueError(f"need at least one mixture component, got {components}")
        g = torch.Generator().manual_seed(seed)
        B = random_orthonormal(ambient_dim, latent_dim, g)
        weights = torch.softmax(0.3 * torch.randn(components, generator=g, dtype=torch.float64), 0)
        means = mean_scale * torch.randn(components, latent_dim, generator=g, dtype=torch.float64)
        lo, hi = var_range
        eigvals = lo + (hi - lo) * torch.rand(components, latent_dim, generator=g, dtype=torch.float64)
        eigvecs = torch.stack([random_orthonormal(latent_dim, latent_dim, g) for _ in range(components)])
        return cls(B, weights, means, eigvecs, eigvals)

    @property
    def ambient_dim(self) -> int:
        return self.B.shape[0]

    @property
    def latent_dim(self) -> int:
        return self.B.shape[1]

    def latent_second_moment(self) -> torch.Tensor:
        """E[h h^T] = sum_k pi_k (S_k + mu_k mu_k^T); its smallest eigenvalue is c0 of Cor. 3.2.1."""
        S = torch.einsum("kij,kj,klj->kil", self.eigvecs, self.eigvals, self.eigvecs)
        S = S + self.means[:, :, None] * self.means[:, None, :]
        return torch.einsum("k,kij->ij", self.weights, S)

    # ------------------------------------------------------------------ sampling

    def sample_latent(self, n: int, t: float = 0.0, *, generator: torch.Generator | None = None,
                      return_labels: bool = False):
        """n draws of h_t ~ p_t^h (t = 0: the data latent)."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.latent_dim, generator=generator, dtype=torch.float64)
        h = self.means[k] + torch.einsum("nij,nj->ni", self.eigvecs[k], self.eigvals[k].sqrt() * z)
        if t > 0:
            tt = torch.tensor(t, dtype=torch.float64)
            h = beta(tt) * h + sigma(tt).sqrt() * torch.randn(n, self.latent_dim, generator=generator,
                                                             dtype=torch.float64)
        return (h, k) if return_labels else h

    def sample(self, n: int, t: float = 0.0, *, generator: torch.Generator | None = None,
               return_labels: bool = False):
        """n draws of x_t ~ p_t in R^D (t = 0: the data, exactly on the subspace)."""
        h, k = self.sample_latent(n, 0.0, generator=generator, return_labels=True)
        x = h @ self.B.T
        if t > 0:
            tt = torch.tensor(t, dtype=torch.float64)
            x = beta(tt) * x + sigma(tt).sqrt() * torch.randn(n, self.ambient_dim, generator=generator,
                                                             dtype=torch.float64)
        return (x, k) if return_labels else x

    # ------------------------------------------------------------------ latent law at time t

    def _latent_terms(self, h: torch.Tensor, t: torch.Tensor):
        """Per-component log N(h; beta mu_k, beta^2 S_k + sigma I) and precision-times-residual."""
        h = h.to(torch.float64)
        t = torch.as_tensor(t, dtype=torch.float64).expand(h.shape[0])
        b, s = beta(t), sigma(t)  # (N,)
        var = b[:, None, None] ** 2 * self.eigvals[None] + s[:, None, None]  # (N, K, d0)
        r = h[:, None, :] - b[:, None, None] * self.means[None]  # (N, K, d0)
        z = torch.einsum("kji,nkj->nki", self.eigvecs, r)  # Q_k^T r
        logn = -0.5 * ((z * z / var).sum(-1) + torch.log(var).sum(-1) + self.latent_dim * math.log(2 * math.pi))
        prec_r = torch.einsum("kij,nkj->nki", self.eigvecs, z / var)  # C_k^{-1} r
        return logn + torch.log(self.weights)[None], prec_r

    def latent_log_prob(self, h: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """log p_t^h(h) of the Gaussian-mixture latent at time t (shape (N,))."""
        logw, _ = self._latent_terms(h, t)
        return torch.logsumexp(logw, dim=1)

    def latent_score(self, h: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """grad log p_t^h(h) = -sum_k r_k(h) C_k^{-1} (h - beta mu_k), r_k the responsibilities."""
        logw, prec_r = self._latent_terms(h, t)
        resp = torch.softmax(logw, dim=1)
        return -(resp[:, :, None] * prec_r).sum(1)

    def posterior_mean(self, h: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """E[h0 | h_t = h] by Tweedie: (h + sigma grad log p_t^h(h)) / beta."""
        t = torch.as_tensor(t, dtype=torch.float64).expand(h.shape[0])
        return (h.to(torch.float64) + sigma(t)[:, None] * self.latent_score(h, t)) / beta(t)[:, None]

    # ------------------------------------------------------------------ ambient law at time t > 0

    def log_prob(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """log p_t(x) in R^D for t > 0: latent mixture times N(0, sigma I) on the complement."""
        x = x.to(torch.float64)
        t = torch.as_tensor(t, dtype=torch.float64).expand(x.shape[0])
        h = x @ self.B
        perp = x - h @ self.B.T
        s = sigma(t)
        k = self.ambient_dim - self.latent_dim
        log_perp = -0.5 * (perp.pow(2).sum(1) / s + k * torch.log(2 * math.pi * s))
        return self.latent_log_prob(h, t) + log_perp

    def score(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """grad log p_t(x) = B grad log p_t^h(B^T x) - (I - B B^T) x / sigma(t)  (Lemma of Chen et al.)."""
        x64 = x.to(torch.float64)
        t = torch.as_tensor(t, dtype=torch.float64).expand(x.shape[0])
        h = x64 @ self.B
        perp = x64 - h @ self.B.T
        out = self.latent_score(h, t) @ self.B.T - perp / sigma(t)[:, None]
        return out.to(x.dtype)

    def score_fn(self):
        """The exact score as a sampler-ready function s(x, t) with t of shape (N,) or scalar."""
        return lambda x, t: self.score(x, t)

    def optimal_f(self, h: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """f*(h, t) = sigma(t) grad log p_t^h(h) + h = beta(t) E[h0 | h_t = h], the exact optimum of eq. (2.5)."""
        t = torch.as_tensor(t, dtype=torch.float64).expand(h.shape[0])
        return sigma(t)[:, None] * self.latent_score(h, t) + h.to(torch.float64)

    def denoise(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """The exact posterior mean E[x0 | x_t = x] = B E[h0 | h_t = B^T x] (x0 lies in span B, so the
        part of x off the subspace carries no information about it), in x's dtype."""
        h = x.to(torch.float64) @ self.B
        return (self.posterior_mean(h, t) @ self.B.T).to(x.dtype)

    def denoiser(self):
        """The exact denoiser as a sampler-ready function D(x, t) with t of shape (N,) or scalar."""
        return lambda x, t: self.denoise(x, t)


@dataclass
class BlockProductLaw:
    """x = B h with h = R u, u = (u_1, ..., u_L) i.i.d. copies of one small latent mixture on R^k.

    ``R = None`` (independent token blocks): the latent score is the per-block score, so a network
    whose tokens are the blocks faces the same per-token problem at every d0 = L k, and the exact
    sigma-scaled score error of any per-token estimator grows exactly like sqrt(L). A rotation ``R``
    (d0 x d0, orthogonal) couples the blocks: the same law seen in mixed coordinates. Duck-typed like
    :class:`SubspaceGMM` (``B``, ``sample``, ``sample_latent``, ``score``, ``latent_score``,
    ``latent_log_prob``, ``log_prob``); float64 throughout.
    """

    B: torch.Tensor  # (D, L k)
    block: SubspaceGMM  # the per-block law on R^k (its own B is the identity)
    R: torch.Tensor | None = None  # (d0, d0) orthogonal coupling, or None

    @classmethod
    def random(cls, ambient_dim: int, blocks: int, block_dim: int, components: int, seed: int = 0,
               coupled: bool = False) -> "BlockProductLaw":
        """The per-block law depends on (block_dim, components, seed) only, B on everything."""
        if blocks < 1 or not 0 < blocks * block_dim <= ambient_dim:
            raise ValueError(f"need blocks >= 1 and 0 < blocks * block_dim <= ambient_dim, got blocks={blocks}, "
                             f"block_dim={block_dim}, ambient_dim={ambient_dim}")
        lat = SubspaceGMM.random(block_dim, block_dim, components, seed=seed)
        block = SubspaceGMM(torch.eye(block_dim, dtype=torch.float64), lat.weights, lat.means, lat.eigvecs,
                            lat.eigvals)
        d0 = blocks * block_dim
        g = torch.Generator().manual_seed(1_000_003 * (seed + 1) + 7 * ambient_dim + d0)
        B = random_orthonormal(ambient_dim, d0, g)
        return cls(B, block, random_orthonormal(d0, d0, g) if coupled else None)

    @property
    def latent_dim(self) -> int:
        return self.B.shape[1]

    @property
    def blocks(self) -> int:
        return self.latent_dim // self.block.latent_dim

    def _to_u(self, h: torch.Tensor) -> torch.Tensor:  # u = R^T h, row vectors
        h = h.to(torch.float64)
        return h if self.R is None else h @ self.R

    def _from_u(self, u: torch.Tensor) -> torch.Tensor:  # h = R u
        return u if self.R is None else u @ self.R.T

    def sample_latent(self, n: int, t: float = 0.0, *, generator: torch.Generator | None = None) -> torch.Tensor:
        u = self.block.sample_latent(n * self.blocks, 0.0, generator=generator).reshape(n, self.latent_dim)
        h = self._from_u(u)
        if t > 0:
            tt = torch.tensor(t, dtype=torch.float64)
            h = beta(tt) * h + sigma(tt).sqrt() * torch.randn(h.shape, generator=generator, dtype=torch.float64)
        return h

    def sample(self, n: int, t: float = 0.0, *, generator: torch.Generator | None = None) -> torch.Tensor:
        x = self.sample_latent(n, 0.0, generator=generator) @ self.B.T
        if t > 0:
            tt = torch.tensor(t, dtype=torch.float64)
            x = beta(tt) * x + sigma(tt).sqrt() * torch.randn(x.shape, generator=generator, dtype=torch.float64)
        return x

    def _per_block_t(self, t, n: int) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float64).expand(n)
        return t.repeat_interleave(self.blocks)

    def latent_log_prob(self, h: torch.Tensor, t) -> torch.Tensor:
        """log p_t^h(h) = sum over blocks of the block's log density of (R^T h)_block (R keeps volume)."""
        n, k = h.shape[0], self.block.latent_dim
        u = self._to_u(h).reshape(n * self.blocks, k)
        return self.block.latent_log_prob(u, self._per_block_t(t, n)).reshape(n, self.blocks).sum(1)

    def latent_score(self, h: torch.Tensor, t) -> torch.Tensor:
        """grad log p_t^h(h) = R (per-block scores of R^T h)."""
        n, k = h.shape[0], self.block.latent_dim
        u = self._to_u(h).reshape(n * self.blocks, k)
        return self._from_u(self.block.latent_score(u, self._per_block_t(t, n)).reshape(n, self.latent_dim))

    def log_prob(self, x: torch.Tensor, t) -> torch.Tensor:
        """log p_t(x) for t > 0: the latent law times N(0, sigma I) on the complement of span B."""
        x = x.to(torch.float64)
        s = sigma(torch.as_tensor(t, dtype=torch.float64).expand(x.shape[0]))
        h = x @ self.B
        perp = x - h @ self.B.T
        k = self.B.shape[0] - self.latent_dim
        return self.latent_log_prob(h, t) - 0.5 * (perp.pow(2).sum(1) / s + k * torch.log(2 * math.pi * s))

    def score(self, x: torch.Tensor, t) -> torch.Tensor:
        """grad log p_t(x) = B grad log p_t^h(B^T x) - (I - B B^T) x / sigma(t)."""
        x64 = x.to(torch.float64)
        s = sigma(torch.as_tensor(t, dtype=torch.float64).expand(x.shape[0]))
        h = x64 @ self.B
        return (self.latent_score(h, t) @ self.B.T - (x64 - h @ self.B.T) / s[:, None]).to(x.dtype)
