"""Samplers: plain functions over a denoiser and a decreasing time grid.

Every sampler has the signature
``sampler(denoiser, x, ts, *, generator=None, progress=False, callback=None)``
where ``denoiser(x, t)`` returns the posterior mean E[x0 | x_t = x] for x (N, D) and t (N,)
(for the latent network, W_B f(W_B^T x, t) / beta(t)), ``x`` is the initial state at ``ts[0]``
(normally N(0, I), the OU stationary law) and ``ts`` runs from T down to T0. All samplers stop at
ts[-1] = T0 (early stopping); ``callback`` sees every finished step
(:data:`latentdit.sampling.steps.StepCallback`). The SDE samplers and Heun need the score; they get it from the
denoiser by eq. (2.5) (:func:`latentdit.diffusion.score_from_denoised`). The ODE solvers in
data-prediction form (ddim, dpm2m, dpm3m) use the denoiser directly.

Forward time t decreases along the grid; each step has length h = t_k - t_{k+1} > 0 in t, or
h = lambda_{k+1} - lambda_k > 0 in the half log-SNR lambda.
"""

from __future__ import annotations

import math

import torch

from latentdit.diffusion import OU, Denoiser, score_from_denoised
from latentdit.sampling.steps import (LOWER_ORDER_FINAL_BELOW, StepCallback, batch_time, data_step, grid_floats, report,
                                     step_range)


def score_of(denoiser: Denoiser, x: torch.Tensor, t: float) -> torch.Tensor:
    """The score at (x, t) from one denoiser evaluation, eq. (2.5)."""
    return score_and_denoised(denoiser, x, t)[0]


def score_and_denoised(denoiser: Denoiser, x: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(score, denoiser output) at (x, t) from one denoiser evaluation, eq. (2.5)."""
    tt = batch_time(t, x)
    d = denoiser(x, tt)
    return score_from_denoised(x, d, tt), d


def _noise(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def euler_maruyama(denoiser: Denoiser, x: torch.Tensor, ts: torch.Tensor, *,
                   generator: torch.Generator | None = None, progress: bool = False,
                   callback: StepCallback | None = None) -> torch.Tensor:
    """The paper's sampler (App. D.1): reverse SDE dy = [y/2 + s(y, T - tau)] dtau + dW, Euler-Maruyama.

    y_{k+1} = y_k + h (y_k / 2 + s(y_k, t_k)) + sqrt(h) z_k.  One network evaluation per step.
    """
    t = grid_floats(ts)
    for k in step_range(len(t) - 1, progress, "euler-maruyama"):
        h = t[k] - t[k + 1]
        s, d = score_and_denoised(denoiser, x, t[k])
        x = torch.add(x, s.add_(x, alpha=0.5), alpha=h).add_(_noise(x, generator), alpha=math.sqrt(h))
        report(callback, k, t[k], t[k + 1], x, d)
    return x


def exponential_integrator(denoiser: Denoiser, x: torch.Tensor, ts: torch.Tensor, *,
                           generator: torch.Generator | None = None, progress: bool = False,
                           callback: StepCallback | None = None) -> torch.Tensor:
    """Reverse SDE with the linear part y/2 integrated exactly and the score frozen on each step.

    y_{k+1} = e^{h/2} y_k + 2 (e^{h/2} - 1) s(y_k, t_k) + sqrt(e^h - 1) z_k.
    """
    t = grid_floats(ts)
    for k in step_range(len(t) - 1, progress, "exp-integrator"):
        h = t[k] - t[k + 1]
        a = math.exp(0.5 * h)
        s, d = score_and_denoised(denoiser, x, t[k])
        x = torch.add(a * x, s, alpha=2.0 * (a - 1.0)).add_(_noise(x, generator), alpha=math.sqrt(math.expm1(h)))
        report(callback, k, t[k], t[k + 1], x, d)
    return x


def heun_ode(denoiser: Denoiser, x: torch.Tensor, ts: torch.Tensor, *,
             generator: torch.Generator | None = None, progress: bool = False,
             callback: StepCallback | None = None) -> torch.Tensor:
    """Probability-flow ODE dx/dt = -x/2 - s(x, t)/2 integrated backwards with Heun's method.

    Two network evaluations per step (2 * steps in all).
    """
    t = grid_floats(ts)
    for k in step_range(len(t) - 1, progress, "heun"):
        dt = t[k + 1] - t[k]  # negative
        s, d = score_and_denoised(denoiser, x, t[k])
        d1 = s.add_(x).mul_(-0.5)
        x_pred = torch.add(x, d1, alpha=dt)
        d2 = score_of(denoiser, x_pred, t[k + 1]).add_(x_pred).mul_(-0.5)
        x = torch.add(x, d1.add_(d2), alpha=0.5 * dt)
        report(callback, k, t[k], t[k + 1], x, d)
    return x


def ddim(denoiser: Denoiser, x: torch.Tensor, ts: torch.Tensor, *,
         generator: torch.Generator | None = None, progress: bool = False,
         callback: StepCallback | None = None) -> torch.Tensor:
    """Deterministic DDIM step (eta = 0): x' = beta' x0_hat + sqrt(sigma') eps_hat, one NFE per step."""
    t = grid_floats(ts)
    for k in step_range(len(t) - 1, progress, "ddim"):
        d = denoiser(x, batch_time(t[k], x))
        x = data_step(x, d, t[k], t[k + 1])
        report(callback, k, t[k], t[k + 1], x, d)
    return x


def dpm_solver_2m(denoiser: Denoiser, x: torch.Tensor, ts: torch.Tensor, *,
                  generator: torch.Generator | None = None, progress: bool = False,
                  callback: StepCallback | None = None) -> torch.Tensor:
    """Second-order multistep solver of the probability-flow ODE (DPM-Solver++(2M) form).

    Data prediction D_k = x0_hat(x_k, t_k); from the second step on, D is extrapolated linearly in
    lambda: D' = (1 + 1/(2r)) D_k - 1/(2r) D_{k-1}, r = h_{k-1}/h_k. The last step is first order
    (more stable at few steps). One network evaluation per step.
    """
    t = grid_floats(ts)
    prev_x0, prev_h = None, None
    n = len(t) - 1
    for k in step_range(n, progress, "dpm-solver-2m"):
        x0 = denoiser(x, batch_time(t[k], x))
        h = OU.log_snr(t[k + 1]) - OU.log_snr(t[k])
        if prev_x0 is None or k == n - 1:
            d = x0
        else:
            c = 0.5 * h / prev_h  # 1 / (2r)
            d = torch.add((1 + c) * x0, prev_x0, alpha=-c)
        x = data_step(x, d, t[k], t[k + 1])
        report(callback, k, t[k], t[k + 1], x, x0)
        prev_x0, prev_h = x0, h
    return x


def dpm_solver_3m(denoiser: Denoiser, x: torch.Tensor, ts: torch.Tensor, *,
                  generator: torch.Generator | None = None, progress: bool = False,
                  callback: StepCallback | None = None) -> torch.Tensor:
    """Third-order multistep solver of the probability-flow ODE in data-prediction form.

    The data prediction is interpolated in lambda through the last three evaluations
    (D_k, D_{k-1}, D_{k-2} at offsets 0, r1 = lambda_{k-1} - lambda_k, r2 = lambda_{k-2} - lambda_k):
    d1_j = (D_{k-j} - D_k) / r_j, then D'' = 2 (d1_1 - d1_2) / (r1 - r2) and D' = d1_1 - r1 D'' / 2,
    and each step is integrated exactly with the psi weights of
    :func:`latentdit.sampling.steps.data_step`. The first step
    is first order and the second second order (not enough history yet); below
    ``LOWER_ORDER_FINAL_BELOW`` steps the last two steps are of orders 2 and 1, which is stabler at a
    handful of steps. One NFE per step.
    """
    t = grid_floats(ts)
    lam = [OU.log_snr(s) for s in t]
    hist: list[tuple[float, torch.Tensor]] = []  # (lambda, D), newest last
    n = len(t) - 1
    for k in step_range(n, progress, "dpm-solver-3m"):
        x0 = denoiser(x, batch_time(t[k], x))
        d1 = d2 = None
        order = min(3, k + 1, n - k) if n < LOWER_ORDER_FINAL_BELOW else min(3, k + 1)
        if order >= 2:
            r1 = hist[-1][0] - lam[k]
            g1 = (hist[-1][1] - x0) / r1
            if order >= 3:
                r2 = hist[-2][0] - lam[k]
                g2 = (hist[-2][1] - x0) / r2
                d2 = (g1 - g2).mul_(2.0 / (r1 - r2))
                d1 = g1.sub_(d2, alpha=0.5 * r1)
            else:
                d1 = g1
        x = data_step(x, x0, t[k], t[k + 1], d1, d2)
        report(callback, k, t[k], t[k + 1], x, x0)
        hist = (hist + [(lam[k], x0)])[-2:]
    return x
