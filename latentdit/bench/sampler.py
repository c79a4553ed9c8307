"""Sampler quality per network evaluation: latent W2 to the truth vs NFE for every sampler.

``latentdit bench sampler --out FILE.json [--quick] [--core-only] [--run RUN_DIR]``
``latentdit bench sampler --out FILE.json --export DIR [--demo-num N] [--demo-nfe 5 10 20] [--no-fid]``
(a trained image model at a handful of NFE, ours next to the peers: :mod:`latentdit.bench.sampler_demo`)

Ground truth: the subspace Gaussian mixture x = B h in R^64, h a 4-dimensional mixture of 4
components (:class:`latentdit.data.gmm.SubspaceGMM`, seed 0), whose noised score is exact. Every
sampler (driven by the exact denoiser E[x0 | x_t]) starts from N(0, I) at T = 10 and stops at T0 = 1e-3;
the target is the law of h at T0.
For each sampler and NFE budget we draw 4000 samples, project them on the subspace (B^T x; for a
trained model (W_B U)^T x with U the best alignment) and measure the exact W2 (POT EMD) to 4000 fresh
true latents. References in the same run:

- ``w2_reference``: W2 between two independent true sets of the same size (the sampling floor);
- ``w2_em1000``: 1000-step Euler-Maruyama (the paper's sampler, App. D.1).

``nfe_to_match_em1000[s]`` is the smallest NFE in the sweep with W2 <= 1.1 * w2_em1000 (None if none).
Acceptance figures (exact score): off-subspace variance of each sampler at its largest NFE vs
1 - exp(-T0) (within 10%), W2 / w2_reference <= 1.2, and dpm2m at 20 NFE within 10% of em1000.
A PNG plot is written beside the JSON.

``core_acceptance`` (also alone with ``--core-only``) checks each sampler at the step budget it is
meant for (em and ei 1000 steps, heun and ddim 100 steps, dpm2m and dpm3m 20 steps): off-subspace
variance within 10% of 1 - exp(-T0), latent W2 <= 1.2 x w2_reference, and dpm2m at 20 NFE within
10% of em1000. Its ``low_nfe`` block (:mod:`latentdit.bench.sampler_low_nfe`) runs latentdit's ODE
solvers on fixed and fitted grids and the public peers (k-diffusion, diffusers) at exactly 5 and 10
NFE on the same exact score; ``w2_ratio_at_5_nfe`` and ``w2_ratio_at_10_nfe`` are the best latentdit
W2 / w2_reference there, ``peer_best_w2_ratio_at_5_nfe`` and ``peer_best_w2_ratio_at_10_nfe`` the best
peer's. NFE convention: every model call counts, the first and the last included
(:data:`latentdit.sampling.NFE_CONVENTION`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from latentdit.data.gmm import SubspaceGMM
from latentdit.errors import CheckpointError
from latentdit.bench import bench_parser, parse_bench_args
from latentdit.io import atomic_write_json, save_figure
from latentdit.metrics.distances import (aligned_latent, expected_off_subspace_variance, off_subspace_variance,
                                         w2)
from latentdit.build import build_ground_truth
from latentdit.evaluation import run_config
from latentdit.pipeline import LatentDiTPipeline
from latentdit.provenance import provenance_end, provenance_start
from latentdit.bench.sampler_demo import DEMO_NFE, demo_comparison
from latentdit.bench.sampler_low_nfe import low_nfe_comparison
from latentdit.sampling import (DEFAULT_RHO, NFE_CONVENTION, SAMPLERS, CountingCalls, get_sampler, nfe_per_step, spec,
                                time_grid)

FULL = dict(D=64, d0=4, K=4, n=4000, T0=1e-3, T=10.0, nfes=[5, 10, 20, 50], em_steps=1000)
QUICK = dict(D=64, d0=4, K=4, n=100, T0=1e-3, T=10.0, nfes=[4], em_steps=20)
TOL = 0.10


def run_sampler(denoiser, name: str, nfe: int, n: int, D: int, T0: float, T: float, dtype, seed: int = 0,
                grid: str | None = None, rho: float = DEFAULT_RHO):
    """(samples (n, D), NFE actually used, seconds) for sampler ``name`` with about ``nfe`` evaluations
    of ``denoiser`` on its default grid (or ``grid``)."""
    steps = max(1, nfe // nfe_per_step(name))
    ts = time_grid(T0, T, steps, grid or spec(name).grid, rho=rho)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g, dtype=dtype)
    counted = CountingCalls(denoiser)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = get_sampler(name)(counted, x, ts, generator=g)
    return out, counted.calls, time.perf_counter() - t0


def sweep(denoiser, W: torch.Tensor, truth: SubspaceGMM, p: dict, dtype, label: str) -> dict:
    """W2 vs NFE for every sampler plus the em1000 reference, with one score function."""
    g = torch.Generator().manual_seed(123)
    target = truth.sample_latent(p["n"], p["T0"], generator=g)
    var_expected = expected_off_subspace_variance(p["T0"])

    def measure(name: str, nfe: int) -> dict:
        x, used, secs = run_sampler(denoiser, name, nfe, p["n"], truth.ambient_dim, p["T0"], p["T"], dtype)
        lat = aligned_latent(x, W, truth.B)
        r = {"nfe": used, "w2": w2(lat, target), "off_subspace_var": off_subspace_variance(x, W),
             "seconds": secs}
        print(f"[{label}] {name:6s} NFE {used:5d}: W2 {r['w2']:.4f}  off-var {r['off_subspace_var']:.3e}"
              f"  ({secs:.1f}s)", flush=True)
        return r

    em = measure("em", p["em_steps"])
    curves = {s: [measure(s, nfe) for nfe in p["nfes"]] for s in SAMPLERS}
    match = {}
    for s, rows in curves.items():
        ok = [r["nfe"] for r in rows if r["w2"] <= (1 + TOL) * em["w2"]]
        match[s] = min(ok) if ok else None
    return {"w2_em1000": em["w2"], "em1000": em, "curves": curves, "nfe_to_match_em1000": match,
            "off_subspace_var_expected": var_expected, "target_size": p["n"]}


def acceptance(res: dict, w2_ref: float, p: dict) -> dict:
    """The core acceptance figures of the exact-score sweep."""
    exp = res["off_subspace_var_expected"]
    out = {"off_subspace_var": {}, "w2_over_reference": {}}
    for s, rows in res["curves"].items():
        last = rows[-1]
        out["off_subspace_var"][s] = {"nfe": last["nfe"], "value": last["off_subspace_var"], "expected": exp,
                                      "rel_error": abs(last["off_subspace_var"] / exp - 1),
                                      "ok": abs(last["off_subspace_var"] / exp - 1) <= TOL}
        out["w2_over_reference"][s] = {"nfe": last["nfe"], "ratio": last["w2"] / w2_ref,
                                       "ok": last["w2"] / w2_ref <= 1.2}
    out["em1000_off_subspace_var_rel_error"] = abs(res["em1000"]["off_subspace_var"] / exp - 1)
    out["em1000_w2_over_reference"] = res["w2_em1000"] / w2_ref
    d20 = [r for r in res["curves"]["dpm2m"] if r["nfe"] == 20]
    if d20:
        out["dpm2m_nfe20_w2"] = d20[0]["w2"]
        out["dpm2m_nfe20_over_em1000"] = d20[0]["w2"] / res["w2_em1000"]
        out["dpm2m_nfe20_ok"] = d20[0]["w2"] <= (1 + TOL) * res["w2_em1000"]
    return out


CORE_STEPS = {"em": 1000, "ei": 1000, "heun": 100, "ddim": 100, "dpm2m": 20, "dpm3m": 20, "ipndm": 20,
              "ipndm_v": 20, "unipc": 20}


def core_acceptance(truth: SubspaceGMM, p: dict, w2_ref: float) -> dict:
    """Every sampler with the exact score at its intended step budget (CORE_STEPS)."""
    g = torch.Generator().manual_seed(123)
    target = truth.sample_latent(p["n"], p["T0"], generator=g)
    exp = expected_off_subspace_variance(p["T0"])
    rows = {}
    for name, steps in CORE_STEPS.items():
        x, used, secs = run_sampler(truth.denoiser(), name, steps * nfe_per_step(name), p["n"], truth.ambient_dim,
                                    p["T0"], p["T"], torch.float64)
        var, dist = off_subspace_variance(x, truth.B), w2(aligned_latent(x, truth.B, truth.B), target)
        rows[name] = {"steps": steps, "nfe": used, "w2": dist, "w2_over_reference": dist / w2_ref,
                      "off_subspace_var": var, "off_subspace_var_rel_error": abs(var / exp - 1),
                      "ok": abs(var / exp - 1) <= TOL and dist / w2_ref <= 1.2}
        print(f"[core] {name:6s} {steps:5d} steps: W2 {dist:.4f} ({dist / w2_ref:.3f} x ref)  "
              f"off-var {var:.4e} (expected {exp:.4e})", flush=True)
    ratio = rows["dpm2m"]["w2"] / rows["em"]["w2"]
    low = low_nfe_comparison(truth, p, w2_ref, target)
    heads = {k: low[k] for k in ("w2_ratio_at_5_nfe", "w2_ratio_at_10_nfe", "peer_best_w2_ratio_at_5_nfe",
                                 "peer_best_w2_ratio_at_10_nfe", "w2_ratio_at_5_nfe_fixed_grid",
                                 "w2_ratio_at_10_nfe_fixed_grid", "targets", "peers")}
    return {**heads, "nfe_convention": NFE_CONVENTION, "samplers": rows, "w2_reference": w2_ref,
            "off_subspace_var_expected": exp, "dpm2m_20_over_em1000": ratio, "dpm2m_20_ok": ratio <= 1 + TOL,
            "low_nfe": low, "all_ok": all(r["ok"] for r in rows.values()) and ratio <= 1 + TOL}


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [k for k in ("exact", "trained") if k in results]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), squeeze=False)
    for ax, key in zip(axes[0], panels):
        res = results[key]
        for s, rows in res["curves"].items():
            ax.plot([r["nfe"] for r in rows], [r["w2"] for r in rows], marker="o", label=s)
        em = res["w2_em1000"]
        ax.axhline(em, color="k", ls="--", lw=1, label=f"em, {res['em1000']['nfe']} NFE")
        ax.axhspan(em, (1 + TOL) * em, color="k", alpha=0.08)
        if "w2_reference" in res:
            ax.axhline(res["w2_reference"], color="gray", ls=":", lw=1, label="true vs true")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("network evaluations (NFE)")
        ax.set_ylabel("latent W2 to the truth")
        ax.set_title(f"{key} score")
        ax.legend(fontsize=8)
    save_figure(fig, path, dpi=120)


DEMO_MAX_NUM = 100_000  # samples per row: each row holds them and their Inception features in memory


def _parser() -> argparse.ArgumentParser:
    ap = bench_parser("sampler", __doc__, quick_help="100 samples, one NFE budget, em with 20 steps (a smoke test)")
    ap.add_argument("--run", type=Path, default=None, help="a run directory trained on a gmm config")
    ap.add_argument("--core-only", action="store_true",
                    help="only the per-sampler acceptance at each sampler's intended step budget")
    ap.add_argument("--export", type=Path, default=None,
                    help="an export (or run) of a model trained on image data: the NFE demo of "
                         "latentdit.bench.sampler_demo instead of the exact-score benchmark")
    ap.add_argument("--demo-num", type=int, default=2000, help="samples per row of the demo")
    ap.add_argument("--demo-nfe", type=int, nargs="+", default=list(DEMO_NFE), help="the demo's NFE budgets")
    ap.add_argument("--no-fid", action="store_true", help="the demo without Inception FID")
    return ap


def _trained_sweep(run: Path, p: dict) -> dict:
    """The NFE sweep with the score of a model trained on a gmm config, against that config's truth."""
    model, cfg = LatentDiTPipeline.from_pretrained(run).model, run_config(run)
    if cfg.data.source != "gmm":
        raise CheckpointError(f"run {str(run)!r} was trained on data.source={cfg.data.source!r}; "
                              "the sampler benchmark needs a gmm run")
    model.eval()
    gt = build_ground_truth(cfg)
    pt = dict(p, D=gt.ambient_dim, d0=gt.latent_dim, T0=cfg.diffusion.T0, T=cfg.diffusion.T)
    g = torch.Generator().manual_seed(7)
    ref_t = w2(gt.sample_latent(pt["n"], pt["T0"], generator=g), gt.sample_latent(pt["n"], pt["T0"], generator=g))

    def denoiser(x, t):
        return model.denoise(x.float(), t.float()).to(x.dtype)

    trained = sweep(denoiser, model.W_B.detach(), gt, pt, torch.float32, "trained")
    trained["w2_reference"] = ref_t
    trained["run"] = str(run)
    return trained


def _report(results: dict, core: dict | None, w2_ref: float, p: dict, t_start: float, prov) -> dict:
    """The benchmark's JSON: the headline ratios of the core acceptance, then the full sweeps."""
    exact = results["exact"]
    heads = ("w2_ratio_at_5_nfe", "w2_ratio_at_10_nfe", "peer_best_w2_ratio_at_5_nfe", "peer_best_w2_ratio_at_10_nfe")
    report = {"core_acceptance": core, **{k: core[k] if core else None for k in heads},
              "nfe_convention": NFE_CONVENTION, "nfe_to_match_em1000": exact["nfe_to_match_em1000"],
              "w2_em1000": exact["w2_em1000"],
              "w2_reference": w2_ref, "acceptance": exact["acceptance"], "params": p, "tolerance": TOL,
              "results": results, "seconds": time.perf_counter() - t_start, "threads": torch.get_num_threads(),
              "provenance": provenance_end(prov)}
    if "trained" in results:
        report["trained_nfe_to_match_em1000"] = results["trained"]["nfe_to_match_em1000"]
    return report


def main(argv: list[str] | None = None) -> int:
    args, argv = parse_bench_args(_parser(), argv)
    if args.export is not None and not (2 <= args.demo_num <= DEMO_MAX_NUM and all(2 <= n <= 1000 for n in args.demo_nfe)):
        print(f"error: the demo needs 2 <= --demo-num <= {DEMO_MAX_NUM} and every --demo-nfe in [2, 1000] "
              f"(got {args.demo_num} and {args.demo_nfe})", file=sys.stderr)
        return 2
    prov = provenance_start(["latentdit", "bench", "sampler", *argv])
    if args.export is not None:
        rep = demo_comparison(args.export, num=args.demo_num, nfes=tuple(args.demo_nfe), fid=not args.no_fid)
        atomic_write_json(args.out, {**rep, "provenance": provenance_end(prov)})
        print(f"wrote {args.out}")
        return 0
    p = QUICK if args.quick else FULL
    t_start = time.perf_counter()
    truth = SubspaceGMM.random(p["D"], p["d0"], p["K"], seed=0)
    g = torch.Generator().manual_seed(7)
    w2_ref = w2(truth.sample_latent(p["n"], p["T0"], generator=g), truth.sample_latent(p["n"], p["T0"], generator=g))
    print(f"reference W2 (true vs true, n={p['n']}): {w2_ref:.4f}", flush=True)
    if args.core_only:
        core = core_acceptance(truth, p, w2_ref)
        core.update(params=p, seconds=time.perf_counter() - t_start, provenance=provenance_end(prov))
        atomic_write_json(args.out, core)
        print(f"core acceptance {'passed' if core['all_ok'] else 'FAILED'}; wrote {args.out}")
        return 0 if core["all_ok"] else 1
    exact = sweep(truth.denoiser(), truth.B, truth, p, torch.float64, "exact")
    exact["w2_reference"] = w2_ref
    exact["acceptance"] = acceptance(exact, w2_ref, p)
    results = {"exact": exact}
    if args.run is not None:
        results["trained"] = _trained_sweep(args.run, p)
    core = core_acceptance(truth, p, w2_ref) if not args.quick else None
    atomic_write_json(args.out, _report(results, core, w2_ref, p, t_start, prov))
    png = args.out.with_suffix(".png")
    plot(results, png)
    print(f"wrote {args.out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
