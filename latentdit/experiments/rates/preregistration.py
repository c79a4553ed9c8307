"""The pre-registration of ``latentdit rates``: what every entry of the report measures, fixed before
the run that measures it.

For each entry the registry (:data:`ENTRIES`) states the theorem, the estimator, the x axis, the
fit, the test and, for a claim, how it could fail for a reason other than optimisation; for a check
or a diagnostic, why it cannot fail (or why failing would say nothing about the paper). The grids
and seeds come from :func:`latentdit.experiments.rates.plan.plan_for`, so that the plan file
(``docs/rates/plan.md``, written by :func:`plan_markdown`) and the run cannot disagree.

A change after results were seen is a new :data:`PLAN_VERSION` with a line in :data:`CHANGES`.
Every row of the store carries the version it ran under (``plan_version``) and the commit that last
changed this module or the plan modules (``plan_commit``, :func:`plan_commit`); the report names
both.

``latentdit rates --out docs/rates --write-plan`` writes the plan file.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, fields
from pathlib import Path

from latentdit.experiments.rates.plan import PLAN_FIELDS, plan_for, section_seeds

PLAN_VERSION = 4

# (version, what changed, why); the report lists them
CHANGES: tuple[tuple[int, str, str], ...] = (
    (1, "The plan of docs/rates/v1: one log-log line per claim through the per-seed points, frozen PCA "
        "encoder, checkpoints chosen on population points.",
     "First version. Seeds 5-9 of the n sweep and its grid down to n = 8 were added after results were seen "
     "(n = 256 sat at 2.1 standard errors); v1's report does not say so."),
    (2, "Entries that hold by construction become checks or diagnostics; the headline statistic of a rate "
        "is the exponent p of y = a + b x^-p with a floor a, with a bootstrap interval over seeds; the "
        "convergence flag is per curve; the raw rows are committed.",
     "A floor-subtracted excess bends down on log axes, so a line fitted up to the last significant point is "
     "steep by construction; the v1 verdicts of t0_tradeoff, approximation_* and d0_scaling_blocks could not "
     "fail for a reason other than optimisation."),
    (3, "Section estimation adds one fixed law replicated (FixedLaw: the law of law seed 0 at D = 32, d0 = 4, "
        "held-out selection, the estimation n grid, replicate seeds 10-12 that vary the data draw, the held-out "
        "split, the initialisation and the SGD noise, not the law): the entry estimation_fixed_law, the summary "
        "keys fixed_law_exponent and fixed_law_spread, and the row fields law and law_seed.",
     "In v2 every seed of the estimation section draws its own law, so the seed spread mixes the variety of the "
     "problems with the estimation noise; a replicate of one fixed law, which separates the two, was asked for "
     "and v2 had none. No full run of v2 was made (docs/rates holds no v2 results); the only v2 results seen are "
     "the quick run's (docs/rates-quick), where every claim is untestable at its sizes."),
    (4, "Section estimation: step cap 2,000 -> 8,000 (the same patience, threshold and two LR decays), the "
        "in-class ERM run at d0 = 4 only. Section fstar: d0 grid {4, 16, 64} -> {2, 4, 16, 64}, the d0 curve's "
        "width 16 sqrt(d0 / 4) rounded to a multiple of 4 (12 at d0 = 2, the others as in v3), added to the "
        "capacity sweep of its d0. The headline keys apply the claims' convergence rule: "
        "sample_complexity_exponent and approximation_slope_d0 hold or fail only on converged curves (else "
        "untestable), estimation_D_ratio and estimation_d0_collapse say at which d0 every curve stopped before "
        "the cap and whether the claim holds there. fstar keeps v3's constant learning rate: a probe of a cosine "
        "rate (docs/rates/v4_probe) moved eps_hat by 5.8 and 24.7 seed SE at the doubled budget, against the "
        "constant rate's 5.0 and 13.7. The plan's commit covers plan_paper.py, which holds the paper sections' "
        "grids.",
     "In the full run of v3 (docs/rates/v3) 115 of the 213 estimation runs reached the 2,000-step cap, 74 of "
     "them after both LR decays, which made every learned-W_B curve untestable; the v3 d0 grid of fstar spans "
     "1.20 decades, below the plan's own 1.5, so the d0 claim could not be tested at any budget; v3's "
     "sample_complexity_exponent printed holds: true on a curve whose claim entry was untestable by the step "
     "cap. The ERM runs at d0 = 2 and 8 pay for the larger cap within the 4 h. v3's grids of plan_paper.py "
     "were fixed before its run, but its plan commit did not name that file."),
)

# the row fields that sections added in version 2 and later produce (documented here so that report code
# and run code agree on them); absent fields make the entries that need them report "absent"
ROW_FIELDS = {
    "all": "seed, section, status, steps_trained, stop_reason ('patience' | 'plateau' | 'step cap'), converged, budget_scale "
           "(1; 2 for a doubled-budget twin row), plan_version, plan_commit, seconds",
    "fstar": "d0, D, width, params, eps_hat (= score_uniform, the network regressed on f*), sigma_err_max, "
             "eps_hat_2x (the same run at twice the budget), eps_hat_F0 (the F = 0 network), norm_* (Def. 3.2); "
             "the d0 curve is width = FstarSection.d0_width(d0)",
    "estimation": "D, d0, n (0: infinity), stop ('heldout' | 'erm' | 'population'), weighting, score_integral, "
                  "erm_score_integral (memoriser), kde_score_integral, em_score_integral, w2_excess, "
                  "control_dpm2m_w2_excess (exact-score sampler), tv_classifier(_floor, _control), "
                  "memorisation_fraction(_control), subspace_error, law ('random': the law drawn from the seed, "
                  "the default of rows without the field | 'fixed': a replicate of the law of law_seed, the seed "
                  "setting the data draw, the held-out split, the initialisation and the SGD noise), law_seed",
}


@dataclass(frozen=True)
class Entry:
    """One entry of the report. ``kind``: "claim" (can fail), "check" (holds by construction of the
    code) or "diagnostic" (describes training; not a statement of the paper)."""

    kind: str
    theorem: str
    statement: str
    estimator: str
    x: str
    fit: str
    test: str
    failure: str  # claim: how it could fail other than by optimisation; else: why it cannot

    def __post_init__(self) -> None:
        if self.kind not in ("claim", "check", "diagnostic"):
            raise ValueError(f"Entry.kind={self.kind!r} must be claim, check or diagnostic")


_POWER = ("y = a + b x^-p, a >= 0, b >= 0 (bounded least squares on the seed means, relative residuals); "
          "95% percentile bootstrap over seeds (400 resamples); local slopes between grid points; F-test of "
          "the log-log line against the quadratic; the per-seed log-log slopes as a secondary figure")
_NET = "latent DiT, EDM-weighted DSM, frozen PCA encoder of 8,192 population points"

ENTRIES: dict[str, Entry] = {
    "sample_complexity": Entry(
        "claim", "Thm 3.2", "the score-error integral decays at least like n^(-1/3) above its floor",
        _NET + ", checkpoint chosen on held-out population points (v1's estimator, kept for comparison)", "n",
        "on score_integral(n) itself (no floor subtracted): " + _POWER,
        "holds unless the bootstrap interval of p lies below 1/3",
        "the estimator's variance can decay slower than n^(-1/3): at small n the network interpolates its "
        "n points (the memoriser's error, -2/d0 in log-log) unless early stopping prevents it"),
    "population_loss_vs_n": Entry(
        "claim", "Thm 3.2", "the held-out DSM loss decays at least like n^(-1/3) above its floor",
        _NET, "n", "per-seed log-log slope of J(n) - J(inf), x within 3 SE of zero counted and left out",
        "one-sided t-test of the slope against -1/3 (fails when significantly above)",
        "the same as sample_complexity, on a noisier estimate (DSM label noise) of a weighted risk"),
    "d0_scaling_coupled": Entry(
        "claim", "Thm 3.1", "max_t sigma(t) err(t) grows at most like sqrt(d0)",
        "latent DiT of fixed width on L rotated (coupled) token blocks, exact frozen encoder, n = inf", "d0",
        "per-seed log-log slope of max_t sigma(t) err(t)", "one-sided t-test of the slope against 1/2",
        "coupling across tokens is a function the fixed-width class may not represent: an approximation "
        "limit of the class, not of its training"),
    "learned_subspace_vs_n": Entry(
        "claim", "Cor. 3.2.1 (i)", "||W_B W_B^T - B B^T||_F^2 decays at least like n^(-1/3)",
        "learned W_B (random Stiefel init) on x = B h + tau xi, PCA of the same points as reference", "n",
        "per-seed log-log slope", "one-sided t-test of the slope against -1/3",
        "with off-subspace noise tau the subspace is estimated from n noisy points, a statistical error: the "
        "network can pick a wrong subspace that fits the noise"),
    "approximation_fstar": Entry(
        "claim", "Thm 3.1", "eps_hat at capacity growing with d0 grows at most like sqrt(d0)",
        "network regressed on the closed-form f* (no DSM label noise), trained to a plateau; converged when "
        "doubling the budget moves eps_hat by less than one seed SE", "d0",
        "per-seed log-log slope of eps_hat * sqrt(d0) against d0 (approximation_slope_d0)",
        "one-sided t-test of the slope against 1/2",
        "the class's best error at the theorem's size may grow faster with d0 than sqrt(d0)"),
    "estimation_learned": Entry(
        "claim", "Thm 3.2, Cor. 3.2.1", "with a learned W_B the score-error integral decays at least like "
        "n^(-1/3) above a floor at each D, and the curves at D = 32 and D = 2048 coincide (the rate depends on d0, "
        "not D)",
        "learned W_B trained jointly, checkpoint chosen on a held-out split of the n points, and the plateau "
        "ERM side by side (at d0 = 4)", "n", "ratio of seed means D = 2048 / D = 32 at every n with a bootstrap "
        "interval (estimation_D_ratio); the collapse across d0: the ratio of score_integral / d0 at equal n / d0 "
        "(estimation_d0_collapse); per D: " + _POWER,
        "per D, holds unless the bootstrap interval of p lies below 1/3; the curves part where the ratio's interval "
        "excludes 1",
        "W_B has D d0 parameters learned from n points: if the subspace error enters the score error the "
        "D = 2048 curve sits above D = 32 at small n"),
    "distribution_recovery": Entry(
        "claim", "Cor. 3.2.1 (ii)", "the latent W2 excess over its true-vs-true floor falls with n",
        "the learned-W_B runs above, samples of the dpm2m sampler; the exact-score sampler as control", "n",
        _POWER, "holds unless the bootstrap interval of p lies below 1/6, the sqrt(xi) ~ n^(-1/6) of the TV bound "
        "(W2 is not TV: a reading of the TV rate on W2, said so in the report)",
        "a memorising estimator reproduces its n points: the W2 excess then stops falling"),
    "estimation_fixed_law": Entry(
        "claim", "Thm 3.2", "on one fixed law the score-error integral of the learned-W_B estimator decays at least "
        "like n^(-1/3) above a floor; next to the random-law curve of the same D and d0, the spread of its replicates "
        "is the estimation noise alone",
        "the estimator of estimation_learned (held-out selection, unweighted loss) on the law of one law seed, "
        "trained once per replicate seed; a replicate seed sets the data draw, the held-out split, the "
        "initialisation and the SGD noise; the replicate seeds are disjoint from the random-law seeds", "n",
        "on the replicates: " + _POWER.replace("over seeds", "over the replicate seeds") + "; per n, the seed SD of "
        "the random-law runs at the same D and d0 against the replicate SD: their ratio, the one-sided F-test of "
        "the two variances and 1 - SD_fixed^2 / SD_random^2, the share of the random-law variance that the variety "
        "of the laws accounts for (law of total variance)",
        "holds unless the bootstrap interval of p lies below 1/3; the spreads are reported with the F-test's "
        "p-value, not tested against a threshold",
        "the same as estimation_learned, on one law: the random-law fit averages over laws, so one law can decay "
        "slower than n^(-1/3) where the average does not, and the other way round"),
    "approximation_monotone": Entry(
        "check", "Thm 3.1", "eps_hat does not grow with capacity", _NET + ", n = inf", "parameters",
        "per-seed log-log slope", "one-sided t-test against 0",
        "both block families are nested in depth and width (adaLN-Zero gates, W_O = W_2 = 0 give the "
        "identity): the population optimum cannot get worse with capacity; only optimisation can"),
    "d0_scaling_blocks": Entry(
        "check", "Thm 3.1", "max_t sigma(t) err(t) grows like sqrt(d0) for independent blocks",
        "latent DiT on L identical independent token blocks", "d0", "per-seed log-log slope",
        "one-sided t-test against 1/2",
        "with independent blocks any per-token estimator has error exactly proportional to sqrt(d0)"),
    "fstar_capacity": Entry(
        "check", "Thm 3.1", "eps_hat of the network regressed on f* does not grow with capacity (next to the "
        "F = 0 network)", "network regressed on f*, trained to a plateau", "parameters", "per-seed log-log slope",
        "one-sided t-test against 0",
        "the block families are nested in depth and width: the best error cannot grow with capacity"),
    "check_off_subspace_variance": Entry(
        "check", "Cor. 3.2.1 (iii)", "the off-subspace variance of generated samples equals 1 - exp(-T0)",
        "every run's samples (dpm2m)", "T0", "chi-square range per run", "every run inside its range",
        "eq. (2.5) makes the score exactly -x/sigma(t) off span(W_B) for any network"),
    "check_pca_subspace": Entry(
        "check", "Cor. 3.2.1 (i)", "PCA of noiseless data recovers the subspace to float rounding",
        "PCA of the n training points", "n", "threshold 1e-5", "every run below it",
        "noiseless points lie exactly in span(B)"),
    "check_d_independence": Entry(
        "check", "Thm 3.1", "eps_hat at fixed d0 is the same for every D with W_B = B frozen",
        "latent DiT, exact frozen encoder", "D", "relative spread of seed means", "spread within seed noise",
        "with W_B = B the training problem is the same in law at every D"),
    "capacity_D_gap": Entry(
        "check", "Thm 3.1", "the capacity curves at D = 32 and D = 2048 coincide with a frozen PCA encoder",
        _NET, "parameters", "paired relative gap", "gap in standard errors",
        "with a frozen PCA encoder on noiseless data the latent problem is the same at every D"),
    "t0_tradeoff": Entry(
        "diagnostic", "Thm 3.2", "the score-error integral against the early-stopping time T0",
        _NET + ", n fixed", "T0", "per-seed log-log slope", "none (reported)",
        "with the EDM preconditioning (c_out ~ sqrt(sigma) as t -> 0) any bounded network has "
        "mse(t) = O(1/sigma(t)), so the slope is about -1/ln(T/T0) and cannot reach -1"),
    "learned_encoder_vs_steps": Entry(
        "diagnostic", "Cor. 3.2.1 (i)", "the subspace error of a learned W_B against training steps",
        "learned W_B from a random Stiefel init, n = inf", "step", "per-seed log-log slope", "none (reported)",
        "falling with training is a property of the optimiser, not a statement of Cor. 3.2.1"),
}


def describe(key: str) -> Entry | None:
    """The registry entry of report key ``key`` (``approximation_dit_d0_4`` -> ``approximation_monotone``)."""
    if key in ENTRIES:
        return ENTRIES[key]
    if key.startswith("approximation_") and "_d0_" in key and not key.startswith("approximation_fstar"):
        return ENTRIES["approximation_monotone"]
    hits = [k for k in ENTRIES if key.startswith(k)]
    return ENTRIES[max(hits, key=len)] if hits else None


def plan_files() -> list[Path]:
    """The files whose last commit is the plan's commit: this module and the plan modules."""
    here = Path(__file__).resolve().parent
    return [here / "preregistration.py", here / "plan.py", here / "plan_paper.py"]


def plan_commit() -> str | None:
    """``git log -1 --format=%H`` over :func:`plan_files` (suffix ``+dirty`` when either has
    uncommitted changes); None outside a git checkout."""
    files = [str(p) for p in plan_files()]
    root = str(plan_files()[0].parent)
    try:
        h = subprocess.run(["git", "log", "-1", "--format=%H", "--", *files], cwd=root, capture_output=True,
                           text=True, timeout=30, check=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", *files], cwd=root, capture_output=True,
                               timeout=30).returncode != 0
    except (OSError, subprocess.SubprocessError):
        return None
    return (h + ("+dirty" if dirty else "")) if h else None


def _grid_lines(mode: str) -> list[str]:
    plan = plan_for(mode)
    L = [f"### Mode `{mode}`", ""]
    for name, field in PLAN_FIELDS.items():
        sec = getattr(plan, field)
        if sec is None:
            continue
        grid = {f.name: getattr(sec, f.name) for f in fields(sec) if f.name not in ("budget", "seeds")}
        L.append(f"- `{name}`: seeds {list(section_seeds(plan, name))}; " +
                 "; ".join(f"{k} = {v}" for k, v in grid.items()))
    return L + [""]


def plan_markdown() -> str:
    """docs/rates/plan.md: the version, the changes, every entry of the registry and the grids of
    the ``full`` and ``quick`` modes."""
    L = [f"# Pre-registered plan of `latentdit rates`, version {PLAN_VERSION}", "",
         "Written by `latentdit rates --out docs/rates --write-plan` from "
         "`latentdit/experiments/rates/preregistration.py`, `plan.py` and `plan_paper.py`; the report names the "
         "commit that last changed those files.", "", "## Changes", ""]
    L += [f"- **v{v}.** {what} *Why:* {why}" for v, what, why in CHANGES] + [""]
    for kind, title in (("claim", "Claims (can fail)"), ("check", "Checks (hold by construction)"),
                        ("diagnostic", "Diagnostics (describe training)")):
        L += [f"## {title}", ""]
        for k, e in ENTRIES.items():
            if e.kind != kind:
                continue
            how = "How it could fail other than by optimisation" if kind == "claim" else "Why it cannot fail"
            L += [f"### `{k}` ({e.theorem})", "", f"- Statement: {e.statement}.", f"- Estimator: {e.estimator}.",
                  f"- x: {e.x}.", f"- Fit: {e.fit}.", f"- Test: {e.test}.", f"- {how}: {e.failure}.", ""]
    L += ["## Row fields", ""] + [f"- `{k}`: {v}" for k, v in ROW_FIELDS.items()] + [""]
    L += ["## Grids and seeds", ""] + _grid_lines("full") + _grid_lines("quick")
    return "\n".join(L)
