"""The paper's statistical claims, measured: sweeps on ground truths, fitted rates and a report.

``latentdit rates --out DIR [--quick] [--workers N] [--scheduler ADDRESS]`` trains latent DiTs with
the library's own :class:`latentdit.train.Trainer` (one run directory per task under
``DIR/runs/``) on ground truths whose noised scores are closed form (:mod:`latentdit.data.gmm`) and
evaluates each with :func:`latentdit.evaluation.gmm.evaluate_ground_truth`. The sections and their
sizes are in :mod:`~latentdit.experiments.rates.plan`; the row metrics are those of
``evaluate_ground_truth`` plus:

- ``population_loss`` (the held-out population DSM loss at the best checkpoint), ``best_val_step``,
  ``steps_trained``, ``converged`` (stopped by patience before the step cap), ``params`` (network
  parameters), ``train_seconds``, ``eval_seconds``, ``cpu_seconds``;
- sections ``sample`` and ``t0``: ``w2_clean`` / ``w2_clean_floor`` (generated latent law against
  the clean latent law) and, for finite n, ``memorisation_fraction``
  (:func:`latentdit.data.empirical.memorisation_fraction`);
- section ``sample``, finite n: ``erm_score_mse``, ``erm_score_uniform``, ``erm_score_integral`` (the
  closed-form ERM score of the same n points, :func:`latentdit.metrics.distances.erm_score`, on the
  profile's times ``score_t``) and ``subspace_error_pca_n`` (PCA of those n points).
- sections ``fstar`` (Thm 3.1: ``eps_hat``, ``eps_hat_2x``, ``eps_hat_F0``, Def. 3.2's ``norm_*``) and
  ``estimation`` (Thm 3.2 / Cor. 3.2.1 with a learned W_B: the references ``kde_*`` / ``em_*``,
  ``tv_classifier*``, ``memorisation_fraction*``, the exact-score controls): documented in
  :mod:`~latentdit.experiments.rates.paper_tasks`.

Every finished task is written at once to ``DIR/rates.sqlite`` by the driver alone (with the plan
version and the plan's commit, :mod:`~.preregistration`); a rerun skips finished tasks and resumes
unfinished ones from their checkpoints. At the end the driver writes every row, the plan and the
attention tables to ``DIR/rows.csv`` (:mod:`~.rows`) and builds report.md, the plots and
summary.json from that file alone (:func:`~.report.build_report`): ``--report-only`` rebuilds them
from a rows file, byte for byte, and ``--write-plan`` writes the pre-registered plan (plan.md).
:mod:`~.claims` turns the rows into claims, checks and diagnostics.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from latentdit.errors import ConfigError
from latentdit.experiments.rates.claims import analyse
from latentdit.experiments.rates.plan import (PLAN_FIELDS, SECTIONS, Budget, Plan, config_key, configurations,
                                             only_sections, plan_for, points, tasks)
from latentdit.experiments.rates.run import estimate, run_rates, run_sweep, run_task
from latentdit.experiments.rates.preregistration import PLAN_VERSION, plan_markdown
from latentdit.experiments.rates.report import build_report
from latentdit.experiments.rates.rows import ROWS_NAME, read_rows
from latentdit.experiments.rates.store import DB_NAME, RateStore
from latentdit.io import atomic_write_text, check_output_dir

__all__ = ["DB_NAME", "SECTIONS", "Budget", "Plan", "RateStore", "analyse", "config_key", "configurations",
           "estimate", "main", "only_sections", "plan_for", "points", "run_rates", "run_sweep", "run_task", "tasks"]


def _report_only(out: Path, rows_path: Path | None) -> int:
    """``--report-only``: the report of ``out`` rebuilt from a rows file alone."""
    src = rows_path or out / ROWS_NAME
    if not src.is_file():
        raise ConfigError(f"--report-only: no rows file at {src}; run `latentdit rates --out {out}` first, or pass "
                          "--rows FILE (e.g. docs/rates/rows.csv)")
    check_output_dir(out)
    try:
        rows = read_rows(src)
        s = build_report(out, rows)
    except ValueError as e:
        raise ConfigError(f"--report-only: {src}: {e}") from e
    _print_claims(s)
    print(f"wrote {out / 'summary.json'} and {out / 'report.md'} from {src}")
    return 0


def _print_claims(s: dict) -> None:
    for k, c in s["claims"].items():
        slope = c.get("slope")
        holds = {None: "untestable", True: "holds", False: "FAILS"}[c.get("holds")]
        print(f"{k:34s} {c.get('kind', ''):10s} slope {slope if slope is not None else math.nan:+.3f} "
              f"(predicted {c.get('predicted') if c.get('predicted') is not None else math.nan:+.3f}): "
              f"{c['verdict']}; bound {holds}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="latentdit rates",
                                 description="Measure the paper's statistical rates on ground-truth models.")
    ap.add_argument("--out", type=Path, required=True, help="output directory (holds the resumable store and runs)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="every section, small sizes (3 seeds)")
    mode.add_argument("--micro", action="store_true", help="a seconds-long smoke run of every section")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                    help="parallel tasks (default: min(2, CPU cores)); ignored with a remote --scheduler")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per task (default 1)")
    ap.add_argument("--scheduler", default=None,
                    help="run the tasks through Dask: 'local' (a loopback cluster) or tcp://host:port")
    ap.add_argument("--no-attention", action="store_true", help="leave out the attention-criterion section")
    ap.add_argument("--sections", default=None,
                    help="comma-separated subset of the plan's sections (default all): " + ", ".join(PLAN_FIELDS))
    ap.add_argument("--estimate", action="store_true", help="also time the full plan (a short probe per section)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--report-only", action="store_true",
                    help="train nothing: rebuild report.md, summary.json and the plots in --out from its rows.csv "
                         "(or from --rows FILE)")
    ap.add_argument("--rows", type=Path, default=None, help="with --report-only: the rows file to read")
    ap.add_argument("--write-plan", action="store_true",
                    help="train nothing: write the pre-registered plan (plan.md) into --out")
    a = ap.parse_args(argv)
    if a.report_only:
        return _report_only(a.out, a.rows)
    if a.write_plan:
        check_output_dir(a.out)
        a.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(a.out / "plan.md", plan_markdown() + "\n")
        print(f"wrote {a.out / 'plan.md'} (plan version {PLAN_VERSION})")
        return 0
    if a.workers < 1 or a.threads < 1:
        raise ConfigError(f"--workers={a.workers} and --threads={a.threads} must be >= 1")
    if a.scheduler is not None and a.scheduler != "local" and not a.scheduler.startswith(("tcp://", "tls://")):
        raise ConfigError(f"--scheduler={a.scheduler!r} must be 'local' or a tcp://host:port address")
    plan = plan_for("micro" if a.micro else "quick" if a.quick else "full")
    if a.sections:
        try:
            plan = only_sections(plan, [x.strip() for x in a.sections.split(",") if x.strip()])
        except ValueError as e:
            raise ConfigError(f"--sections: {e}") from e
    try:
        s = run_rates(a.out, plan, workers=a.workers, threads=a.threads, scheduler=a.scheduler,
                      progress=not a.no_progress, attention=not a.no_attention,
                      with_estimate=a.estimate)
    except KeyboardInterrupt:
        print(f"interrupted; finished tasks are kept in {a.out / DB_NAME} and a rerun resumes", file=sys.stderr)
        return 130
    _print_claims(s)
    print(f"wrote {a.out / 'summary.json'} and {a.out / 'report.md'}")
    return 0
