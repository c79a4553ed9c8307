"""The Ornstein-Uhlenbeck forward process and denoising score matching (Sec. 2 of the paper).

Forward SDE (w = 1): dx = -x/2 dt + dW, so given x0

    x_t = beta(t) x0 + sqrt(sigma(t)) z,   beta(t) = exp(-t/2),   sigma(t) = 1 - exp(-t).

Notation trap: ``sigma(t)`` is a *variance*, not a standard deviation.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t) -> E[x0 | x_t]

WEIGHTINGS = ("none", "sigma", "sigma2", "edm")


class OUSchedule:
    """The OU noise schedule of Sec. 2, the one place its formulas live.

    beta(t) = exp(-t/2) (mean coefficient), sigma(t) = 1 - exp(-t) (variance), the half log-SNR
    lambda(t) = log(beta / sqrt(sigma)) and its inverse. Every method takes a Python float (and
    returns a float: per-step sampler coefficients) or a tensor (and returns a tensor).
    """

    @staticmethod
    def beta(t):
        """Mean coefficient beta(t) = exp(-t/2) of the OU transition kernel (Sec. 2)."""
        return math.exp(-0.5 * t) if isinstance(t, (int, float)) else torch.exp(-0.5 * t)

    @staticmethod
    def sigma(t):
        """Variance sigma(t) = 1 - exp(-t) of the OU transition kernel (Sec. 2); a variance."""
        return -math.expm1(-t) if isinstance(t, (int, float)) else -torch.expm1(-t)

    @classmethod
    def log_snr(cls, t):
        """lambda(t) = log(beta(t) / sqrt(sigma(t))) = -t/2 - log(sigma(t))/2."""
        if isinstance(t, (int, float)):
            return -0.5 * t - 0.5 * math.log(cls.sigma(t))
        return -0.5 * t - 0.5 * torch.log(cls.sigma(t))

    @staticmethod
    def t_from_log_snr(lam):
        """Inverse of :meth:`log_snr`: exp(-t) / (1 - exp(-t)) = exp(2 lambda), t = softplus(-2 lambda)."""
        if isinstance(lam, (int, float)):
            z = -2.0 * lam
            return z + math.log1p(math.exp(-z)) if z > 0 else math.log1p(math.exp(z))
        return torch.nn.functional.softplus(-2.0 * lam)


OU = OUSchedule()
beta, sigma, log_snr, t_from_log_snr = OU.beta, OU.sigma, OU.log_snr, OU.t_from_log_snr


def score_from_denoised(x: torch.Tensor, x0_hat: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Eq. (2.5): s(x, t) = (W_B f - x) / sigma(t) with W_B f = beta(t) x0_hat, i.e.
    s = (beta(t) x0_hat - x) / sigma(t) for x, x0_hat (N, D) and t (N,) (Tweedie's formula)."""
    return (OU.beta(t)[:, None] * x0_hat - x) / OU.sigma(t)[:, None]


def denoised_from_score(x: torch.Tensor, score: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`score_from_denoised`: E[x0 | x_t] = (x + sigma(t) s) / beta(t)."""
    return (x + OU.sigma(t)[:, None] * score) / OU.beta(t)[:, None]


def add_noise(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t = beta(t) x0 + sqrt(sigma(t)) z  (the OU transition, Sec. 2). ``t`` has shape (N,)."""
    b = beta(t)[:, None]
    s = sigma(t)[:, None]
    return b * x0 + s.sqrt() * noise


def dsm_target(x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Conditional score grad log p_t(x_t | x0) = (beta(t) x0 - x_t) / sigma(t) (Sec. 2, eq. 2.3)."""
    return (beta(t)[:, None] * x0 - xt) / sigma(t)[:, None]


def draw_noise(n: int, dim: int, *, generator: torch.Generator | None = None, device=None,
               basis: torch.Tensor | None = None) -> torch.Tensor:
    """The DSM noise z of x_t = beta x0 + sigma z (eq. 2.1): (n, dim) ambient normals, or with a frozen
    orthonormal basis W_B (dim, d0) its latent part z = W_B u, u ~ N(0, I_d0).

    The latent-form loss of eq. (2.5) sees the noise only through W_B^T z, which is N(0, I_d0) both
    ways, so with W_B frozen the two give the same loss in law (and the same gradient for the same
    u). The latent draw costs d0 normals per point and its stream does not depend on D, so runs that
    differ only in D see the same latent draws. Not for a learned W_B, whose gradient sees all of z.
    """
    if basis is None:
        return torch.randn((n, dim), generator=generator, device=device)
    u = torch.randn((n, basis.shape[1]), generator=generator, device=device)
    return u @ basis.to(device=u.device, dtype=u.dtype).T


def sample_times(n: int, T0: float, T: float, *, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 kind: str = "uniform") -> torch.Tensor:
    """t ~ Uniform[T0, T] (the training time distribution of eq. 2.3), or ``kind="log"``: log t
    uniform on [log T0, log T], which gives every decade of t the same share of the batch (the
    first decade [T0, 10 T0], which dominates Thm 3.2's functional, is otherwise 9 T0 / T of the draws)."""
    u = torch.rand(n, generator=generator, device=device, dtype=dtype)
    if kind == "log":
        return T0 * (T / T0) ** u
    return T0 + (T - T0) * u


def weight(t: torch.Tensor, kind: str, c_out2: torch.Tensor | None = None) -> torch.Tensor:
    """Per-time weighting gamma(t) of the score-matching loss.

    - ``none``:   gamma = 1, the paper's loss (eq. 2.3); its variance explodes as t -> T0.
    - ``sigma``:  gamma = sigma(t), the usual likelihood-style weighting.
    - ``sigma2``: gamma = sigma(t)^2, i.e. plain x0-prediction: ||W_B f - beta x0||^2.
    - ``edm``:    gamma = sigma(t)^2 / c_out(t)^2, which gives the network's own output a unit-scale
                  regression target under the preconditioning of :mod:`latentdit.models.score`.
    """
    s = sigma(t)
    if kind == "none":
        return torch.ones_like(s)
    if kind == "sigma":
        return s
    if kind == "sigma2":
        return s * s
    if kind == "edm":
        if c_out2 is None:
            raise ValueError("weighting 'edm' needs the preconditioning factor c_out(t)^2")
        return s * s / c_out2
    raise ValueError(f"unknown weighting {kind!r}; choose one of {WEIGHTINGS}")


def dsm_loss_from_score(score_fn: ScoreFn, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                        weighting: str = "sigma") -> torch.Tensor:
    """E gamma(t) || s(x_t, t) - (beta x0 - x_t)/sigma ||^2 / D for any score function (eq. 2.3).

    This is the definition; :meth:`LatentScoreNet.loss` computes the same value in latent form.
    ``edm`` weighting needs the model's preconditioning and is not available here.
    """
    xt = add_noise(x0, t, noise)
    err = (score_fn(xt, t) - dsm_target(x0, xt, t)).pow(2).mean(dim=1)
    return (weight(t, weighting) * err).mean()
