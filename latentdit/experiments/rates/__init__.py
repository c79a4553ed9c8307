"""The paper's statistical claims, measured: sweeps on the ground truth, fitted rates and a report.

``latentdit rates --out DIR [--quick] [--workers N]`` trains small latent DiTs on the subspace
Gaussian mixture of :mod:`latentdit.data.gmm` (x = B h with B a D x d0 matrix of orthonormal
columns and h a Gaussian mixture in R^d0, so every noised score is closed form) and measures, per
configuration (D, d0, n, T0, seed):

- ``score_sigma_error``: sigma(t) ||s_W - grad log p_t||_{L2(P_t)} averaged over a log grid of
  t in [T0, T] (the quantity Thm 3.1 bounds by eps sqrt(d0), independent of D);
- ``score_sigma_sq_error``: the same average of the squared quantity (used for the n-rate of
  Thm 3.2; since sigma(t) <= 1 it is bounded by the unweighted average the theorem controls);
- ``score_rel_error``: ||s_W - grad log p_t|| / ||grad log p_t||, averaged the same way;
- ``subspace_error``: ||W_B W_B^T - B B^T||_F^2 of the model's encoder (PCA of the n clean
  training points, frozen) and ``subspace_error_noisy_pca`` (PCA of the n points observed through
  the forward process at T0, a subspace estimate whose error is statistical rather than at the
  rounding floor);
- ``w2_latent`` (and its same-size true-vs-true floor ``w2_latent_reference``) and, for d0 <= 2,
  ``tv_latent`` / ``tv_latent_reference``: the generated latent law after the best orthogonal
  alignment against the exact latent law at T0 (TV by a Gaussian KDE of the aligned samples);
- ``off_subspace_var`` against ``1 - exp(-T0)`` (Cor. 3.2.1 iii).

Sweeps (>= 3 seeds per point): D at fixed d0, d0 at fixed D, n (at d0 = 16 and, for TV, at d0 = 2),
and T0. The latent law depends on (d0, seed) only, so the D sweep changes nothing but the ambient
dimension. Every finished configuration is written at once to ``DIR/rates.sqlite``; a rerun
skips finished configurations. Training budget: a fixed number of optimiser steps per mode for every
configuration, so that each sweep varies only its own quantity; at large n the error is therefore
limited by optimisation as well as by the sample size (the report says so).

Modules: :mod:`~latentdit.experiments.rates.plan` (budgets, sweeps, configurations),
:mod:`~latentdit.experiments.rates.store` (the resumable SQLite record),
:mod:`~latentdit.experiments.rates.run` (one configuration, the sweep, :func:`run_rates`),
:mod:`~latentdit.experiments.rates.claims` (claims, slope fits, verdicts) and
:mod:`~latentdit.experiments.rates.report` (report.md, plots, summary).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from latentdit.errors import ConfigError
from latentdit.experiments.rates.claims import CLAIMS, Claim, analyse, fit_slopes, loglog_slope, verdict_upper
from latentdit.experiments.rates.plan import Budget, Plan, config_key, configurations, plan_for, sweeps
from latentdit.experiments.rates.report import write_report
from latentdit.experiments.rates.run import estimate_full, run_config, run_rates, run_sweep, tv_to_density
from latentdit.experiments.rates.store import DB_NAME, RateStore

__all__ = ["CLAIMS", "DB_NAME", "Budget", "Claim", "Plan", "RateStore", "analyse", "config_key", "configurations",
           "estimate_full", "fit_slopes", "loglog_slope", "main", "plan_for", "run_config", "run_rates", "run_sweep",
           "sweeps", "tv_to_density", "verdict_upper", "write_report"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="latentdit rates",
                                 description="Measure the paper's statistical rates on the ground-truth model.")
    ap.add_argument("--out", type=Path, required=True, help="output directory (holds the resumable store)")
    ap.add_argument("--quick", action="store_true", help="smaller model and budget (same sweeps, 3 seeds)")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                    help="parallel worker processes (default: min(2, CPU cores))")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per configuration (default 1)")
    ap.add_argument("--attention", type=Path, default=None,
                    help="attention benchmark JSON (default: docs/bench/attention.json if present)")
    ap.add_argument("--no-estimate", action="store_true", help="quick mode: skip the full-run timing probe")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    if a.workers < 1:
        raise ConfigError(f"--workers={a.workers} must be >= 1")
    plan = plan_for("quick" if a.quick else "full")
    try:
        s = run_rates(a.out, plan, workers=a.workers, threads=a.threads, progress=not a.no_progress and sys.stderr.isatty(),
                      attention=a.attention, estimate=a.quick and not a.no_estimate)
    except KeyboardInterrupt:
        print(f"interrupted; finished configurations are kept in {a.out / DB_NAME} and a rerun resumes",
              file=sys.stderr)
        return 130
    for k, c in s["claims"].items():
        print(f"{k:26s} slope {c['measured_slope'] if c['measured_slope'] is not None else float('nan'):+.3f} "
              f"(predicted {c['predicted_exponent']:+.3f}): {c['verdict']}")
    print(f"d_independence_spread {s['d_independence_spread']}")
    print(f"wrote {a.out / 'report.md'} and {a.out / 'summary.json'}")
    return 0

