"""Samplers over a denoiser (see :mod:`latentdit.sampling.solvers`), time grids and :func:`sample`.

Nothing here knows about models: adapt a network with ``lambda x, t: model.denoise(x, t, y)``
(or :class:`latentdit.models.guidance.GuidedDenoiser`), a score function with
:func:`denoiser_from_score`.
"""

from __future__ import annotations

import torch

from latentdit.diffusion import Denoiser, ScoreFn, denoised_from_score
from latentdit.sampling.grids import DEFAULT_RHO, GRIDS, time_grid
from latentdit.sampling.solvers import DEFAULT_GRID, SAMPLERS, Sampler, nfe_per_step, score_of

__all__ = ["DEFAULT_GRID", "DEFAULT_RHO", "GRIDS", "SAMPLERS", "CountingCalls", "Sampler", "denoiser_from_score",
           "get_sampler", "nfe_per_step", "sample", "score_of", "time_grid"]


def get_sampler(name: str) -> Sampler:
    """The sampler function registered as ``name`` (one of :data:`SAMPLERS`)."""
    if name not in SAMPLERS:
        raise ValueError(f"get_sampler: name={name!r} is not one of {list(SAMPLERS)}")
    return SAMPLERS[name]


def denoiser_from_score(score_fn: ScoreFn) -> Denoiser:
    """A denoiser E[x0 | x_t] = (x + sigma s) / beta from a score function (e.g. an exact one)."""
    return lambda x, t: denoised_from_score(x, score_fn(x, t), t)


@torch.no_grad()
def sample(denoiser: Denoiser, shape: tuple[int, ...], *, sampler: str = "dpm2m", steps: int = 50,
           T0: float = 1e-3, T: float = 10.0, grid: str = "auto", rho: float = DEFAULT_RHO,
           generator: torch.Generator | None = None, device=None, dtype: torch.dtype = torch.float32,
           progress: bool = False, denoise: bool = False) -> torch.Tensor:
    """Draw y_T ~ N(0, I) and run ``sampler`` with ``steps`` steps on a ``grid`` time grid down to T0.

    ``denoise=True`` returns Tweedie's E[x0 | x_T0] = denoiser(x_T0, T0) instead of x_T0 (one more
    network evaluation): for a latent model W_B f(W_B^T x, T0) / beta(T0), exactly in the latent
    subspace, with no residual noise off it.
    """
    fn = get_sampler(sampler)
    ts = time_grid(T0, T, steps, DEFAULT_GRID[sampler] if grid == "auto" else grid, rho=rho, device=device)
    x = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    x = fn(denoiser, x, ts, generator=generator, progress=progress)
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
