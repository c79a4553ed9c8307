"""The headline numbers of summary.json that read the version-2 sections' rows, and the per-curve
convergence rule; each works on whatever rows exist and says ``"absent"`` when the rows it needs
are missing. :data:`TOP_KEYS` lists every headline key of the report in order (the fixed-law keys
come from :mod:`~latentdit.experiments.rates.fixed_law`, the others from here and
:mod:`~latentdit.experiments.rates.claims`), :data:`TOP_NOTES` says what each is.

Row fields are those of :data:`latentdit.experiments.rates.preregistration.ROW_FIELDS`:

- :func:`estimation_D_ratio`: section ``estimation`` (learned W_B, ``stop = "heldout"``), the
  score-error integral at D = max over D = min, per d0 and n, on the seeds both have, with a
  percentile bootstrap over those seeds (Thm 3.2: the rate depends on d0, not D);
- :func:`approximation_slope_d0`: section ``fstar`` on its d0 curve (width growing with d0,
  ``FstarSection.d0_width``), the per-seed log-log slope of eps_hat sqrt(d0) against d0, tested
  against 1/2;
- :func:`sample_complexity_exponent`: the exponent p of y = a + b n^-p fitted to the score-error
  integral with its seed bootstrap (:func:`latentdit.fits.bootstrap_power_floor`), from the
  learned-W_B rows at the smallest D when they exist, else from section ``sample``.

:func:`curve_converged` is the convergence flag of one curve: where the plan has a run's twin at a
doubled budget (``budget_scale = 2``), converged means the doubled run changes the curve's seed mean
by less than one seed standard error at every x; otherwise every run of the curve stopped before
its step cap (``stop_reason`` other than "step cap").
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from latentdit.fits import BOOTSTRAP_SEED, bootstrap_power_floor
from latentdit.experiments.rates.verdicts import fit_slope, verdict

ABSENT = {"status": "absent"}

# the headline numbers of summary.json and report.md, in this order, each with its note
TOP_KEYS = ("sample_complexity_exponent", "estimation_D_ratio", "estimation_d0_collapse", "fixed_law_exponent",
            "fixed_law_spread", "approximation_slope_d0", "d_independence_spread", "sample_complexity_slope_d0_4",
            "capacity_D_mismatch_max", "capacity_D_mismatch_se")
TOP_NOTES = {
    "sample_complexity_exponent": "p of y = a + b n^-p fitted to the score-error integral, with its bootstrap "
                                  "interval over seeds (claim: p >= 1/3)",
    "estimation_D_ratio": "score-error integral at the largest D over the smallest D, learned W_B, per d0 and n "
                          "with a bootstrap interval (claim: 1 inside every interval)",
    "estimation_d0_collapse": "score-error integral / d0 at equal n / d0, larger d0 over smaller, learned W_B at the "
                              "smallest D, with a bootstrap interval (the curves collapse where 1 is inside)",
    "fixed_law_exponent": "p of y = a + b n^-p fitted to the score-error integral of the replicates of one fixed "
                          "law (the data draw, the initialisation and the SGD noise vary, the law does not), with "
                          "its bootstrap interval over the replicate seeds, next to the random-law fit of the same "
                          "D and d0 (claim: p >= 1/3)",
    "fixed_law_spread": "per n, the seed SD of the random-law runs against the replicate SD of the fixed law, with "
                        "the one-sided F-test of the two variances and the share of the random-law variance the "
                        "variety of the laws accounts for (law of total variance)",
    "approximation_slope_d0": "slope of eps_hat sqrt(d0) against d0 at capacity growing with d0, regression on "
                              "f* (claim: <= 1/2)",
    "d_independence_spread": "relative spread of eps_hat over D with W_B = B frozen (implementation check)",
    "sample_complexity_slope_d0_4": "excess-risk slope against n at d0 = 4 (claim)",
    "capacity_D_mismatch_max": "largest relative gap between the capacity curves of the smallest and largest D, "
                               "seed by seed (the same latent law and, with latent noise, the same latent draws). "
                               "With a frozen PCA encoder on noiseless data the latent problem is the same at "
                               "every D, so this checks the ambient parts of the code (PCA at D, eq. 2.5's "
                               "off-subspace term, the evaluation at D); it is not evidence for Thm 3.1",
    "capacity_D_mismatch_se": "that gap in standard errors of the smallest D's seed mean (the seed noise an "
                              "unpaired comparison would face)",
}


def scale(r: dict) -> int:
    return int(r.get("budget_scale") or 1)


def curve_converged(rows: list[dict], doubled: list[dict], x: Callable[[dict], float],
                    y: Callable[[dict], float]) -> dict:
    """``{"converged", "rule", "detail"}`` for one curve: ``rows`` at budget scale 1 and their
    ``doubled`` twins (same x and seed, ``budget_scale = 2``), ``x`` / ``y`` reading a row."""
    if not rows:
        return {"converged": False, "rule": "no rows", "detail": ""}
    if doubled:
        worst = []
        for xv in sorted({x(r) for r in doubled}):
            base = {r["seed"]: y(r) for r in rows if x(r) == xv}
            twin = {r["seed"]: y(r) for r in doubled if x(r) == xv and r["seed"] in base}
            if len(base) < 2 or not twin:
                continue
            se = float(np.std(list(base.values()), ddof=1) / math.sqrt(len(base)))
            change = abs(float(np.mean(list(twin.values()))) - float(np.mean([base[s] for s in twin])))
            worst.append((change / se if se > 0 else math.inf, xv))
        if worst:
            r, xv = max(worst)
            return {"converged": bool(r < 1.0), "rule": "doubled budget",
                    "detail": f"largest change at doubled budget {r:.2g} seed SE (x = {xv})"}
    capped = [r for r in rows if r.get("stop_reason", "patience" if r.get("converged") else "step cap") == "step cap"]
    return {"converged": not capped, "rule": "stop reason",
            "detail": f"{len(capped)} of {len(rows)} runs reached the step cap" if capped else
            f"all {len(rows)} runs stopped before the step cap"}


def doubled_twins(rs: list[dict]) -> list[dict]:
    """Each fstar row's twice-the-budget value as a twin row (``eps_hat_2x``) for :func:`curve_converged`."""
    return [{**r, "eps_hat": r["eps_hat_2x"]} for r in rs if r.get("eps_hat_2x") is not None]


def _converged_D(rs: list[dict], D: int, d0: int) -> bool:
    """Whether the held-out curve at (D, d0) of the learned rows ``rs`` passes :func:`curve_converged`."""
    cur = [r for r in rs if (r["D"], r["d0"]) == (D, d0) and r["n"] > 0]
    return bool(cur) and curve_converged(cur, [], lambda r: r["n"], lambda r: r["score_integral"])["converged"]


def _boot_ratio(num: dict, den: dict, resamples: int = 400) -> tuple[float, list[float]]:
    seeds = sorted(set(num) & set(den))
    ratio = float(np.mean([num[s] for s in seeds]) / np.mean([den[s] for s in seeds]))
    if len(seeds) < 2:
        return ratio, [math.nan, math.nan]
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    draws = []
    for _ in range(resamples):
        pick = [seeds[i] for i in rng.integers(0, len(seeds), len(seeds))]
        draws.append(np.mean([num[s] for s in pick]) / np.mean([den[s] for s in pick]))
    return ratio, [float(v) for v in np.percentile(draws, [2.5, 97.5])]


def learned_rows(rows: list[dict], stop: str = "heldout", law: str = "random") -> list[dict]:
    """Rows of section ``estimation`` with stopping rule ``stop``, the theorem's unweighted loss
    (``weighting`` "none" when the section ran several) and ``law`` ("random": each seed its own law,
    the default of rows without the field; "fixed": the replicates of one law)."""
    return [r for r in rows if r.get("section") == "estimation" and r.get("stop", "heldout") == stop
            and r.get("weighting", "none") == "none" and scale(r) == 1 and r.get("score_integral") is not None
            and r.get("law", "random") == law]


def fstar_curve(rows: list[dict], plan=None) -> list[dict]:
    """The ``fstar`` rows on the d0 curve: width = ``plan.fstar.d0_width(d0)`` (rows with a
    ``capacity_rule`` of "grow" when the plan has no such section)."""
    sec = getattr(plan, "fstar", None)
    rs = [r for r in rows if r.get("section") == "fstar" and scale(r) == 1 and r.get("eps_hat", r.get("score_uniform"))
          is not None]
    if sec is not None and hasattr(sec, "d0_width"):
        return [r for r in rs if r.get("width") == sec.d0_width(r["d0"])]
    return [r for r in rs if r.get("capacity_rule") == "grow"]


def eps_hat(r: dict) -> float:
    return r["eps_hat"] if r.get("eps_hat") is not None else r["score_uniform"]


def estimation_D_ratio(rows: list[dict]) -> dict:
    """Per d0 and finite n: ``ratio`` of seed means of score_integral (largest D over smallest D)
    with its 95% bootstrap interval ``ci`` and the seeds used; ABSENT without two D."""
    rs = learned_rows(rows)
    Ds = sorted({r["D"] for r in rs})
    if len(Ds) < 2:
        return dict(ABSENT)
    lo, hi = Ds[0], Ds[-1]
    out = []
    for d0 in sorted({r["d0"] for r in rs}):
        for n in sorted({r["n"] for r in rs if r["d0"] == d0 and r["n"] > 0}):
            pick = {D: {r["seed"]: r["score_integral"] for r in rs if (r["d0"], r["n"], r["D"]) == (d0, n, D)}
                    for D in (lo, hi)}
            if not set(pick[lo]) & set(pick[hi]):
                continue
            ratio, ci = _boot_ratio(pick[hi], pick[lo])
            out.append({"d0": d0, "n": n, "ratio": ratio, "ci": ci,
                        "seeds": sorted(set(pick[lo]) & set(pick[hi]))})
    if not out:
        return dict(ABSENT)
    parted = [p for p in out if not p["ci"][0] <= 1.0 <= p["ci"][1]]
    conv = [d0 for d0 in sorted({p["d0"] for p in out}) if _converged_D(rs, lo, d0) and _converged_D(rs, hi, d0)]
    tested = [p for p in out if p["d0"] in conv]
    return {"status": "measured", "D": [lo, hi], "points": out,
            "parted_at": [[p["d0"], p["n"]] for p in parted], "converged_d0": conv,
            "holds": None if not tested else not any(p in parted for p in tested)}


def estimation_d0_collapse(rows: list[dict]) -> dict:
    """Whether the learned-W_B curves of score_integral / d0 against n / d0 collapse across d0 (at
    the smallest D): at every n / d0 that two d0 share, the ratio of seed means (larger d0 over
    smaller) with its bootstrap interval; ABSENT without two d0 sharing a value of n / d0."""
    rs = learned_rows(rows)
    if not rs:
        return dict(ABSENT)
    D = min(r["D"] for r in rs)
    by: dict = {}
    for r in rs:
        if r["D"] == D and r["n"] > 0:
            by.setdefault(r["d0"], {}).setdefault(r["n"] / r["d0"], {})[r["seed"]] = r["score_integral"] / r["d0"]
    d0s, out = sorted(by), []
    for i, lo in enumerate(d0s):
        for hi in d0s[i + 1:]:
            for u in sorted(set(by[lo]) & set(by[hi])):
                if set(by[lo][u]) & set(by[hi][u]):
                    ratio, ci = _boot_ratio(by[hi][u], by[lo][u])
                    out.append({"d0": [lo, hi], "n_over_d0": u, "ratio": ratio, "ci": ci})
    if not out:
        return dict(ABSENT)
    conv = [d0 for d0 in sorted(by) if _converged_D(rs, D, d0)]
    parted = [p for p in out if not p["ci"][0] <= 1.0 <= p["ci"][1]]
    tested = [p for p in out if all(d in conv for d in p["d0"])]
    return {"status": "measured", "D": D, "points": out, "parted_at": [[p["d0"], p["n_over_d0"]] for p in parted],
            "converged_d0": conv, "holds": None if not tested else not any(p in parted for p in tested)}


def approximation_slope_d0(rows: list[dict], plan=None) -> dict:
    """slope, ci, verdict and holds of eps_hat sqrt(d0) against d0 on the d0 curve of
    :func:`fstar_curve` (upper bound 1/2, Thm 3.1); ABSENT without such rows."""
    rs = fstar_curve(rows, plan)
    if not rs:
        return dict(ABSENT)
    fit = fit_slope([(r["seed"], r["d0"], eps_hat(r) * math.sqrt(r["d0"])) for r in rs])
    conv = curve_converged(rs, doubled_twins(rs), lambda r: r["d0"], eps_hat)
    v = verdict(fit, 0.5, bound="upper", converged=conv["converged"])
    return {"status": "measured", "slope": fit["slope"], "ci": fit["ci"], "predicted": 0.5,
            "verdict": v["verdict"], "holds": v["holds"], "reasons": v["reasons"], "dropped": fit["dropped"],
            "convergence": conv}


def sample_complexity_exponent(rows: list[dict]) -> dict:
    """p of the power-plus-floor fit of score_integral against n with its bootstrap interval; the
    learned-W_B rows at the smallest D and d0 = 4 (else the smallest d0) when present, else section
    ``sample`` (smallest d0)."""
    rs = learned_rows(rows)
    if rs:
        d0s = {r["d0"] for r in rs}
        D, d0 = min(r["D"] for r in rs), 4 if 4 in d0s else min(d0s)  # d0 = 4: the v1 sweep's
        src = [r for r in rs if r["D"] == D and r["d0"] == d0 and r["n"] > 0]
        source = f"learned W_B, D = {D}, d0 = {d0}, held-out selection"
    else:
        rs = [r for r in rows if r.get("section") == "sample" and scale(r) == 1 and r.get("n", 0) > 0]
        if not rs:
            return dict(ABSENT)
        d0 = min(r["d0"] for r in rs)
        src = [r for r in rs if r["d0"] == d0]
        source = f"section sample (frozen PCA encoder), d0 = {d0}"
    f = bootstrap_power_floor([(r["seed"], r["n"], r.get("score_integral")) for r in src])
    if not math.isfinite(f["p"]):
        return {**ABSENT, "source": source, "reason": f"{f['k']} distinct n, {f['n_seeds']} seeds"}
    conv = curve_converged(src, [], lambda r: r["n"], lambda r: r.get("score_integral"))
    ok = conv["converged"] and math.isfinite(f["p_ci"][1])  # plan v4: the convergence rule of the claims
    return {"status": "measured", "source": source, "p": f["p"], "p_ci": f["p_ci"], "a": f["a"], "b": f["b"],
            "predicted_at_least": 1 / 3, "holds": f["p_ci"][1] >= 1 / 3 if ok else None,
            "dropped": f["dropped"], "n_seeds": f["n_seeds"], "convergence": conv}


def headline(rows: list[dict], plan=None) -> dict:
    """The three keys of this module for summary.json."""
    return {"estimation_D_ratio": estimation_D_ratio(rows), "estimation_d0_collapse": estimation_d0_collapse(rows),
            "approximation_slope_d0": approximation_slope_d0(rows, plan),
            "sample_complexity_exponent": sample_complexity_exponent(rows)}
