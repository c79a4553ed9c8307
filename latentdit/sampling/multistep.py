"""Multistep solvers that lead at a handful of network evaluations: iPNDM and UniPC.

Both take a denoiser and a decreasing grid like every sampler of :mod:`latentdit.sampling.solvers`
and make exactly one network evaluation per step, the first step included (no extra start-up calls).

- **iPNDM** integrates the probability-flow ODE in the noise-to-signal ratio s = sqrt(sigma) / beta =
  e^{-lambda} and the scaled state y = x / beta (the variance-exploding form of the OU process):
  dy/ds = (y - D(x, t)) / s, where D is the denoiser. Each step is an Adams-Bashforth step of
  order up to 4 on the derivatives of the latest steps, starting at order 1 and raising the order by
  one per step (the lower-order warm start that replaces pseudo-Runge-Kutta start-up steps).
  ``ipndm`` uses the fixed Adams-Bashforth weights (exact on steps of equal length in s), ``ipndm_v``
  the weights of the actual, unequal steps.
- **UniPC** (the unified predictor-corrector in data-prediction form) integrates the linear part
  exactly, as DPM-Solver++ does, and the data prediction with a polynomial through the last
  evaluations in lambda; the corrector reuses the evaluation at the new point, which the next step
  needs anyway, so it costs no network evaluation. It is not applied after the last step.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from latentdit.diffusion import OU, Denoiser
from latentdit.sampling.steps import (LOWER_ORDER_FINAL_BELOW, StepCallback, batch_time, grid_floats, linear_part, psi,
                                     report, step_range)

# Adams-Bashforth weights of orders 1-4 for steps of equal length, newest derivative first.
AB_WEIGHTS = ((1.0,), (1.5, -0.5), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))


def noise_ratio(t: float) -> float:
    """s(t) = sqrt(sigma(t)) / beta(t) = e^{-lambda(t)}: the variance-exploding noise level of time t."""
    return math.exp(-OU.log_snr(t))


def adams_bashforth_weights(nodes: list[float], a: float, b: float) -> list[float]:
    """Weights w_j with sum_j w_j f(nodes[j]) = (1 / (b - a)) int_a^b p(s) ds for the polynomial p
    interpolating f at ``nodes`` (newest first): the variable-step Adams-Bashforth rule."""
    if len(nodes) == 1:
        return [1.0]
    scale = b - a
    z = [(n - a) / scale for n in nodes]  # nodes relative to the step, the step is [0, 1]
    out = []
    for j, zj in enumerate(z):
        others = [zk for k, zk in enumerate(z) if k != j]
        basis = np.poly(others) / np.prod([zj - zk for zk in others])  # Lagrange basis polynomial
        out.append(float(np.polyval(np.polyint(basis), 1.0)))
    return out


def _ipndm(denoiser: Denoiser, x: torch.Tensor, ts: torch.Tensor, order: int, variable: bool,
           progress: bool, callback: StepCallback | None) -> torch.Tensor:
    t = grid_floats(ts)
    s = [noise_ratio(u) for u in t]
    hist: list[torch.Tensor] = []  # dy/ds of the latest steps, newest first
    y = x / OU.beta(t[0])
    for k in step_range(len(t) - 1, progress, "ipndm"):
        x = y * OU.beta(t[k])
        d = denoiser(x, batch_time(t[k], x))
        hist = [(y - d) / s[k]] + hist[:order - 1]
        p = len(hist)
        nodes = [s[k - j] for j in range(p)]
        w = adams_bashforth_weights(nodes, s[k], s[k + 1]) if variable else AB_WEIGHTS[p - 1]
        slope = sum(wj * hj for wj, hj in zip(w, hist))
        y = y + (s[k + 1] - s[k]) * slope
        report(callback, k, t[k], t[k + 1], y * OU.beta(t[k + 1]), d)
    return y * OU.beta(t[-1])


def ipndm(denoiser: Denoiser, x: torch.Tensor, ts: torch.Tensor, *, order: int = 4,
          generator: torch.Generator | None = None, progress: bool = False,
          callback: StepCallback | None = None) -> torch.Tensor:
    """iPNDM: Adams-Bashforth of order up to ``order`` (<= 4) with the fixed weights, in (s, y) (see
    the module docstring), warm-started at order 1. One network evaluation per step."""
    if not 1 <= order <= 4:
        raise ValueError(f"ipndm: order={order} must be 1, 2, 3 or 4")
    return _ipndm(denoiser, x, ts, order, False, progress, callback)


def ipndm_v(denoiser: Denoiser, x: torch.Tensor, ts: torch.Tensor, *, order: int = 4,
            generator: torch.Generator | None = None, progress: bool = False,
            callback: StepCallback | None = None) -> torch.Tensor:
    """iPNDM with the weights of the actual, unequal steps in s (the Lagrange polynomial through the
    latest derivatives integrated over the step): the same order on every grid."""
    if not 1 <= order <= 4:
        raise ValueError(f"ipndm_v: order={order} must be 1, 2, 3 or 4")
    return _ipndm(denoiser, x, ts, order, True, progress, callback)


def unipc_coefficients(r: list[float], h: float, variant: str) -> list[float]:
    """rho solving sum_j rho_j r_j^(i-1) = i! psi_{i+1}(h) / (h^i B(h)), i = 1..len(r), with
    B(h) = psi_1(h) = 1 - e^{-h} (``bh2``) or h (``bh1``): the weights that make
    B(h) sum_j rho_j (D_j - D_0) / r_j the exact integral of the polynomial through the data
    predictions at relative offsets r_j = (lambda_j - lambda_0) / h (UniPC's linear system)."""
    if not r:
        return []
    bh = psi(1, h) if variant == "bh2" else h
    rhs = [math.factorial(i) * psi(i + 1, h) / (h ** i * bh) for i in range(1, len(r) + 1)]
    mat = np.array([[rj ** (i - 1) for rj in r] for i in range(1, len(r) + 1)])
    return [float(v) for v in np.linalg.solve(mat, np.array(rhs))]


def _unipc_update(x: torch.Tensor, t: float, t_next: float, m0: torch.Tensor,
                  others: list[tuple[float, torch.Tensor]], variant: str) -> torch.Tensor:
    """x' = sqrt(sigma'/sigma) x + beta' (psi_1(h) m0 + B(h) sum_j rho_j (m_j - m0) / r_j) over the
    other data predictions ``others`` = [(r_j, m_j)] at relative lambda-offsets r_j."""
    h = OU.log_snr(t_next) - OU.log_snr(t)
    b = OU.beta(t_next)
    out = torch.add(linear_part(x, t, t_next), m0, alpha=b * psi(1, h))
    rho = unipc_coefficients([r for r, _ in others], h, variant)
    bh = psi(1, h) if variant == "bh2" else h
    for c, (r, m) in zip(rho, others):
        out.add_(m - m0, alpha=b * bh * c / r)
    return out


def unipc(denoiser: Denoiser, x: torch.Tensor, ts: torch.Tensor, *, order: int = 3, variant: str = "bh2",
          generator: torch.Generator | None = None, progress: bool = False,
          callback: StepCallback | None = None) -> torch.Tensor:
    """UniPC-``order`` in data-prediction form: the predictor UniP-p uses the p - 1 previous data
    predictions (order p), the corrector UniC-p adds the one at the new point (order p + 1). The
    order starts at 1 and grows by one per step; below ``LOWER_ORDER_FINAL_BELOW`` steps the last
    steps drop in order as DPM-Solver++(3M)'s do. One network evaluation per step."""
    if not 1 <= order <= 3 or variant not in ("bh1", "bh2"):
        raise ValueError(f"unipc: order={order} must be 1, 2 or 3 and variant={variant!r} bh1 or bh2")
    t = grid_floats(ts)
    lam = [OU.log_snr(u) for u in t]
    n = len(t) - 1
    m = denoiser(x, batch_time(t[0], x))
    hist: list[tuple[float, torch.Tensor]] = []  # (lambda, D) of earlier steps, newest first
    for k in step_range(n, progress, "unipc"):
        p = min(order, k + 1, n - k) if n < LOWER_ORDER_FINAL_BELOW else min(order, k + 1)
        h = lam[k + 1] - lam[k]
        prev = [((lj - lam[k]) / h, mj) for lj, mj in hist[:p - 1]]
        x_pred = _unipc_update(x, t[k], t[k + 1], m, prev, variant)
        if k == n - 1:
            report(callback, k, t[k], t[k + 1], x_pred, m)
            return x_pred
        m_next = denoiser(x_pred, batch_time(t[k + 1], x_pred))
        x = _unipc_update(x, t[k], t[k + 1], m, prev + [(1.0, m_next)], variant)
        report(callback, k, t[k], t[k + 1], x, m)
        hist = ([(lam[k], m)] + hist)[:max(order - 1, 1)]
        m = m_next
    return x
