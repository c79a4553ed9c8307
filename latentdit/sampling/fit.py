"""Time grids fitted to a model on a few hundred warm-up trajectories.

- :func:`fit_grid` (dynamic programming, as GITS does): solve the probability-flow ODE accurately on
  a fine grid for a batch of warm-up noises (the teacher trajectories x_i at fine times t_i, with
  the denoiser outputs D_i there); the cost of jumping from fine time i to j is the local error of
  one first-order data-prediction step (DDIM, which is Euler in (s, x / beta)) started on the
  teacher trajectory, c(i, j) = mean_n || sqrt(sigma_j / sigma_i) x_i + beta_j psi_1(h) D_i - x_j ||;
  the grid of ``steps`` jumps from T to T0 with the least total cost is found exactly by dynamic
  programming over the fine grid. The warm-up costs ``fine_steps`` NFE per trajectory, once; the
  per-pair costs reuse the teacher's evaluations and cost none.
- :func:`fit_rho`: the Karras grid exponent rho that minimises the end-point error of a given sampler
  against the teacher (golden-section search in log rho).

The result is a tensor of explicit times from T to T0, which :func:`latentdit.sampling.sample`
takes as ``grid`` and an export stores in ``sampling.json`` as a list.
"""

from __future__ import annotations

import math

import torch

from latentdit.diffusion import OU, Denoiser
from latentdit.sampling.grids import time_grid
from latentdit.sampling.registry import get_sampler

TEACHER = "dpm3m"  # evaluates the denoiser at the states it reports, as the step costs need


def teacher_trajectory(denoiser: Denoiser, x: torch.Tensor, ts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(states (G+1, N, D) at every time of the fine grid ``ts``, denoiser outputs (G, N, D) at the
    first G of them): the probability-flow ODE solved by the teacher from x at ts[0]."""
    states, outs = [x], []

    def keep(info: dict) -> None:
        states.append(info["x"])
        outs.append(info["denoised"])

    with torch.no_grad():
        get_sampler(TEACHER)(denoiser, x, ts, callback=keep)
    return torch.stack(states), torch.stack(outs)


def step_costs(states: torch.Tensor, outs: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
    """c (G+1, G+1): c[i, j] (i < j) the mean norm of the local error of one DDIM step from the teacher
    state at t_i to t_j; +inf elsewhere."""
    G = len(ts) - 1
    t = ts.to(torch.float64)
    lam, sig, bet = OU.log_snr(t), OU.sigma(t), OU.beta(t)
    cost = torch.full((G + 1, G + 1), math.inf, dtype=torch.float64)
    for i in range(G):
        h = lam[i + 1:] - lam[i]  # (G - i,) to every later time j
        a = (sig[i + 1:] / sig[i]).sqrt().to(states.dtype)[:, None, None]
        b = (bet[i + 1:] * -torch.expm1(-h)).to(states.dtype)[:, None, None]  # beta_j psi_1(h)
        err = a * states[i] + b * outs[i] - states[i + 1:]
        cost[i, i + 1:] = err.flatten(2).norm(dim=2).mean(dim=1).to(torch.float64)
    return cost


def cheapest_path(cost: torch.Tensor, steps: int) -> list[int]:
    """Indices 0 = i_0 < ... < i_steps = G minimising sum_k cost[i_k, i_{k+1}] (dynamic programming)."""
    G = cost.shape[0] - 1
    if not 1 <= steps <= G:
        raise ValueError(f"cheapest_path: steps={steps} must be between 1 and the fine grid's {G} steps")
    best = torch.full((steps + 1, G + 1), math.inf, dtype=torch.float64)
    arg = torch.zeros((steps + 1, G + 1), dtype=torch.long)
    best[0, 0] = 0.0
    for k in range(1, steps + 1):
        total = best[k - 1][:, None] + cost  # (from i, to j)
        best[k], arg[k] = total.min(dim=0)
    path = [G]
    for k in range(steps, 0, -1):
        path.append(int(arg[k, path[-1]]))
    return path[::-1]


def fit_grid(denoiser: Denoiser, x: torch.Tensor, steps: int, *, T0: float, T: float, fine_steps: int = 100,
             fine_grid: str = "logsnr") -> torch.Tensor:
    """A grid of ``steps`` steps from T to T0 fitted by dynamic programming on the teacher trajectories
    started at the warm-up noises ``x`` (N, D) (a few hundred rows; see the module docstring)."""
    fine = time_grid(T0, T, fine_steps, fine_grid)
    states, outs = teacher_trajectory(denoiser, x, fine.to(x.device))
    path = cheapest_path(step_costs(states, outs, fine), steps)
    return fine[path].clone()


def fit_rho(denoiser: Denoiser, x: torch.Tensor, sampler: str, steps: int, *, T0: float, T: float,
            bounds: tuple[float, float] = (1.0, 40.0), iters: int = 12, fine_steps: int = 100) -> float:
    """The Karras exponent rho in ``bounds`` minimising the mean end-point error of ``sampler`` with
    ``steps`` steps against the teacher, by golden-section search in log rho (``iters`` trials,
    ``steps`` NFE per warm-up trajectory each)."""
    with torch.no_grad():
        target = get_sampler(TEACHER)(denoiser, x, time_grid(T0, T, fine_steps, "logsnr").to(x.device))
    fn = get_sampler(sampler)

    def error(log_rho: float) -> float:
        with torch.no_grad():
            out = fn(denoiser, x, time_grid(T0, T, steps, "karras", rho=math.exp(log_rho)).to(x.device))
        return float((out - target).flatten(1).norm(dim=1).mean())

    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = error(a), error(b)
    for _ in range(iters):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = error(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = error(b)
    return math.exp(a if fa <= fb else b)
