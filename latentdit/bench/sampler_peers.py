"""Public samplers run on our OU problem: k-diffusion and diffusers, through adapters to their sigmas.

Both libraries work in sigma, the variance-exploding noise level. For the OU process of Sec. 2,
x_t = beta(t) x0 + sqrt(sigma(t)) z with beta = e^{-t/2}, sigma = 1 - e^{-t}:

- sigma_VE(t) = sqrt(sigma(t)) / beta(t) = sqrt(e^t - 1), so t = log(1 + sigma_VE^2);
- k-diffusion's state is x_VE = x / beta(t) = x e^{t/2} (x0 + sigma_VE z);
- diffusers' state is the variance-preserving x itself (alpha_t = 1 / sqrt(1 + sigma_VE^2) = beta(t));
- the denoiser E[x0 | x_t] is the same function in all three (k-diffusion's ``model(x, sigma)``
  and diffusers' ``prediction_type="sample"``).

Their grids run from sigma_VE(T) to sigma_VE(T0) and then make a last call to jump to sigma = 0,
which counts as one NFE like any other (:data:`latentdit.sampling.NFE_CONVENTION`). Their output is then
a sample at t = 0; the exact forward kernel x_T0 = beta(T0 - t) x + sqrt(sigma(T0 - t)) z (fresh noise,
no network call) carries it to T0, where every sampler is compared. The k-diffusion rows marked
``to sigma_min`` run the same solver on a grid that stops at sigma_VE(T0) (no jump to 0), the
convention of latentdit's own solvers.

A peer that cannot be imported is returned as absent with the reason, never skipped silently.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
import types
from typing import Callable

import torch

from latentdit.diffusion import OU, Denoiser
from latentdit.sampling import CountingCalls

PeerRun = Callable[[Denoiser, torch.Tensor, int, float, float], tuple[torch.Tensor, float]]  # (x, its time t)
N_TRAIN = 1000  # diffusers' discrete training grid, laid uniformly in t over [T0, T]


def ve_sigma(t: float) -> float:
    """sigma_VE(t) = sqrt(e^t - 1)."""
    return math.sqrt(math.expm1(t))


def t_of_ve_sigma(s: torch.Tensor) -> torch.Tensor:
    """t = log(1 + sigma_VE^2), the inverse of :func:`ve_sigma`."""
    return torch.log1p(s * s)


def _drop_modules(prefix: str) -> None:
    for name in [m for m in sys.modules if m == prefix or m.startswith(prefix + ".")]:
        del sys.modules[name]


def load_k_diffusion_sampling() -> tuple[types.ModuleType, str]:
    """(``k_diffusion.sampling``, how it was loaded). The package's ``__init__`` imports its training
    modules (scikit-image, torchvision); when that fails, the sampling module is loaded alone, with
    torchvision stubbed while its ``utils`` imports (the samplers use none of the image helpers)."""
    try:
        return importlib.import_module("k_diffusion.sampling"), "import k_diffusion.sampling"
    except Exception as e:  # noqa: BLE001 - any import failure leads to the fallback
        first = f"{type(e).__name__}: {e}"
    _drop_modules("k_diffusion")
    found = importlib.util.find_spec("k_diffusion")
    if found is None or not found.submodule_search_locations:
        raise ImportError("k-diffusion is not installed (pip install --no-deps k-diffusion torchsde torchdiffeq)")
    pkg = types.ModuleType("k_diffusion")
    pkg.__path__ = list(found.submodule_search_locations)
    sys.modules["k_diffusion"] = pkg
    stubbed = _stub_torchvision()
    try:
        mod = importlib.import_module("k_diffusion.sampling")
    finally:
        if stubbed:
            _drop_modules("torchvision")
    how = f"k_diffusion/sampling.py alone (the package import failed: {first})"
    return mod, how + ("; torchvision stubbed" if stubbed else "")


def _stub_torchvision() -> bool:
    try:
        importlib.import_module("torchvision.transforms.functional")
        return False
    except Exception:  # noqa: BLE001 - a broken torchvision is what the stub replaces
        _drop_modules("torchvision")
    for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional"):
        sys.modules[name] = types.ModuleType(name)
    sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
    sys.modules["torchvision.transforms"].functional = sys.modules["torchvision.transforms.functional"]
    return True


def _k_model(denoiser: Denoiser) -> Callable:
    """k-diffusion's ``model(x_VE, sigma)`` from our denoiser: x = x_VE beta(t), t = log(1 + sigma^2)."""
    def model(x_ve: torch.Tensor, s: torch.Tensor, **_) -> torch.Tensor:
        t = t_of_ve_sigma(s.to(x_ve.dtype))
        return denoiser(x_ve * OU.beta(t)[:, None], t)
    return model


def k_diffusion_runs() -> tuple[dict[str, PeerRun], str]:
    """k-diffusion's DPM-Solver++(2M) and (3M) (``sample_dpmpp_3m_sde`` with eta = 0) on the Karras
    grid (rho 7) with the final jump to sigma = 0; returns ({name: run}, how it was loaded)."""
    ks, how = load_k_diffusion_sampling()

    def make(kind: str, to_zero: bool) -> PeerRun:
        def run(denoiser: Denoiser, x: torch.Tensor, nfe: int, T0: float, T: float) -> tuple[torch.Tensor, float]:
            n = nfe if to_zero else nfe + 1  # sigmas before the appended 0
            sig = ks.get_sigmas_karras(n, ve_sigma(T0), ve_sigma(T), rho=7.0, device=x.device).to(x.dtype)
            sig = sig if to_zero else sig[:-1]
            model, x_ve = _k_model(denoiser), x / OU.beta(T)
            if kind == "2m":
                out = ks.sample_dpmpp_2m(model, x_ve, sig, disable=True)
            else:
                out = ks.sample_dpmpp_3m_sde(model, x_ve, sig, eta=0.0, disable=True,
                                             noise_sampler=lambda *a: torch.zeros_like(x))
            return (out, 0.0) if to_zero else (out * OU.beta(T0), T0)
        return run
    return {f"k-diffusion dpmpp_{kind} karras{'' if z else ' to sigma_min'}": make(kind, z)
            for kind in ("2m", "3m") for z in (True, False)}, how


def diffusers_betas(T0: float, T: float) -> list[float]:
    """Training betas whose alphas_cumprod are e^{-t_i} on N_TRAIN times t_i uniform in [T0, T], so that
    diffusers' sigmas span exactly sigma_VE(T0) .. sigma_VE(T)."""
    t = torch.linspace(T0, T, N_TRAIN, dtype=torch.float64)
    log_abar = -t
    betas = -torch.expm1(log_abar - torch.cat([torch.zeros(1, dtype=torch.float64), log_abar[:-1]]))
    return betas.tolist()


def diffusers_runs(T0: float, T: float) -> tuple[dict[str, PeerRun], str]:
    """diffusers' DPMSolverMultistepScheduler (DPM-Solver++ of orders 2 and 3) and UniPCMultistepScheduler
    (bh2, orders 2 and 3), each on Karras sigmas (rho 7) and on exponential sigmas (uniform in log sigma,
    i.e. in lambda). Their default timestep spacing is left out: on training times laid uniformly in t it
    makes a grid uniform in t, whose last call denoises from sigma_VE ~ sqrt(e^{T/n} - 1) (0.6 at
    30 steps, T = 10), a setting no user of these schedulers would pick for this schedule."""
    import diffusers
    from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

    betas = diffusers_betas(T0, T)
    common = dict(num_train_timesteps=N_TRAIN, trained_betas=betas, prediction_type="sample")
    makers = {}
    for order in (2, 3):
        for grid in ("karras", "exponential"):
            flag = {f"use_{grid}_sigmas": True}
            makers[f"diffusers DPMSolverMultistep order {order} {grid}"] = (
                DPMSolverMultistepScheduler, dict(common, algorithm_type="dpmsolver++", solver_order=order, **flag))
            makers[f"diffusers UniPCMultistep bh2 order {order} {grid}"] = (
                UniPCMultistepScheduler, dict(common, solver_type="bh2", solver_order=order, **flag))

    def make(cls, kw) -> PeerRun:
        def run(denoiser: Denoiser, x: torch.Tensor, nfe: int, T0: float, T: float) -> tuple[torch.Tensor, float]:
            sched = cls(**kw)
            sched.set_timesteps(nfe)
            for i, step_t in enumerate(sched.timesteps):
                t = t_of_ve_sigma(torch.as_tensor(float(sched.sigmas[i]), dtype=x.dtype)).expand(x.shape[0])
                x = sched.step(denoiser(x, t), step_t, x).prev_sample
            return x, 0.0
        return run
    return {name: make(cls, kw) for name, (cls, kw) in makers.items()}, f"diffusers {diffusers.__version__}"


def all_peers(T0: float, T: float) -> tuple[dict[str, PeerRun], dict[str, str]]:
    """({name: run} of every importable peer, {library: how loaded, or 'absent: reason'})."""
    runs, libs = {}, {}
    for lib, loader in (("k-diffusion", k_diffusion_runs), ("diffusers", lambda: diffusers_runs(T0, T))):
        try:
            got, how = loader()
        except Exception as e:  # noqa: BLE001 - reported as absent, with the reason
            libs[lib] = f"absent: {type(e).__name__}: {e}"
            continue
        runs.update(got)
        libs[lib] = how
    return runs, libs


def run_peer(run: PeerRun, denoiser: Denoiser, x: torch.Tensor, nfe: int, T0: float, T: float,
             generator: torch.Generator, carry_to_T0: bool = True) -> tuple[torch.Tensor, int]:
    """(a sample at T0, model calls made): a peer's output at t < T0 (sigma = 0) is carried to T0 by the
    exact forward kernel (unless ``carry_to_T0=False``: the peer's own output)."""
    counted = CountingCalls(denoiser)
    with torch.no_grad():
        out, t_end = run(counted, x, nfe, T0, T)
    if carry_to_T0 and t_end < T0:
        z = torch.randn(out.shape, generator=generator, dtype=out.dtype)
        out = OU.beta(T0 - t_end) * out + math.sqrt(OU.sigma(T0 - t_end)) * z
    return out, counted.calls
