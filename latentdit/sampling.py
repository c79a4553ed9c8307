"""Samplers: plain functions over a score function and a decreasing time grid.

Every sampler has the signature ``sampler(score_fn, x, ts, *, generator=None, progress=False)``
where ``score_fn(x, t)`` returns grad log p_t(x) for x (N, D) and t (N,), ``x`` is the initial
state at ``ts[0]`` (normally N(0, I), the OU stationary law) and ``ts`` runs from T down to T0. All
samplers stop at ts[-1] = T0 (early stopping; no final denoising step). Nothing here knows about
models: adapt a network with ``lambda x, t: model(x, t, y)``.

Forward time t decreases along the grid; each step has length h = t_k - t_{k+1} > 0.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from tqdm.auto import tqdm

from latentdit.diffusion import ScoreFn, beta, log_snr, sigma, t_from_log_snr
from latentdit.errors import ConfigError

GRIDS = ("uniform", "log", "logsnr")


def time_grid(T0: float, T: float, steps: int, kind: str = "log", *, device=None,
              dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A decreasing grid of ``steps + 1`` times from T to T0.

    - ``uniform``: equal steps in t (the paper's App. D.1 step size mu = (T - T0) / steps).
    - ``log``: geometric in t, dense near T0 where the score is stiff (drift ~ x / sigma(t)).
    - ``logsnr``: uniform in lambda(t) = log(beta / sqrt(sigma)) (DPM-Solver's choice).
    """
    if steps <= 0:
        raise ConfigError(f"steps={steps} must be > 0; use at least one sampling step")
    if not 0 < T0 < T:
        raise ConfigError(f"need 0 < T0 < T, got T0={T0}, T={T}; choose a positive early-stopping time T0 below T")
    u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    if kind == "uniform":
        ts = T + (T0 - T) * u
    elif kind == "log":
        ts = torch.exp(math.log(T) + (math.log(T0) - math.log(T)) * u)
    elif kind == "logsnr":
        l0, l1 = log_snr(torch.tensor(T, dtype=torch.float64)), log_snr(torch.tensor(T0, dtype=torch.float64))
        ts = t_from_log_snr(l0 + (l1 - l0) * u)
    else:
        raise ConfigError(f"unknown time grid {kind!r}; choose one of {GRIDS}")
    ts[0], ts[-1] = T, T0
    return ts.to(device=device, dtype=dtype)


def _steps(ts: torch.Tensor, progress: bool, desc: str):
    it = range(len(ts) - 1)
    return tqdm(it, desc=desc, leave=False, dynamic_ncols=True) if progress else it


def _t(tk: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return tk.to(x.dtype).expand(x.shape[0])


def _noise(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def euler_maruyama(score_fn: ScoreFn, x: torch.Tensor, ts: torch.Tensor, *,
                   generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
    """The paper's sampler (App. D.1): reverse SDE dy = [y/2 + s(y, T - tau)] dtau + dW, Euler-Maruyama.

    y_{k+1} = y_k + h (y_k / 2 + s(y_k, t_k)) + sqrt(h) z_k.  One score evaluation per step.
    """
    for k in _steps(ts, progress, "euler-maruyama"):
        h = float(ts[k] - ts[k + 1])
        x = x + h * (0.5 * x + score_fn(x, _t(ts[k], x))) + math.sqrt(h) * _noise(x, generator)
    return x


def exponential_integrator(score_fn: ScoreFn, x: torch.Tensor, ts: torch.Tensor, *,
                           generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
    """Reverse SDE with the linear part y/2 integrated exactly and the score frozen on each step.

    y_{k+1} = e^{h/2} y_k + 2 (e^{h/2} - 1) s(y_k, t_k) + sqrt(e^h - 1) z_k.
    """
    for k in _steps(ts, progress, "exp-integrator"):
        h = float(ts[k] - ts[k + 1])
        a = math.exp(0.5 * h)
        x = a * x + 2.0 * (a - 1.0) * score_fn(x, _t(ts[k], x)) + math.sqrt(math.expm1(h)) * _noise(x, generator)
    return x


def heun_ode(score_fn: ScoreFn, x: torch.Tensor, ts: torch.Tensor, *,
             generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
    """Probability-flow ODE dx/dt = -x/2 - s(x, t)/2 integrated backwards with Heun's method.

    Two score evaluations per step (2 * steps in all).
    """
    def drift(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return -0.5 * x - 0.5 * score_fn(x, _t(t, x))

    for k in _steps(ts, progress, "heun"):
        dt = float(ts[k + 1] - ts[k])  # negative
        d1 = drift(x, ts[k])
        x_pred = x + dt * d1
        x = x + 0.5 * dt * (d1 + drift(x_pred, ts[k + 1]))
    return x


def _x0_estimate(score_fn: ScoreFn, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Tweedie: E[x0 | x_t] = (x + sigma(t) s(x, t)) / beta(t)."""
    tt = _t(t, x)
    return (x + sigma(tt)[:, None] * score_fn(x, tt)) / beta(tt)[:, None]


def _data_step(x: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
    """First-order exact-linear step of the probability-flow ODE in data-prediction form:
    x' = sqrt(sigma'/sigma) x + beta' (1 - e^{-h}) x0, h = lambda(t') - lambda(t)."""
    h = float(log_snr(t_next) - log_snr(t))
    ratio = math.sqrt(float(sigma(t_next) / sigma(t)))
    return ratio * x + float(beta(t_next)) * (-math.expm1(-h)) * x0


def ddim(score_fn: ScoreFn, x: torch.Tensor, ts: torch.Tensor, *,
         generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
    """Deterministic DDIM step (eta = 0): x' = beta' x0_hat + sqrt(sigma') eps_hat, one NFE per step."""
    for k in _steps(ts, progress, "ddim"):
        x = _data_step(x, _x0_estimate(score_fn, x, ts[k]), ts[k], ts[k + 1])
    return x


def dpm_solver_2m(score_fn: ScoreFn, x: torch.Tensor, ts: torch.Tensor, *,
                  generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
    """Second-order multistep solver of the probability-flow ODE (DPM-Solver++(2M) form).

    Data prediction D_k = x0_hat(x_k, t_k); from the second step on, D is extrapolated linearly in
    lambda: D' = (1 + 1/(2r)) D_k - 1/(2r) D_{k-1}, r = h_{k-1}/h_k. The last step is first order
    (more stable at few steps). One score evaluation per step.
    """
    prev_x0, prev_h = None, None
    n = len(ts) - 1
    for k in _steps(ts, progress, "dpm-solver-2m"):
        x0 = _x0_estimate(score_fn, x, ts[k])
        h = float(log_snr(ts[k + 1]) - log_snr(ts[k]))
        if prev_x0 is None or k == n - 1:
            d = x0
        else:
            r = prev_h / h
            d = (1 + 0.5 / r) * x0 - (0.5 / r) * prev_x0
        x = _data_step(x, d, ts[k], ts[k + 1])
        prev_x0, prev_h = x0, h
    return x


Sampler = Callable[..., torch.Tensor]

SAMPLERS: dict[str, Sampler] = {
    "em": euler_maruyama,
    "ei": exponential_integrator,
    "heun": heun_ode,
    "ddim": ddim,
    "dpm2m": dpm_solver_2m,
}

DEFAULT_GRID = {"em": "log", "ei": "log", "heun": "logsnr", "ddim": "logsnr", "dpm2m": "logsnr"}


def nfe_per_step(name: str) -> int:
    return 2 if name == "heun" else 1


def get_sampler(name: str) -> Sampler:
    if name not in SAMPLERS:
        import difflib
        close = difflib.get_close_matches(name, list(SAMPLERS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown sampler {name!r}; choose one of {list(SAMPLERS)}{hint}")
    return SAMPLERS[name]


@torch.no_grad()
def sample(score_fn: ScoreFn, shape: tuple[int, ...], *, sampler: str = "dpm2m", steps: int = 50,
           T0: float = 1e-3, T: float = 10.0, grid: str = "auto", generator: torch.Generator | None = None,
           device=None, dtype: torch.dtype = torch.float32, progress: bool = False) -> torch.Tensor:
    """Draw y_T ~ N(0, I) and run ``sampler`` on a ``grid`` time grid down to T0."""
    fn = get_sampler(name=sampler)
    ts = time_grid(T0, T, steps, DEFAULT_GRID[sampler] if grid == "auto" else grid, device=device)
    x = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    return fn(score_fn, x, ts, generator=generator, progress=progress)


class CountingScore:
    """Wraps a score function and counts evaluations (network function evaluations, NFE)."""

    def __init__(self, score_fn: ScoreFn):
        self.score_fn, self.calls = score_fn, 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.score_fn(x, t)
