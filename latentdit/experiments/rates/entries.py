"""One report entry from per-seed ``(seed, x, y)`` triples (:func:`_entry`), and the model-based
fit that heads a rate claim measured on a quantity with a floor (:func:`power_entry`); shared by
:mod:`~latentdit.experiments.rates.claims` and :mod:`~latentdit.experiments.rates.learned`."""

from __future__ import annotations

import math

import numpy as np

from latentdit.experiments.rates.verdicts import fit_slope, power_verdict, verdict
from latentdit.fits import bootstrap_power_floor, curvature_test, local_slopes


def _curve(triples) -> list[list[float]]:
    """[[x, mean, se]] over seeds from (seed, x, y) triples (finite y only), sorted by x."""
    by: dict = {}
    for _, x, y in triples:
        if y is not None and math.isfinite(y):
            by.setdefault(x, []).append(y)
    out = []
    for x in sorted(by):
        v = np.asarray(by[x], float)
        out.append([x, float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0])
    return out


def _profile(rs: list[dict], tkey: str, mkey: str) -> dict:
    rs = [r for r in rs if r.get(mkey)]
    if not rs:
        return {}
    return {"t": rs[0][tkey], "mse": [float(v) for v in np.mean([r[mkey] for r in rs], axis=0)]}


def _entry(kind, title, theorem, statement, sweep, x, y, triples, predicted, bound="upper", *, why="",
           converged=True, excess_se_ratio=None, reference=None, profiles=None) -> dict:
    """One entry: the per-seed log-log slope fit and its verdict, the local slopes and the
    curvature test of the seed means, the fitted x range and the convergence of the curve
    (``converged``: a bool or a :func:`curve_converged` result)."""
    conv = converged if isinstance(converged, dict) else {"converged": bool(converged), "rule": "given", "detail": ""}
    fit = fit_slope(triples)
    v = verdict(fit, predicted, bound=bound, converged=conv["converged"], excess_se_ratio=excess_se_ratio)
    pts = _curve(triples)
    fx = sorted({float(t[1]) for t in triples if t[2] is not None and math.isfinite(t[2]) and t[2] > 0})
    return {"kind": kind, "title": title, "theorem": theorem, "statement": statement, "why": why, "sweep": sweep,
            "x": x, "y": y, "points": pts, "reference": reference or {}, "profiles": profiles or {},
            "slope": fit["slope"], "ci": fit["ci"], "seed_slopes": fit["seed_slopes"], "predicted": predicted,
            "bound": bound, "verdict": v["verdict"], "holds": v["holds"], "reasons": v["reasons"],
            "n_points": fit["n_points"], "decades": fit["decades"], "dropped_points": fit["dropped"],
            "fit_range": [fx[0], fx[-1]] if fx else None, "convergence": conv,
            "local_slopes": local_slopes([p[0] for p in pts], [p[1] for p in pts]),
            "curvature": curvature_test([p[0] for p in pts], [p[1] for p in pts])}


def power_entry(e: dict, triples, predicted_p: float, raw: dict, raw_y: str) -> dict:
    """``e`` with the model-based fit y = a + b x^-p of the raw ``(seed, x, y)`` triples
    (:func:`bootstrap_power_floor`) as its headline statistic and verdict (:func:`power_verdict`);
    the per-seed slope of ``e`` stays as a secondary figure; ``raw`` curves go to their own axes."""
    f = bootstrap_power_floor(triples)
    xs = sorted({float(t[1]) for t in triples})
    decades = math.log10(xs[-1] / xs[0]) if len(xs) > 1 else 0.0
    v = power_verdict(f, predicted_p, x_decades=decades, converged=e["convergence"]["converged"])
    f["x_range"] = [xs[0], xs[-1]] if xs else None
    return {**e, "power_fit": f, "raw": raw, "raw_y": raw_y, "verdict": v["verdict"], "holds": v["holds"],
            "reasons": v["reasons"] + [f"secondary, the per-seed log-log slope of {e['y']}: {e['slope']:.3g}, "
                                       f"95% CI [{e['ci'][0]:.3g}, {e['ci'][1]:.3g}], {e['verdict']}"]
            + [f"secondary: {r}" for r in e["reasons"]],
            "statistic": "power"}
