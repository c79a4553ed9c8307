"""Decreasing time grids from T down to T0 for the samplers."""

from __future__ import annotations

import math

import torch

from latentdit.diffusion import OU

GRIDS = ("uniform", "log", "logsnr", "karras", "polylambda")
DEFAULT_RHO = 7.0  # the karras grid's exponent (EDM's choice)
DEFAULT_POWER = 1.5  # the polylambda grid's exponent


def time_grid(T0: float, T: float, steps: int, kind: str = "log", *, rho: float = DEFAULT_RHO,
              power: float = DEFAULT_POWER, device=None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A decreasing grid of ``steps + 1`` times from T to T0.

    - ``uniform``: equal steps in t (the paper's App. D.1 step size mu = (T - T0) / steps).
    - ``log``: geometric in t, dense near T0 where the score is stiff (drift ~ x / sigma(t)).
    - ``logsnr``: uniform in lambda(t) = log(beta / sqrt(sigma)) (DPM-Solver's choice).
    - ``karras``: the EDM grid, uniform in s^(1/rho) for the noise-to-signal ratio
      s(t) = sqrt(sigma(t)) / beta(t) = exp(-lambda(t)); rho -> 0 tends to ``logsnr``, larger rho
      puts more steps at low noise.
    - ``polylambda``: polynomial in lambda, lambda_k = lambda_T0 - (lambda_T0 - lambda_T) (1 - k/steps)^power:
      power = 1 is ``logsnr``, power > 1 puts more steps at low noise.
    """
    if not isinstance(steps, int) or steps <= 0:
        raise ValueError(f"time_grid: steps={steps!r} must be a positive integer")
    if not 0 < T0 < T:
        raise ValueError(f"time_grid: need 0 < T0 < T, got T0={T0}, T={T}")
    if kind not in GRIDS:
        raise ValueError(f"time_grid: kind={kind!r} is not one of {list(GRIDS)}")
    if kind == "karras" and not rho > 0:
        raise ValueError(f"time_grid: rho={rho} must be > 0")
    if kind == "polylambda" and not power > 0:
        raise ValueError(f"time_grid: power={power} must be > 0")
    u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    if kind == "uniform":
        ts = T + (T0 - T) * u
    elif kind == "log":
        ts = torch.exp(math.log(T) + (math.log(T0) - math.log(T)) * u)
    elif kind == "logsnr":
        l0, l1 = OU.log_snr(T), OU.log_snr(T0)
        ts = OU.t_from_log_snr(l0 + (l1 - l0) * u)
    elif kind == "polylambda":
        l0, l1 = OU.log_snr(T), OU.log_snr(T0)
        ts = OU.t_from_log_snr(l1 - (l1 - l0) * (1.0 - u) ** power)
    else:
        s_max, s_min = math.exp(-OU.log_snr(T)), math.exp(-OU.log_snr(T0))
        s = (s_max ** (1 / rho) + (s_min ** (1 / rho) - s_max ** (1 / rho)) * u) ** rho
        ts = OU.t_from_log_snr(-torch.log(s))
    ts[0], ts[-1] = T, T0
    return ts.to(device=device, dtype=dtype)


def explicit_grid(times, T0: float, T: float, *, device=None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """An explicit grid (a sequence of times, e.g. a fitted one from ``sampling.json``) checked to run
    strictly downwards from T to T0 (within 1e-9 relative)."""
    ts = torch.as_tensor(list(times), dtype=torch.float64)
    if ts.ndim != 1 or len(ts) < 2:
        raise ValueError(f"explicit_grid: need at least two times, got {len(ts)}")
    if not (ts[1:] < ts[:-1]).all():
        raise ValueError("explicit_grid: the times must decrease strictly from T to T0")
    if abs(float(ts[0]) - T) > 1e-9 * T or abs(float(ts[-1]) - T0) > 1e-9 * T0:
        raise ValueError(f"explicit_grid: the grid runs from {float(ts[0])} to {float(ts[-1])}, "
                         f"not from T={T} to T0={T0}")
    ts[0], ts[-1] = T, T0
    return ts.to(device=device, dtype=dtype)
