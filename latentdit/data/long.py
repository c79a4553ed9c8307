"""A long-sequence ground truth: a mixture of K Gaussians with diagonal covariance over R^{d0}.

The latent h in R^{d0} (d0 = L x token size, read by the model as L tokens) has the law

    h ~ sum_k pi_k N(mu_k, diag(s_k)),

with mean patterns mu_k and variance profiles s_k that vary smoothly over the coordinate index
(a few periodic waves each, so the law looks alike at every position while each component has
its own pattern). Under the OU process the latent stays such a mixture,

    h_t ~ sum_k pi_k N(beta(t) mu_k, diag(beta(t)^2 s_k + sigma(t))),

so log densities and scores at any t are closed form at cost O(K d0) per point: nothing d0 x d0 is
formed. The posterior couples every coordinate with every other one: the responsibilities of the
components are a softmax over sums across all d0 coordinates, so denoising one token needs
evidence from the whole sequence (what attention provides).

The data live in R^D with D = d0 and B = I (a plain DiT: the model's encoder is the identity,
``encoder.init = "identity"``). With B = I and Q_k = I this is the law of
:class:`latentdit.data.gmm.SubspaceGMM`, which ``as_subspace_gmm`` builds for small d0 (tests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from latentdit.data.chunked import ChunkedMixture
from latentdit.data.gmm import SubspaceGMM
from latentdit.schedule import beta, sigma


@dataclass
class LongMixture(ChunkedMixture):
    """The law of the module docstring. All tensors float64 on CPU; inputs are cast."""

    weights: torch.Tensor  # (K,)
    means: torch.Tensor  # (K, d0)
    variances: torch.Tensor  # (K, d0), > 0

    @classmethod
    def random(cls, dim: int, components: int, seed: int = 0, *, waves: int = 3, max_freq: int = 16,
               mean_power: float = 0.5, var_range: tuple[float, float] = (0.2, 0.8)) -> "LongMixture":
        """A random law with per-coordinate second moment about mean_power + mean(var_range) = 1.

        mu_k(i) = sum_j a_kj cos(2 pi f_kj i / d0 + phi_kj) with ``waves`` integer frequencies
        f_kj in [1, max_freq] and amplitudes scaled so that the mean of mu_k^2 is ``mean_power``;
        s_k(i) = lo + (hi - lo) (1 + cos(2 pi g_k i / d0 + psi_k)) / 2; weights softmax(0.3 z).
        """
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if components < 1:
            raise ValueError(f"components must be >= 1, got {components}")
        lo, hi = var_range
        if not 0 < lo <= hi:
            raise ValueError(f"var_range must satisfy 0 < lo <= hi, got {var_range}")
        g = torch.Generator().manual_seed(seed)
        f64 = torch.float64
        pos = 2 * math.pi * torch.arange(dim, dtype=f64) / dim  # (d0,)
        freqs = torch.randint(1, max_freq + 1, (components, waves), generator=g).to(f64)
        phases = 2 * math.pi * torch.rand(components, waves, generator=g, dtype=f64)
        amps = torch.randn(components, waves, generator=g, dtype=f64)
        means = (amps[:, :, None] * torch.cos(freqs[:, :, None] * pos + phases[:, :, None])).sum(1)
        means = means * math.sqrt(mean_power) / means.pow(2).mean(1, keepdim=True).sqrt().clamp_min(1e-12)
        vf = torch.randint(1, max_freq + 1, (components, 1), generator=g).to(f64)
        vp = 2 * math.pi * torch.rand(components, 1, generator=g, dtype=f64)
        variances = lo + (hi - lo) * 0.5 * (1 + torch.cos(vf * pos + vp))
        weights = torch.softmax(0.3 * torch.randn(components, generator=g, dtype=f64), 0)
        return cls(weights, means, variances)

    @property
    def latent_dim(self) -> int:
        return self.means.shape[1]

    ambient_dim = latent_dim  # B = I

    @property
    def components(self) -> int:
        return self.means.shape[0]

    # ------------------------------------------------------------------ sampling

    def sample_latent(self, n: int, t: float = 0.0, *, generator: torch.Generator | None = None,
                      return_labels: bool = False):
        """n draws of h_t (t = 0: the data)."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.latent_dim, generator=generator, dtype=torch.float64)
        h = self.means[k] + self.variances[k].sqrt() * z
        if t > 0:
            tt = torch.tensor(float(t), dtype=torch.float64)
            h = beta(tt) * h + sigma(tt).sqrt() * torch.randn(n, self.latent_dim, generator=generator,
                                                             dtype=torch.float64)
        return (h, k) if return_labels else h

    sample = sample_latent  # D = d0, B = I

    # ------------------------------------------------------------------ law at time t

    def _terms(self, h: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log pi_k + log N_k(h), (h - beta mu_k) / var_k) for a chunk of rows: (n, K), (n, K, d0)."""
        b, s = beta(t)[:, None, None], sigma(t)[:, None, None]
        var = b * b * self.variances[None] + s  # (n, K, d0)
        r = h[:, None, :] - b * self.means[None]
        prec_r = r / var
        logn = -0.5 * ((r * prec_r).sum(-1) + torch.log(var).sum(-1) + self.latent_dim * math.log(2 * math.pi))
        return logn + torch.log(self.weights)[None], prec_r

    def _chunk_width(self) -> int:
        return self.latent_dim

    def latent_score(self, h: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """grad log p_t(h) = -sum_k r_k(h) (h - beta mu_k) / (beta^2 s_k + sigma), O(K d0) per row."""
        out = [-(torch.softmax(logw, dim=1)[:, :, None] * prec_r).sum(1) for logw, prec_r in self._chunks(h, t)]
        return torch.cat(out)


    def second_moment(self) -> float:
        """Mean over coordinates of E[h_i^2] = sum_k pi_k (mu_ki^2 + s_ki)."""
        return float((self.weights[:, None] * (self.means.pow(2) + self.variances)).sum(0).mean())

    def as_subspace_gmm(self):
        """The same law as a :class:`~latentdit.data.gmm.SubspaceGMM` with B = I (d0 x d0 matrices:
        small d0 only)."""
        d0, K = self.latent_dim, self.components
        eye = torch.eye(d0, dtype=torch.float64)
        return SubspaceGMM(eye, self.weights.clone(), self.means.clone(), eye.expand(K, d0, d0).clone(),
                           self.variances.clone())
