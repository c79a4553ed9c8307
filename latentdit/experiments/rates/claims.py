"""The paper's statistical claims as data (:data:`CLAIMS`), per-seed log-log slope fits with
t-intervals, and the verdict of each claim on the finished configurations (:func:`analyse`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from latentdit.experiments.rates.plan import Plan, config_key, sweeps


def loglog_slope(x: Iterable[float], y: Iterable[float]) -> float:
    lx, ly = np.log(np.asarray(list(x), float)), np.log(np.asarray(list(y), float))
    return float(np.polyfit(lx, ly, 1)[0])


def fit_slopes(points: list[tuple[int, float, float]], level: float = 0.95) -> dict:
    """Per-seed log-log least-squares slopes from (seed, x, y) triples, their mean and a t-interval.

    Non-positive y values are dropped. With one usable seed the interval is that seed's slope +- inf.
    """
    from scipy.stats import t as student_t

    by_seed: dict[int, list[tuple[float, float]]] = {}
    for s, x, y in points:
        if y is not None and np.isfinite(y) and y > 0:
            by_seed.setdefault(s, []).append((x, y))
    slopes = [loglog_slope(*zip(*v)) for v in by_seed.values() if len({a for a, _ in v}) >= 2]
    if not slopes:
        return {"slope": float("nan"), "ci": [float("nan"), float("nan")], "seed_slopes": [], "n_seeds": 0}
    m = float(np.mean(slopes))
    if len(slopes) < 2:
        return {"slope": m, "ci": [-math.inf, math.inf], "seed_slopes": slopes, "n_seeds": 1}
    se = float(np.std(slopes, ddof=1) / math.sqrt(len(slopes)))
    half = float(student_t.ppf(0.5 + level / 2, len(slopes) - 1)) * se
    return {"slope": m, "ci": [m - half, m + half], "seed_slopes": slopes, "n_seeds": len(slopes)}


def verdict_upper(ci: list[float], predicted: float) -> str:
    """The claim bounds the growth exponent from above (error <= C x^predicted)."""
    lo, hi = ci
    if math.isnan(lo) or math.isnan(hi):
        return "inconclusive"
    if hi < predicted:
        return "tighter than the bound"
    if lo > predicted:
        return "violated"
    return "consistent"


@dataclass
class Claim:
    key: str
    title: str
    claim: str
    sweep: str
    metric: str
    predicted: float
    kind: str = "upper"  # upper: slope <= predicted; equal: metric ~ reference exactly
    reference: str | None = None  # metric with the finite-sample floor / the exact expected value
    xlabel: str = ""
    ylabel: str = ""
    note: str = ""


CLAIMS = [
    Claim("score_vs_D", "Score error does not depend on D (Thm 3.1)",
          "sigma(t) ||s_W - grad log p_t||_{L2(P_t)} <= eps sqrt(d0): no dependence on the ambient dimension D.",
          "D", "score_sigma_error", 0.0, xlabel="ambient dimension D", ylabel="sigma-scaled score error"),
    Claim("score_vs_d0", "Score error grows at most like sqrt(d0) (Thm 3.1)",
          "sigma(t) ||s_W - grad log p_t||_{L2(P_t)} <= eps sqrt(d0).",
          "d0", "score_sigma_error", 0.5, xlabel="latent dimension d0", ylabel="sigma-scaled score error"),
    Claim("score_vs_n", "Score estimation error falls with n (Thm 3.2)",
          "Average squared score error over [T0, T] is O~(xi / (T0 T)), xi ~ n^{-1/3} (+ eps^2): exponent -1/3 "
          "in n. Measured as the average over a log grid of t of sigma(t)^2 ||s_W - grad log p_t||^2, which the "
          "unweighted average bounds since sigma(t) <= 1.",
          "n", "score_sigma_sq_error", -1.0 / 3, xlabel="training samples n",
          ylabel="mean sigma^2 x squared score error"),
    Claim("subspace_vs_n", "Subspace recovery (Cor. 3.2.1 i)",
          "||W_B W_B^T - B B^T||_F^2 = O~(xi / c0), xi ~ n^{-1/3}: exponent -1/3 in n.",
          "n", "subspace_error", -1.0 / 3, reference="subspace_error_noisy_pca", xlabel="training samples n",
          ylabel="||W W^T - B B^T||_F^2"),
    Claim("subspace_noisy_pca_vs_n", "Subspace recovery from noised observations (Cor. 3.2.1 i, statistical)",
          "Same bound, for the PCA subspace of the n training points observed through the forward process at T0 "
          "(x_T0 = beta x + sqrt(sigma) z): an estimate whose error is statistical.",
          "n", "subspace_error_noisy_pca", -1.0 / 3, xlabel="training samples n",
          ylabel="||W W^T - B B^T||_F^2 (noisy PCA)"),
    Claim("latent_w2_vs_n", "Latent distribution recovery, W2 (Cor. 3.2.1 ii, d0 = 16)",
          "TV(true latent law at T0, generated law aligned by (W_B U)^T) = O~(sqrt(xi) log n): exponent -1/6 in n. "
          "For d0 = 16 the latent W2 is measured instead, next to its finite-sample floor (true vs true).",
          "n", "w2_latent", -1.0 / 6, reference="w2_latent_reference", xlabel="training samples n",
          ylabel="latent W2"),
    Claim("latent_tv_vs_n", "Latent distribution recovery, TV (Cor. 3.2.1 ii, d0 = 2)",
          "TV(true latent law at T0, generated law aligned by (W_B U)^T) = O~(sqrt(xi) log n): exponent -1/6 in n. "
          "TV between the exact density and a Gaussian KDE of the aligned generated samples.",
          "tv", "tv_latent", -1.0 / 6, reference="tv_latent_reference", xlabel="training samples n",
          ylabel="latent TV"),
    Claim("off_subspace_vs_T0", "Off-subspace law at the stopping time (Cor. 3.2.1 iii)",
          "The generated law's component orthogonal to W_B is Gaussian with covariance (1 - exp(-T0)) I for an "
          "exact sampler: log-log slope 1 in T0 and ratio 1 to 1 - exp(-T0).",
          "T0", "off_subspace_var", 1.0, kind="equal", reference="off_subspace_var_expected",
          xlabel="early-stopping time T0", ylabel="off-subspace variance per direction"),
]


def rows_for(rows: list[dict], plan: Plan, sweep: str) -> tuple[str, list[dict]]:
    param, points = sweeps(plan)[sweep]
    want = {config_key({k: p[k] for k in ("D", "d0", "n", "T0")}) for p in points}
    return param, [r for r in rows if config_key({k: r[k] for k in ("D", "d0", "n", "T0")}) in want]


def analyse(rows: list[dict], plan: Plan) -> dict:
    """Fitted slopes, intervals and verdicts per claim, plus per-point means (for the report)."""
    out: dict = {}
    for c in CLAIMS:
        param, sel = rows_for(rows, plan, c.sweep)
        sel = [r for r in sel if r.get(c.metric) is not None]
        xs = sorted({r[param] for r in sel})
        table = []
        for xv in xs:
            vals = [r[c.metric] for r in sel if r[param] == xv]
            refs = [r[c.reference] for r in sel if r[param] == xv and c.reference and r.get(c.reference) is not None]
            rel = [r["score_rel_error"] for r in sel if r[param] == xv]
            table.append({"x": xv, "mean": float(np.mean(vals)), "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
                          "seeds": len(vals), "reference": float(np.mean(refs)) if refs else None,
                          "score_rel_error": float(np.mean(rel)) if rel else None})
        fit = fit_slopes([(r["seed"], r[param], r[c.metric]) for r in sel])
        entry = {"title": c.title, "claim": c.claim, "sweep": c.sweep, "parameter": param, "metric": c.metric,
                 "predicted_exponent": c.predicted, "measured_slope": fit["slope"], "interval": fit["ci"],
                 "interval_level": 0.95, "seed_slopes": fit["seed_slopes"], "points": table, "notes": []}
        if c.kind == "equal":
            ratios = [r[c.metric] / r[c.reference] for r in sel]
            entry["ratio_mean"] = float(np.mean(ratios)) if ratios else float("nan")
            entry["ratio_range"] = [float(np.min(ratios)), float(np.max(ratios))] if ratios else [float("nan")] * 2
            ok_slope = fit["ci"][0] <= c.predicted <= fit["ci"][1] or abs(fit["slope"] - c.predicted) < 0.05
            ok_ratio = bool(ratios) and max(abs(q - 1) for q in ratios) <= 0.1
            entry["verdict"] = "consistent" if (ok_slope and ok_ratio) else "violated"
            entry["notes"].append(f"measured / expected variance: mean {entry['ratio_mean']:.4f}, range "
                                  f"[{entry['ratio_range'][0]:.4f}, {entry['ratio_range'][1]:.4f}]")
        else:
            entry["verdict"] = verdict_upper(fit["ci"], c.predicted) if fit["n_seeds"] else "inconclusive"
            if sel and max(r[c.metric] for r in sel) < 1e-5:
                entry["verdict"] = "tighter than the bound"
                entry["notes"].append(f"every value is at the rounding floor of a float32 encoder (max "
                                      f"{max(r[c.metric] for r in sel):.1e}): the data lie exactly on the subspace, "
                                      "so the second moment of any n >= d0 points has range span(B) and PCA recovers "
                                      "it exactly; the fitted slope is that of rounding noise")
            if param == "n" and c.metric not in ("subspace_error", "subspace_error_noisy_pca"):
                draws = plan.budget.steps * plan.budget.batch_size
                entry["notes"].append(f"fixed optimisation budget: {plan.budget.steps} steps x batch "
                                      f"{plan.budget.batch_size} = {draws} training draws for every n; where this is "
                                      "below n the network has not seen every sample, so a flat curve means the error "
                                      "is limited by optimisation, not by n")
        if c.key == "score_vs_D" and table:
            means = [p["mean"] for p in table]
            out["d_independence_spread"] = float(max(means) / min(means) - 1)
            entry["d_independence_spread"] = out["d_independence_spread"]
        out[c.key] = entry
    return out
