"""The Ornstein-Uhlenbeck forward process and denoising score matching (Sec. 2 of the paper).

Forward SDE (w = 1): dx = -x/2 dt + dW, so given x0

    x_t = beta(t) x0 + sqrt(sigma(t)) z,   beta(t) = exp(-t/2),   sigma(t) = 1 - exp(-t).

Notation trap: ``sigma(t)`` is a *variance*, not a standard deviation.
"""

from __future__ import annotations

from typing import Callable

import torch

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

WEIGHTINGS = ("none", "sigma", "sigma2", "edm")


def beta(t: torch.Tensor) -> torch.Tensor:
    """Mean coefficient beta(t) = exp(-t/2) of the OU transition kernel (Sec. 2)."""
    return torch.exp(-0.5 * t)


def sigma(t: torch.Tensor) -> torch.Tensor:
    """Variance sigma(t) = 1 - exp(-t) of the OU transition kernel (Sec. 2); a variance."""
    return -torch.expm1(-t)


def log_snr(t: torch.Tensor) -> torch.Tensor:
    """lambda(t) = log(beta(t) / sqrt(sigma(t))), the half log signal-to-noise ratio."""
    return -0.5 * t - 0.5 * torch.log(sigma(t))


def t_from_log_snr(lam: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`log_snr`: exp(-t) / (1 - exp(-t)) = exp(2 lambda)."""
    return torch.nn.functional.softplus(-2.0 * lam)


def add_noise(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t = beta(t) x0 + sqrt(sigma(t)) z  (the OU transition, Sec. 2). ``t`` has shape (N,)."""
    b = beta(t)[:, None]
    s = sigma(t)[:, None]
    return b * x0 + s.sqrt() * noise


def dsm_target(x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Conditional score grad log p_t(x_t | x0) = (beta(t) x0 - x_t) / sigma(t) (Sec. 2, eq. 2.3)."""
    return (beta(t)[:, None] * x0 - xt) / sigma(t)[:, None]


def sample_times(n: int, T0: float, T: float, *, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """t ~ Uniform[T0, T] (the training time distribution of eq. 2.3)."""
    u = torch.rand(n, generator=generator, device=device, dtype=dtype)
    return T0 + (T - T0) * u


def weight(t: torch.Tensor, kind: str, c_out2: torch.Tensor | None = None) -> torch.Tensor:
    """Per-time weighting gamma(t) of the score-matching loss.

    - ``none``:   gamma = 1, the paper's loss (eq. 2.3); its variance explodes as t -> T0.
    - ``sigma``:  gamma = sigma(t), the usual likelihood-style weighting (DESIGN.md Sec. 4).
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
