"""Samplers over a denoiser, their registry, time grids and :func:`sample`.

Nothing here knows about models: adapt a network with ``lambda x, t: model.denoise(x, t, y)``
(or :class:`latentdit.models.guidance.GuidedDenoiser`), a score function with
:func:`denoiser_from_score`. :data:`SAMPLERS` holds one :class:`SamplerSpec` per sampler (function,
default grid, model calls per step); :data:`NFE_CONVENTION` says how calls are counted.
"""

from __future__ import annotations

from typing import Sequence

import torch

from latentdit.diffusion import Denoiser, ScoreFn, denoised_from_score
from latentdit.sampling.grids import DEFAULT_RHO, GRIDS, explicit_grid, time_grid
from latentdit.sampling.registry import (DEFAULTS, NFE_CONVENTION, SAMPLERS, Sampler, SamplerSpec, SamplingDefaults,
                                         get_sampler, nfe_per_step, spec)
from latentdit.sampling.solvers import score_of
from latentdit.sampling.steps import StepCallback

__all__ = ["DEFAULTS", "DEFAULT_RHO", "GRIDS", "NFE_CONVENTION", "SAMPLERS", "CountingCalls", "Sampler", "SamplerSpec",
           "SamplingDefaults", "StepCallback", "denoiser_from_score", "explicit_grid", "get_sampler", "nfe_per_step",
           "resolve_grid", "sample", "score_of", "spec", "time_grid"]


def denoiser_from_score(score_fn: ScoreFn) -> Denoiser:
    """A denoiser E[x0 | x_t] = (x + sigma s) / beta from a score function (e.g. an exact one)."""
    return lambda x, t: denoised_from_score(x, score_fn(x, t), t)


def resolve_grid(sampler: str, steps: int, T0: float, T: float, grid: str | Sequence[float] = "auto",
                 rho: float = DEFAULT_RHO, device=None) -> torch.Tensor:
    """The time grid of a sampling call: a named kind (``auto`` = the sampler's own) with ``steps``
    steps, or explicit times (a fitted grid), whose length must then be ``steps + 1``."""
    if isinstance(grid, str):
        return time_grid(T0, T, steps, spec(sampler).grid if grid == "auto" else grid, rho=rho, device=device)
    ts = explicit_grid(grid, T0, T, device=device)
    if len(ts) - 1 != steps:
        raise ValueError(f"the explicit grid has {len(ts) - 1} steps but steps={steps}; pass steps={len(ts) - 1} "
                         "or a named grid")
    return ts


@torch.no_grad()
def sample(denoiser: Denoiser, shape: tuple[int, ...], *, sampler: str = DEFAULTS.sampler,
           steps: int = DEFAULTS.steps, T0: float = 1e-3, T: float = 10.0,
           grid: str | Sequence[float] = DEFAULTS.grid, rho: float = DEFAULTS.rho,
           generator: torch.Generator | None = None, device=None, dtype: torch.dtype = torch.float32,
           progress: bool = False, denoise: bool = DEFAULTS.denoise,
           callback: StepCallback | None = None) -> torch.Tensor:
    """Draw y_T ~ N(0, I) and run ``sampler`` with ``steps`` steps on a ``grid`` time grid down to T0.

    ``grid`` is a kind (:data:`GRIDS`, or ``auto`` for the sampler's own) or explicit times from T to
    T0 (a fitted grid, :func:`latentdit.sampling.fit.fit_grid`). ``callback`` sees every step.
    ``denoise=True`` returns Tweedie's E[x0 | x_T0] = denoiser(x_T0, T0) instead of x_T0 (one more
    network evaluation): for a latent model W_B f(W_B^T x, T0) / beta(T0), exactly in the latent
    subspace, with no residual noise off it.
    """
    fn = get_sampler(sampler)
    ts = resolve_grid(sampler, steps, T0, T, grid, rho, device=device)
    x = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    x = fn(denoiser, x, ts, generator=generator, progress=progress, callback=callback)
    if denoise:
        x = denoiser(x, torch.full((x.shape[0],), T0, dtype=x.dtype, device=x.device))
    return x


class CountingCalls:
    """Wraps a denoiser (or any model function) and counts its evaluations (NFE)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.fn(x, t)
