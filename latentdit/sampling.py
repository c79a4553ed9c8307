"""Samplers: plain functions over a score function and a decreasing time grid.

Every sampler has the signature ``sampler(score_fn, x, ts, *, generator=None, progress=False)``
where ``score_fn(x, t)`` returns grad log p_t(x) for x (N, D) and t (N,), ``x`` is the initial
state at ``ts[0]`` (normally N(0, I), the OU stationary law) and ``ts`` runs from T down to T0. All
samplers stop at ts[-1] = T0 (early stopping); :func:`sample` can add one final denoising step,
Tweedie's estimate E[x0 | x_T0], which removes the residual noise of scale sqrt(sigma(T0)) from every
direction (the paper's estimator is the law at T0 itself, without it). Nothing here knows about
models: adapt a network with ``lambda x, t: model(x, t, y)``.

Forward time t decreases along the grid; each step has length h = t_k - t_{k+1} > 0.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from tqdm.auto import tqdm

from latentdit.diffusion import ScoreFn, log_snr, t_from_log_snr
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


def _steps(n: int, progress: bool, desc: str):
    it = range(n)
    return tqdm(it, desc=desc, leave=False, dynamic_ncols=True) if progress else it


def _times(ts: torch.Tensor) -> list[float]:
    """The grid as Python floats, read once: per-step coefficients are then plain float arithmetic
    instead of a dozen 0-d tensor operations (and host synchronisations) per step."""
    return [float(t) for t in ts.detach().cpu().tolist()]


def _t(t: float, x: torch.Tensor) -> torch.Tensor:
    """The time t broadcast to the batch, (N,) in x's dtype and device (a stride-0 view)."""
    return torch.tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])


def _sigma(t: float) -> float:
    return -math.expm1(-t)


def _log_snr(t: float) -> float:
    return -0.5 * t - 0.5 * math.log(_sigma(t))


def _noise(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def euler_maruyama(score_fn: ScoreFn, x: torch.Tensor, ts: torch.Tensor, *,
                   generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
    """The paper's sampler (App. D.1): reverse SDE dy = [y/2 + s(y, T - tau)] dtau + dW, Euler-Maruyama.

    y_{k+1} = y_k + h (y_k / 2 + s(y_k, t_k)) + sqrt(h) z_k.  One score evaluation per step.
    """
    t = _times(ts)
    for k in _steps(len(t) - 1, progress, "euler-maruyama"):
        h = t[k] - t[k + 1]
        drift = torch.add(score_fn(x, _t(t[k], x)), x, alpha=0.5)
        x = torch.add(x, drift, alpha=h).add_(_noise(x, generator), alpha=math.sqrt(h))
    return x


def exponential_integrator(score_fn: ScoreFn, x: torch.Tensor, ts: torch.Tensor, *,
                           generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
    """Reverse SDE with the linear part y/2 integrated exactly and the score frozen on each step.

    y_{k+1} = e^{h/2} y_k + 2 (e^{h/2} - 1) s(y_k, t_k) + sqrt(e^h - 1) z_k.
    """
    t = _times(ts)
    for k in _steps(len(t) - 1, progress, "exp-integrator"):
        h = t[k] - t[k + 1]
        a = math.exp(0.5 * h)
        s = score_fn(x, _t(t[k], x))
        x = torch.add(a * x, s, alpha=2.0 * (a - 1.0)).add_(_noise(x, generator), alpha=math.sqrt(math.expm1(h)))
    return x


def heun_ode(score_fn: ScoreFn, x: torch.Tensor, ts: torch.Tensor, *,
             generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
    """Probability-flow ODE dx/dt = -x/2 - s(x, t)/2 integrated backwards with Heun's method.

    Two score evaluations per step (2 * steps in all).
    """
    def drift(x: torch.Tensor, t: float) -> torch.Tensor:
        return torch.add(x, score_fn(x, _t(t, x))).mul_(-0.5)

    t = _times(ts)
    for k in _steps(len(t) - 1, progress, "heun"):
        dt = t[k + 1] - t[k]  # negative
        d1 = drift(x, t[k])
        x_pred = torch.add(x, d1, alpha=dt)
        x = torch.add(x, d1.add_(drift(x_pred, t[k + 1])), alpha=0.5 * dt)
    return x


def _x0_estimate(score_fn: ScoreFn, x: torch.Tensor, t: float) -> torch.Tensor:
    """Tweedie: E[x0 | x_t] = (x + sigma(t) s(x, t)) / beta(t)."""
    return torch.add(x, score_fn(x, _t(t, x)), alpha=_sigma(t)).div_(math.exp(-0.5 * t))


def _data_step(x: torch.Tensor, x0: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    """First-order exact-linear step of the probability-flow ODE in data-prediction form:
    x' = sqrt(sigma'/sigma) x + beta' (1 - e^{-h}) x0, h = lambda(t') - lambda(t)."""
    h = _log_snr(t_next) - _log_snr(t)
    ratio = math.sqrt(_sigma(t_next) / _sigma(t))
    return torch.add(ratio * x, x0, alpha=math.exp(-0.5 * t_next) * (-math.expm1(-h)))


def ddim(score_fn: ScoreFn, x: torch.Tensor, ts: torch.Tensor, *,
         generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
    """Deterministic DDIM step (eta = 0): x' = beta' x0_hat + sqrt(sigma') eps_hat, one NFE per step."""
    t = _times(ts)
    for k in _steps(len(t) - 1, progress, "ddim"):
        x = _data_step(x, _x0_estimate(score_fn, x, t[k]), t[k], t[k + 1])
    return x


def dpm_solver_2m(score_fn: ScoreFn, x: torch.Tensor, ts: torch.Tensor, *,
                  generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
    """Second-order multistep solver of the probability-flow ODE (DPM-Solver++(2M) form).

    Data prediction D_k = x0_hat(x_k, t_k); from the second step on, D is extrapolated linearly in
    lambda: D' = (1 + 1/(2r)) D_k - 1/(2r) D_{k-1}, r = h_{k-1}/h_k. The last step is first order
    (more stable at few steps). One score evaluation per step.
    """
    t = _times(ts)
    prev_x0, prev_h = None, None
    n = len(t) - 1
    for k in _steps(n, progress, "dpm-solver-2m"):
        x0 = _x0_estimate(score_fn, x, t[k])
        h = _log_snr(t[k + 1]) - _log_snr(t[k])
        if prev_x0 is None or k == n - 1:
            d = x0
        else:
            c = 0.5 * h / prev_h  # 1 / (2r)
            d = torch.add((1 + c) * x0, prev_x0, alpha=-c)
        x = _data_step(x, d, t[k], t[k + 1])
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
           device=None, dtype: torch.dtype = torch.float32, progress: bool = False,
           denoise: bool = False) -> torch.Tensor:
    """Draw y_T ~ N(0, I) and run ``sampler`` on a ``grid`` time grid down to T0.

    ``denoise=True`` returns Tweedie's E[x0 | x_T0] = (x + sigma(T0) s(x, T0)) / beta(T0) instead of
    x_T0 (one more score evaluation): for a latent model this is W_B f(W_B^T x, T0) / beta(T0), exactly
    in the latent subspace, with no residual noise off it.
    """
    fn = get_sampler(name=sampler)
    ts = time_grid(T0, T, steps, DEFAULT_GRID[sampler] if grid == "auto" else grid, device=device)
    x = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    x = fn(score_fn, x, ts, generator=generator, progress=progress)
    return _x0_estimate(score_fn, x, T0) if denoise else x


class CountingScore:
    """Wraps a score function and counts evaluations (network function evaluations, NFE)."""

    def __init__(self, score_fn: ScoreFn):
        self.score_fn, self.calls = score_fn, 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.score_fn(x, t)
