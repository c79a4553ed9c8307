"""The sampler registry (one entry per sampler), the NFE convention and the sampling defaults.

NFE convention (the cost unit of every figure in this package): **every call of the model counts**,
the first one included, and so does a final call that maps the state to T0 or to data (Tweedie's
denoise of ``sample(..., denoise=True)``, or a jump to sigma = 0 in libraries that make one). A
sampler with ``steps`` steps makes exactly ``nfe_per_step * steps`` calls (``+ 1`` with
``denoise=True``); no solver here spends a call outside its steps, and every one of them stops at
T0 > 0 (early stopping).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable

import torch

from latentdit.sampling.grids import DEFAULT_RHO
from latentdit.sampling.multistep import ipndm, ipndm_v, unipc
from latentdit.sampling.solvers import (ddim, dpm_solver_2m, dpm_solver_3m, euler_maruyama, exponential_integrator,
                                        heun_ode)

NFE_CONVENTION = ("every model call counts, the first and the last included: a final jump to T0 or to "
                  "sigma = 0, or a final Tweedie denoise, costs one NFE like any other call")

Sampler = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class SamplerSpec:
    """One sampler: its function, the grid it runs on by default and its model calls per step."""

    fn: Sampler
    grid: str
    nfe_per_step: int = 1
    order: int = 1  # the ODE solvers' convergence order (weak order for the SDE samplers)
    deterministic: bool = True

    def nfe(self, steps: int, denoise: bool = False) -> int:
        """The exact number of model calls of ``steps`` steps (+1 for a final denoise)."""
        return self.nfe_per_step * steps + int(denoise)


SAMPLERS: dict[str, SamplerSpec] = {
    "em": SamplerSpec(euler_maruyama, "log", deterministic=False),
    "ei": SamplerSpec(exponential_integrator, "log", deterministic=False),
    "heun": SamplerSpec(heun_ode, "logsnr", nfe_per_step=2, order=2),
    "ddim": SamplerSpec(ddim, "logsnr"),
    "dpm2m": SamplerSpec(dpm_solver_2m, "logsnr", order=2),
    "dpm3m": SamplerSpec(dpm_solver_3m, "logsnr", order=3),
    "ipndm": SamplerSpec(ipndm, "karras", order=4),
    "ipndm_v": SamplerSpec(ipndm_v, "karras", order=4),
    "unipc": SamplerSpec(unipc, "logsnr", order=3),
}
"""Every sampler by name: the one table of samplers."""


@dataclass
class SamplingDefaults:
    """The settings a pipeline samples with when a call leaves them unset (an export's
    ``sampling.json``; the run configuration's ``[sample]`` section extends it)."""

    sampler: str = "dpm2m"  # a name of SAMPLERS
    steps: int = 50
    # auto (the sampler's own, SamplerSpec.grid) | uniform | log | logsnr | karras | polylambda, or
    # explicit times from T to T0 (a fitted grid)
    grid: str | list[float] = "auto"
    rho: float = DEFAULT_RHO  # the karras grid's exponent
    guidance: float = 1.0  # classifier-free guidance scale (1 = no guidance)
    # Return Tweedie's E[x0 | x_T0] (one more NFE) instead of x_T0: no residual noise of scale
    # sqrt(sigma(T0)). Off by default, the paper's estimator (the law at T0); on for image data.
    denoise: bool = False

    @classmethod
    def from_dict(cls, d: dict) -> "SamplingDefaults":
        """From a ``sampling.json`` record; keys it lacks take today's defaults."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


DEFAULTS = SamplingDefaults()


def spec(name: str) -> SamplerSpec:
    """The registry entry of sampler ``name``."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler name={name!r} is not one of {list(SAMPLERS)}")
    return SAMPLERS[name]


def get_sampler(name: str) -> Sampler:
    """The sampler function registered as ``name``."""
    if name not in SAMPLERS:
        raise ValueError(f"get_sampler: name={name!r} is not one of {list(SAMPLERS)}")
    return SAMPLERS[name].fn


def nfe_per_step(name: str) -> int:
    """Model calls per step of sampler ``name``."""
    if name not in SAMPLERS:
        raise ValueError(f"nfe_per_step: name={name!r} is not one of {list(SAMPLERS)}")
    return SAMPLERS[name].nfe_per_step
