"""Power-law fits shared by the rate report (:mod:`latentdit.experiments.rates`) and the benchmarks.

One log-log least-squares slope (:func:`loglog_slope`), and the statistics that do not bend it:

- :func:`local_slopes`: the slope between each pair of consecutive grid points;
- :func:`curvature_test`: the F-test of the line against the quadratic in (log x, log y), a
  lack-of-fit test of a pure power law (a floor or a knee shows up as curvature);
- :func:`fit_power_floor`: the model y = a + b x^(-p) with a floor a >= 0, b >= 0, p > 0, by
  bounded least squares on relative residuals (no point is subtracted, dropped or cut off);
- :func:`bootstrap_power_floor`: that fit on seed means, with a percentile interval for p from
  resampling the seeds with replacement (whole curves: a seed's points are not independent).

Every function that takes per-seed ``(seed, x, y)`` triples counts the points it cannot use
(non-finite y, or y <= 0 where logarithms are taken) and returns that count: nothing is dropped
silently.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

P_BOUNDS = (1e-3, 4.0)  # the exponents the power-plus-floor model may take
BOOTSTRAP_SEED = 0  # a fixed stream: the interval is a function of the data only


def loglog_slope(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """(slope, intercept) of the least-squares line log y = intercept + slope log x.

    Needs two or more distinct positive x and positive y (a ValueError otherwise)."""
    xa, ya = np.asarray(x, float), np.asarray(y, float)
    if xa.size < 2 or not (np.all(xa > 0) and np.all(ya > 0) and np.all(np.isfinite(ya))) or np.ptp(xa) == 0:
        raise ValueError("loglog_slope needs two or more distinct positive x and positive y")
    lx, ly = np.log(xa), np.log(ya)
    mx, my = lx.mean(), ly.mean()
    slope = float(((lx - mx) * (ly - my)).sum() / ((lx - mx) ** 2).sum())
    return slope, float(my - slope * mx)


def local_slopes(x: Sequence[float], y: Sequence[float]) -> list[list[float]]:
    """[[x_i, x_{i+1}, slope]] between consecutive grid points (sorted by x); pairs with a
    non-positive y get slope NaN (kept, so the grid stays visible)."""
    pts = sorted(zip(map(float, x), map(float, y)))
    out = []
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        ok = x0 > 0 and x1 > x0 and y0 > 0 and y1 > 0
        out.append([x0, x1, math.log(y1 / y0) / math.log(x1 / x0) if ok else math.nan])
    return out


def curvature_test(x: Sequence[float], y: Sequence[float]) -> dict:
    """F-test of log y = c0 + c1 log x against c0 + c1 log x + c2 (log x)^2 on positive points.

    F = (RSS_line - RSS_quad) / (RSS_quad / (k - 3)) with (1, k - 3) degrees of freedom, k the
    number of points. Returns ``F``, ``p_value``, ``curvature`` (c2) and ``k``; NaN with fewer than
    4 points (no degree of freedom left)."""
    from scipy.stats import f as f_dist

    pts = [(a, b) for a, b in zip(x, y) if a > 0 and b > 0 and math.isfinite(b)]
    out = {"F": math.nan, "p_value": math.nan, "curvature": math.nan, "k": len(pts)}
    if len(pts) < 4:
        return out
    lx, ly = np.log(np.array(pts, float)).T
    rss = []
    for deg in (1, 2):
        c = np.polynomial.polynomial.polyfit(lx, ly, deg)
        rss.append(float(((np.polynomial.polynomial.polyval(lx, c) - ly) ** 2).sum()))
    k = len(pts)
    out["curvature"] = float(c[2])
    if rss[1] <= 1e-300:
        out.update(F=math.inf if rss[0] > 1e-300 else 0.0, p_value=0.0 if rss[0] > 1e-300 else 1.0)
        return out
    F = (rss[0] - rss[1]) / (rss[1] / (k - 3))
    out.update(F=float(F), p_value=float(f_dist.sf(F, 1, k - 3)))
    return out


def _model(theta: np.ndarray, x: np.ndarray) -> np.ndarray:
    a, b, p = theta
    return a + b * x ** (-p)


def _start(x: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
    """Starting points: a floor at 0 and at half the smallest y, each with a few exponents; b
    matched at the geometric centre of x."""
    xc = math.exp(float(np.log(x).mean()))
    out = []
    for a in (0.0, 0.5 * float(y.min())):
        for p in (0.1, 0.33, 0.7, 1.5):
            b = max(float(np.interp(xc, x, y)) - a, 1e-12) * xc ** p
            out.append(np.array([a, b, p]))
    return out


def fit_power_floor(x: Sequence[float], y: Sequence[float], start: Sequence[float] | None = None) -> dict:
    """Least-squares fit of y = a + b x^(-p), a >= 0, b >= 0, p in :data:`P_BOUNDS`.

    Residuals are relative, (model - y) / y, so that every decade of x weighs alike; y must be
    positive (a ValueError otherwise; :func:`bootstrap_power_floor` counts and removes the others).
    ``start``: one starting point (a, b, p); default several (:func:`_start`), best kept.
    Returns ``a``, ``b``, ``p``, ``rms_rel`` (root-mean-square relative residual) and ``k``."""
    from scipy.optimize import least_squares

    xs, ys = np.asarray(x, float), np.asarray(y, float)
    order = np.argsort(xs)
    xs, ys = xs[order], ys[order]
    if xs.size < 3 or np.any(ys <= 0) or np.any(xs <= 0) or not np.all(np.isfinite(ys)):
        raise ValueError("fit_power_floor needs three or more points with positive x and y")
    lo, hi = np.array([0.0, 0.0, P_BOUNDS[0]]), np.array([np.inf, np.inf, P_BOUNDS[1]])
    best = None
    for th in ([np.asarray(start, float)] if start is not None else _start(xs, ys)):
        th = np.clip(th, lo, np.where(np.isfinite(hi), hi, th + 1))
        r = least_squares(lambda t: (_model(t, xs) - ys) / ys, th, bounds=(lo, hi), x_scale="jac")
        if best is None or r.cost < best.cost:
            best = r
    a, b, p = (float(v) for v in best.x)
    return {"a": a, "b": b, "p": p, "rms_rel": float(math.sqrt(2 * best.cost / xs.size)), "k": int(xs.size)}


def seed_curves(triples: Iterable) -> tuple[dict, int]:
    """({seed: {x: y}}, count of triples left out: x <= 0 or a non-finite or non-positive y)."""
    by: dict = {}
    dropped = 0
    for s, x, y in triples:
        if x is None or y is None or not x > 0 or not math.isfinite(y) or y <= 0:
            dropped += 1
            continue
        by.setdefault(s, {})[float(x)] = float(y)
    return by, dropped


def _means(curves: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    acc: dict = {}
    for c in curves:
        for x, y in c.items():
            acc.setdefault(x, []).append(y)
    xs = sorted(acc)
    return np.array(xs, float), np.array([float(np.mean(acc[x])) for x in xs])


def bootstrap_power_floor(triples: Iterable, *, resamples: int = 400, level: float = 0.95,
                          seed: int = BOOTSTRAP_SEED) -> dict:
    """:func:`fit_power_floor` on the seed means of ``(seed, x, y)`` triples, with a percentile
    bootstrap over seeds: draw as many seeds as there are, with replacement, average each x over
    the drawn seeds, refit (from the point estimate), and take the ``level`` percentile interval
    of p. Returns the point fit's ``a``, ``b``, ``p``, ``rms_rel``, ``p_ci``, ``a_ci``,
    ``resamples`` (fits that succeeded), ``n_seeds``, ``k`` (distinct x) and ``dropped`` (triples
    left out, :func:`seed_curves`); NaN fields when there are fewer than 3 x or 2 seeds."""
    by, dropped = seed_curves(triples)
    seeds = sorted(by)
    out = {"a": math.nan, "b": math.nan, "p": math.nan, "rms_rel": math.nan, "p_ci": [math.nan, math.nan],
           "a_ci": [math.nan, math.nan], "resamples": 0, "n_seeds": len(seeds), "k": 0, "dropped": dropped,
           "level": level}
    xs, ys = _means([by[s] for s in seeds])
    out["k"] = int(xs.size)
    if xs.size < 3:
        return out
    point = fit_power_floor(xs, ys)
    out.update({k: point[k] for k in ("a", "b", "p", "rms_rel")})
    if len(seeds) < 2:
        return out
    rng = np.random.default_rng(seed)
    ps, as_ = [], []
    for _ in range(resamples):
        pick = rng.integers(0, len(seeds), len(seeds))
        bx, bm = _means([by[seeds[i]] for i in pick])
        if bx.size < 3:
            continue
        f = fit_power_floor(bx, bm, start=(point["a"], point["b"], point["p"]))
        ps.append(f["p"])
        as_.append(f["a"])
    if ps:
        q = [50 * (1 - level), 50 * (1 + level)]
        out.update(p_ci=[float(v) for v in np.percentile(ps, q)], a_ci=[float(v) for v in np.percentile(as_, q)],
                   resamples=len(ps))
    return out
