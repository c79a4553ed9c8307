"""Samplers at 5 and 10 NFE with the exact score: latentdit's against the public peers, side by side.

Every run starts from the same N(0, I) draw at T, uses the same exact denoiser in the same process and
makes exactly the NFE of its row (counted, :data:`latentdit.sampling.NFE_CONVENTION`); its latent
W2 to fresh samples of the law at T0 is divided by the true-vs-true floor. latentdit's solvers run
on fixed grids and on a grid fitted by dynamic programming on ``WARMUP`` warm-up trajectories of
their own noise (:func:`latentdit.sampling.fit.fit_grid`; the warm-up's NFE are reported, spent
once per budget). The peers (:mod:`latentdit.bench.sampler_peers`) run with their own grids and
conventions; a peer library that cannot be imported is listed as absent.
"""

from __future__ import annotations

import torch

from latentdit.bench.sampler_peers import all_peers, run_peer
from latentdit.data.gmm import SubspaceGMM
from latentdit.metrics.distances import aligned_latent, w2
from latentdit.sampling import NFE_CONVENTION, CountingCalls, get_sampler, time_grid
from latentdit.sampling.fit import fit_grid

LOW_NFE = (5, 10)
OURS = ("dpm2m", "dpm3m", "ipndm", "ipndm_v", "unipc")  # ddim: see the core block
# (grid, its exponent: karras rho or polylambda power; the rows' "rho" key holds either)
FIXED_GRIDS = (("logsnr", None), ("karras", 7.0), ("karras", 20.0), ("polylambda", 1.5))
GRID_EXPONENT = {"karras": "rho", "polylambda": "power"}
WARMUP, FINE_STEPS = 256, 100  # warm-up trajectories and fine-grid steps of the fitted grid
TARGET_AT_5 = 1.25  # the best latentdit sampler's W2 / floor at 5 NFE


def _start(p: dict, D: int) -> torch.Tensor:
    return torch.randn(p["n"], D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _ratio(x: torch.Tensor, truth: SubspaceGMM, target: torch.Tensor, w2_ref: float) -> float:
    return w2(aligned_latent(x, truth.B, truth.B), target) / w2_ref


def _ours(truth: SubspaceGMM, p: dict, w2_ref: float, target: torch.Tensor, nfe: int) -> tuple[list[dict], dict]:
    """Rows of latentdit's solvers at ``nfe`` on the fixed grids and the fitted grid; the fitted grid."""
    warm = torch.randn(WARMUP, truth.ambient_dim, generator=torch.Generator().manual_seed(99), dtype=torch.float64)
    counted = CountingCalls(truth.denoiser())
    fitted = fit_grid(counted, warm, nfe, T0=p["T0"], T=p["T"], fine_steps=FINE_STEPS)
    fit_info = {"times": fitted.tolist(), "warmup_trajectories": WARMUP, "fine_steps": FINE_STEPS,
                "warmup_nfe_per_trajectory": counted.calls}
    grids = [(g, rho, time_grid(p["T0"], p["T"], nfe, g, **({} if rho is None else {GRID_EXPONENT[g]: rho})))
             for g, rho in FIXED_GRIDS]
    rows = []
    for name in OURS:
        for grid, rho, ts in grids + [("fitted", None, fitted)]:
            den = CountingCalls(truth.denoiser())
            with torch.no_grad():
                x = get_sampler(name)(den, _start(p, truth.ambient_dim), ts)
            r = _ratio(x, truth, target, w2_ref)
            rows.append({"sampler": name, "grid": grid, "rho": rho, "nfe": den.calls, "w2_over_reference": r})
            print(f"[low-nfe] {name:8s} {grid:10s} {rho or '':4} NFE {den.calls:3d}: {r:.3f} x ref", flush=True)
    return rows, fit_info


def _peers(truth: SubspaceGMM, p: dict, w2_ref: float, target: torch.Tensor) -> tuple[list[dict], dict]:
    runs, libs = all_peers(p["T0"], p["T"])
    rows = []
    for nfe in LOW_NFE:
        for name, run in runs.items():
            x, calls = run_peer(run, truth.denoiser(), _start(p, truth.ambient_dim), nfe, p["T0"], p["T"],
                                torch.Generator().manual_seed(5))
            r = _ratio(x, truth, target, w2_ref)
            rows.append({"peer": name, "nfe": calls, "w2_over_reference": r})
            print(f"[peer] {name:45s} NFE {calls:3d}: {r:.3f} x ref", flush=True)
    return rows, libs


def _best(rows: list[dict], nfe: int, exclude_grid: str | None = None) -> dict | None:
    """The row with the least W2 ratio at exactly ``nfe`` calls (None if there is none)."""
    ok = [r for r in rows if r["nfe"] == nfe and (exclude_grid is None or r.get("grid") != exclude_grid)]
    return min(ok, key=lambda r: r["w2_over_reference"]) if ok else None


def low_nfe_comparison(truth: SubspaceGMM, p: dict, w2_ref: float, target: torch.Tensor) -> dict:
    """Ours against the peers at every budget in LOW_NFE, with the headline keys of the bench JSON."""
    rows, fitted = [], {}
    for nfe in LOW_NFE:
        got, fitted[str(nfe)] = _ours(truth, p, w2_ref, target, nfe)
        rows += got
    peer_rows, libs = _peers(truth, p, w2_ref, target)
    out = {"nfe_convention": NFE_CONVENTION, "rows": rows, "peer_rows": peer_rows, "peers": libs,
           "fitted_grids": fitted, "best": {}, "best_fixed_grid": {}, "peer_best": {}}
    for nfe in LOW_NFE:
        k = str(nfe)
        out["best"][k] = _best(rows, nfe)
        out["best_fixed_grid"][k] = _best(rows, nfe, exclude_grid="fitted")
        out["peer_best"][k] = _best(peer_rows, nfe)
        out[f"w2_ratio_at_{k}_nfe"] = out["best"][k]["w2_over_reference"]
        out[f"w2_ratio_at_{k}_nfe_fixed_grid"] = out["best_fixed_grid"][k]["w2_over_reference"]
        peer = out["peer_best"][k]
        out[f"peer_best_w2_ratio_at_{k}_nfe"] = peer["w2_over_reference"] if peer else None
    out["targets"] = {
        f"w2_ratio_at_5_nfe <= {TARGET_AT_5}": out["w2_ratio_at_5_nfe"] <= TARGET_AT_5,
        "no worse than every peer at 5 and 10 NFE": all(
            out[f"peer_best_w2_ratio_at_{n}_nfe"] is None
            or out[f"w2_ratio_at_{n}_nfe"] <= out[f"peer_best_w2_ratio_at_{n}_nfe"] for n in LOW_NFE)}
    return out
