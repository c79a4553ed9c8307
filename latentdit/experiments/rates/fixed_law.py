"""The fixed-law replicate of section ``estimation`` next to its random-law runs.

A random-law run draws its law from its seed (:func:`~latentdit.experiments.rates.run.build_law`),
so the seed-to-seed spread of the random-law runs at one n holds two parts: the variety of the
problems and the estimation noise of each (the data draw, the held-out split, the initialisation and
the SGD noise). The replicates of :class:`~latentdit.experiments.rates.plan_paper.FixedLaw` keep one
law and vary the rest: their spread is the estimation noise alone. By the law of total variance,

    Var(Y) = E_law[Var(Y | law)] + Var_law(E[Y | law]),

the random-law variance less the replicate variance estimates the second term, the variety of the
problems, taking the fixed law's estimation noise as typical of the laws (:func:`law_share`).

- :func:`fixed_law_entry`: the report entry ``estimation_fixed_law_D{D}_d0_{d0}``: the score-error
  integral of the replicates against n with the model-based fit y = a + b n^-p (Thm 3.2: p >= 1/3)
  and its bootstrap over the replicate seeds, the random-law curve of the same D and d0 as its
  reference, and per n the two spreads as columns;
- :func:`spread_comparison`: per n, the random-law seed SD against the replicate SD;
- :func:`fixed_law_headline`: the summary keys ``fixed_law_exponent`` and ``fixed_law_spread``.
"""

from __future__ import annotations

import math

import numpy as np

from latentdit.experiments.rates.entries import _curve, _entry, power_entry
from latentdit.experiments.rates.headline import ABSENT, curve_converged, learned_rows
from latentdit.fits import bootstrap_power_floor


def seed_sd(values) -> float:
    """The sample standard deviation (ddof = 1) of the finite ``values``; NaN below two."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], float)
    return float(v.std(ddof=1)) if v.size > 1 else math.nan


def law_share(sd_random: float, sd_fixed: float) -> float:
    """1 - sd_fixed^2 / sd_random^2: the share of the random-law variance that the variety of the laws
    accounts for by the law of total variance (module docstring); negative when the replicates spread
    more than the random-law runs (then the difference is noise)."""
    return 1.0 - sd_fixed ** 2 / sd_random ** 2 if sd_random > 0 else math.nan


def variance_ratio_test(sd_random: float, k_random: int, sd_fixed: float, k_fixed: int) -> tuple[float, float]:
    """(F, p): F = sd_random^2 / sd_fixed^2 and the one-sided p-value of F under equal variances,
    P(F(k_random - 1, k_fixed - 1) >= F) (small: the random-law runs spread more)."""
    from scipy.stats import f as f_dist

    if not (k_random > 1 and k_fixed > 1 and math.isfinite(sd_random) and math.isfinite(sd_fixed)):
        return math.nan, math.nan
    if sd_fixed == 0:
        return (math.inf, 0.0) if sd_random > 0 else (math.nan, math.nan)
    F = sd_random ** 2 / sd_fixed ** 2
    return float(F), float(f_dist.sf(F, k_random - 1, k_fixed - 1))


def spread_comparison(random_rows: list[dict], fixed_rows: list[dict], y: str = "score_integral") -> list[dict]:
    """Per n that both sets of rows have at two or more seeds: ``random_sd`` over ``random_seeds``
    seeds, ``fixed_sd`` over ``replicates`` replicates, ``sd_ratio`` (random / fixed), ``F`` and
    ``p_value`` (:func:`variance_ratio_test`) and ``law_share`` (:func:`law_share`)."""
    def by_n(rs):
        out: dict = {}
        for r in rs:
            if r.get(y) is not None and math.isfinite(r[y]):
                out.setdefault(r["n"], []).append(r[y])
        return out

    rnd, fix, out = by_n(random_rows), by_n(fixed_rows), []
    for n in sorted(set(rnd) & set(fix)):
        if len(rnd[n]) < 2 or len(fix[n]) < 2:
            continue
        sr, sf = seed_sd(rnd[n]), seed_sd(fix[n])
        F, p = variance_ratio_test(sr, len(rnd[n]), sf, len(fix[n]))
        out.append({"n": n, "random_sd": sr, "random_seeds": len(rnd[n]), "fixed_sd": sf, "replicates": len(fix[n]),
                    "sd_ratio": sr / sf if sf > 0 else math.inf, "F": F, "p_value": p, "law_share": law_share(sr, sf)})
    return out


def _pairs(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """(the random-law rows, the fixed-law rows) at finite n, held-out selection."""
    return ([r for r in learned_rows(rows) if r["n"] > 0],
            [r for r in learned_rows(rows, law="fixed") if r["n"] > 0])


def _at(rs: list[dict], D: int, d0: int) -> list[dict]:
    return [r for r in rs if (r["D"], r["d0"]) == (D, d0)]


def _means(rs: list[dict]) -> list[list[float]]:
    return [[x, m] for x, m, _ in _curve([(r["seed"], r["n"], r["score_integral"]) for r in rs])]


def _triples(rs: list[dict]) -> list[tuple]:
    return [(r["seed"], r["n"], r["score_integral"]) for r in rs]


def spread_line(p: dict) -> str:
    """One point of :func:`spread_comparison` in words."""
    return (f"n = {p['n']}: random-law seed SD {p['random_sd']:.3g} ({p['random_seeds']} seeds) against replicate SD "
            f"{p['fixed_sd']:.3g} ({p['replicates']} replicates), ratio {p['sd_ratio']:.3g}, F = {p['F']:.3g} "
            f"(one-sided p {p['p_value']:.3g}); law share of the random-law variance {p['law_share']:.3g}")


def fixed_law_entry(rows: list[dict], D: int, d0: int) -> dict | None:
    """The entry of the module docstring at (``D``, ``d0``); None without fixed-law rows there."""
    rnd, fix = (_at(rs, D, d0) for rs in _pairs(rows))
    if not fix:
        return None
    law, reps = sorted({r.get("law_seed") for r in fix}), sorted({r["seed"] for r in fix})
    tr = _triples(fix)
    conv = curve_converged(fix, [], lambda r: r["n"], lambda r: r.get("score_integral"))
    e = _entry("claim", f"Estimation on one fixed law (D = {D}, d0 = {d0}, law seed {', '.join(map(str, law))})",
               "Thm 3.2", "(1/T) int E||s - grad log p_t||^2 dt of the paper's estimator on one law decays at least "
               f"like n^(-1/3) above a floor; the replicate seeds {reps} vary the data draw, the held-out split, "
               "the initialisation and the SGD noise, not the law", "estimation", "n", "score_integral", tr, -1 / 3,
               converged=conv, reference={"random laws (seed mean)": _means(rnd)} if rnd else None)
    e = power_entry(e, tr, 1 / 3, {"fixed law (replicate mean)": _means(fix)}, "score_integral")
    spread = spread_comparison(rnd, fix)
    e["columns"] = {label: [[p["n"], p[k]] for p in spread] for k, label in (
        ("random_sd", "random-law seed SD"), ("fixed_sd", "replicate SD"), ("sd_ratio", "SD ratio (random / fixed)"),
        ("law_share", "law share of the random-law variance"))}
    e["spread"] = spread
    rf = bootstrap_power_floor(_triples(rnd))
    e["reasons"] = e["reasons"] + ([
        f"the random-law curve at D = {D}, d0 = {d0} (estimation_learned_D{D}_d0_{d0}): p = {rf['p']:.3g}, 95% "
        f"bootstrap interval [{rf['p_ci'][0]:.3g}, {rf['p_ci'][1]:.3g}] over {rf['n_seeds']} seeds"] if rnd else
        [f"no random-law rows at D = {D}, d0 = {d0}: no spread to compare"]) + [
        f"spread, {spread_line(p)}" for p in spread]
    return e


def _choose(fix: list[dict]) -> tuple[int, int]:
    """The (D, d0) of the headline keys: the smallest D, and d0 = 4 there when present, else its smallest."""
    D = min(r["D"] for r in fix)
    d0s = {r["d0"] for r in fix if r["D"] == D}
    return D, 4 if 4 in d0s else min(d0s)


def fixed_law_headline(rows: list[dict]) -> dict:
    """``fixed_law_exponent``: p of y = a + b n^-p on the replicates with its bootstrap interval over
    the replicate seeds, next to the random-law fit of the same D and d0 (``random_law``);
    ``fixed_law_spread``: :func:`spread_comparison` there. Each ABSENT without the rows it reads."""
    rnd, fix = _pairs(rows)
    if not fix:
        return {"fixed_law_exponent": dict(ABSENT), "fixed_law_spread": dict(ABSENT)}
    D, d0 = _choose(fix)
    rnd, fix = _at(rnd, D, d0), _at(fix, D, d0)
    laws, reps = sorted({r.get("law_seed") for r in fix}), sorted({r["seed"] for r in fix})
    law = laws[0] if len(laws) == 1 else laws
    source = f"learned W_B, D = {D}, d0 = {d0}, held-out selection, law seed {law}, replicate seeds {reps}"
    f, rf = bootstrap_power_floor(_triples(fix)), bootstrap_power_floor(_triples(rnd))
    if math.isfinite(f["p"]):
        exponent = {"status": "measured", "source": source, "p": f["p"], "p_ci": f["p_ci"], "a": f["a"], "b": f["b"],
                    "predicted_at_least": 1 / 3, "holds": None if not math.isfinite(f["p_ci"][1]) else
                    f["p_ci"][1] >= 1 / 3, "dropped": f["dropped"], "n_seeds": f["n_seeds"],
                    "random_law": {"p": rf["p"], "p_ci": rf["p_ci"], "n_seeds": rf["n_seeds"]}}
    else:
        exponent = {**ABSENT, "source": source, "reason": f"{f['k']} distinct n, {f['n_seeds']} replicates"}
    pts = spread_comparison(rnd, fix)
    spread = ({"status": "measured", "D": D, "d0": d0, "law_seed": law, "replicates": reps,
               "random_seeds": sorted({r["seed"] for r in rnd}), "points": pts} if pts else
              {**ABSENT, "source": source, "reason": "no n with two or more random-law seeds and two or more "
               "replicates"})
    return {"fixed_law_exponent": exponent, "fixed_law_spread": spread}
