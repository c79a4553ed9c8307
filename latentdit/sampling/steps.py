"""Pieces every sampler shares: the step loop, the per-step callback and the exact-linear data step.

A step goes from t_k down to t_{k+1} (forward time decreases along a grid). In the half log-SNR
lambda(t) = log(beta / sqrt(sigma)) the step has length h = lambda_{k+1} - lambda_k > 0.
"""

from __future__ import annotations

import math
from typing import Callable

import torch


from latentdit.diffusion import OU
from latentdit.progress import progress_bar

LOWER_ORDER_FINAL_BELOW = 15  # multistep solvers: with fewer steps, the last steps drop in order (stabler)

StepCallback = Callable[[dict], None]
"""Called after every step with ``{"i", "t", "t_next", "x", "denoised"}``: the step index, the times it
went from and to, the state at ``t_next`` and the denoiser output the step used at ``t``."""


def step_range(n: int, progress: bool, desc: str):
    """range(n), with a progress bar when ``progress``."""
    it = range(n)
    return progress_bar(it, desc=desc, unit="step", leave=False) if progress else it


def grid_floats(ts: torch.Tensor) -> list[float]:
    """The grid as Python floats, read once: per-step coefficients are then plain float arithmetic
    instead of a dozen 0-d tensor operations (and host synchronisations) per step."""
    return [float(t) for t in ts.detach().cpu().tolist()]


def batch_time(t: float, x: torch.Tensor) -> torch.Tensor:
    """The time t broadcast to the batch, (N,) in x's dtype and device (a stride-0 view)."""
    return torch.tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])


def report(callback: StepCallback | None, i: int, t: float, t_next: float, x: torch.Tensor,
           denoised: torch.Tensor) -> None:
    """Hand one finished step to ``callback`` (if any)."""
    if callback is not None:
        callback({"i": i, "t": t, "t_next": t_next, "x": x, "denoised": denoised})


def psi(j: int, h: float) -> float:
    """psi_j(h) = int_0^h e^{u - h} u^{j-1} / (j-1)! du, by psi_1 = 1 - e^{-h} and the recursion
    psi_{j+1}(h) = h^j / j! - psi_j(h) (integration by parts): the weight of the (j-1)-th
    lambda-derivative of the data prediction in one exact-linear ODE step."""
    p = -math.expm1(-h)
    for i in range(1, j):
        p = h ** i / math.factorial(i) - p
    return p


def linear_part(x: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    """sqrt(sigma(t') / sigma(t)) x: the exactly integrated linear part of the data-prediction ODE."""
    return math.sqrt(OU.sigma(t_next) / OU.sigma(t)) * x


def data_step(x: torch.Tensor, d: torch.Tensor, t: float, t_next: float, d1: torch.Tensor | None = None,
              d2: torch.Tensor | None = None) -> torch.Tensor:
    """One step of the probability-flow ODE in data-prediction form, integrated exactly in its linear
    part with x0(lambda) ~ d + (lambda - lambda_k) d1 + (lambda - lambda_k)^2 / 2 d2:

        x' = sqrt(sigma'/sigma) x + beta' (psi_1(h) d + psi_2(h) d1 + psi_3(h) d2),  h = lambda' - lambda.
    """
    h = OU.log_snr(t_next) - OU.log_snr(t)
    b = OU.beta(t_next)
    out = torch.add(linear_part(x, t, t_next), d, alpha=b * psi(1, h))
    if d1 is not None:
        out.add_(d1, alpha=b * psi(2, h))
    if d2 is not None:
        out.add_(d2, alpha=b * psi(3, h))
    return out
