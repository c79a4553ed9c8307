"""The Ornstein-Uhlenbeck schedule of Sec. 2 and Tweedie's formula: the notation every layer shares.

Forward SDE (w = 1): dx = -x/2 dt + dW, so given x0

    x_t = beta(t) x0 + sqrt(sigma(t)) z,   beta(t) = exp(-t/2),   sigma(t) = 1 - exp(-t).

Notation trap: ``sigma(t)`` is a *variance*, not a standard deviation. The forward process and the
loss are in :mod:`latentdit.diffusion`.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t) -> E[x0 | x_t]

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
