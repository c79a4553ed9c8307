"""Slope fits and verdicts for the rate claims: what a finite-range measurement can say about an
O-bound.

The paper's bounds read error <= C x^p (up to log factors), with unknown constants and, for
distances between sample sets, a finite-sample floor. A measured log-log slope over one or two
decades of x therefore cannot *violate* such a bound: a slope steeper or shallower than p over the
range measured is evidence about that range only. :func:`verdict` says which of four states the
measurement is in, with one-sided t-tests on the per-seed slopes (:func:`fit_slope`):

- ``faster than the bound``: the slope is significantly below p (the error falls faster, or grows
  slower, than x^p);
- ``slower over this range``: the slope is significantly above p;
- ``consistent``: neither;
- ``untestable``: the measurement cannot decide, with every reason listed: the runs did not
  converge, the excess over the floor is below 3 standard errors, fewer than 4 distinct x, less
  than 1.5 decades of x, or fewer than 2 seeds (no interval).

For an upper bound (slope <= p) the claim fails over the range in the ``slower`` state; for a lower
bound (slope >= p) in the ``faster`` state. ``holds`` records that reading (True / False / None).
"""

from __future__ import annotations

import math

import numpy as np

from latentdit.fits import loglog_slope, seed_curves

VERDICTS = ("consistent", "faster than the bound", "slower over this range", "untestable")
MIN_POINTS = 4
MIN_DECADES = 1.5
MIN_EXCESS_SE = 3.0


def fit_slope(points, level: float = 0.95) -> dict:
    """Per-seed log-log least-squares slopes of (seed, x, y) triples, their mean and t-interval.

    Points with a non-positive or non-finite y cannot enter a log-log fit: they are left out and
    counted (``dropped``); seeds with fewer than two distinct x are skipped. Returns ``slope`` (the mean of the per-seed slopes), ``se`` (their standard error),
    ``df`` (seeds - 1), ``ci`` (the two-sided ``level`` t-interval; +-inf with one seed), ``level``,
    ``seed_slopes``, ``n_seeds``, ``n_points`` (distinct x kept), ``decades`` (log10 max x / min x) and ``dropped``.
    """
    from scipy.stats import t as student_t

    if not 0 < level < 1:
        raise ValueError(f"fit_slope: level={level} must lie in (0, 1)")
    by_seed, dropped = seed_curves(points)
    xs = sorted({x for v in by_seed.values() for x in v})
    decades = math.log10(xs[-1] / xs[0]) if xs else 0.0
    slopes = [loglog_slope(list(v), list(v.values()))[0] for _, v in sorted(by_seed.items()) if len(v) >= 2]
    out = {"slope": math.nan, "se": math.nan, "df": 0, "ci": [math.nan, math.nan], "level": level,
           "seed_slopes": slopes, "n_seeds": len(slopes), "n_points": len(xs), "decades": decades,
           "dropped": dropped}
    if not slopes:
        return out
    m = float(np.mean(slopes))
    out["slope"] = m
    if len(slopes) < 2:
        out["ci"] = [-math.inf, math.inf]
        return out
    se = float(np.std(slopes, ddof=1) / math.sqrt(len(slopes)))
    half = float(student_t.ppf(0.5 + level / 2, len(slopes) - 1)) * se
    out.update(se=se, df=len(slopes) - 1, ci=[m - half, m + half])
    return out


def excess_se_ratio(points) -> float | None:
    """min over x of mean / SE of the excess over the floor, from (seed, x, excess) triples (e.g.
    ``w2_excess`` per configuration): the number :func:`verdict` compares with 3. A curve whose
    excess at some x is within 3 standard errors of zero is at its floor there, and its slope
    measures the floor. None when no x has two finite values."""
    by_x: dict = {}
    for _, x, e in points:
        if e is not None and math.isfinite(e):
            by_x.setdefault(x, []).append(float(e))
    ratios = []
    for v in by_x.values():
        if len(v) < 2:
            continue
        m, se = float(np.mean(v)), float(np.std(v, ddof=1) / math.sqrt(len(v)))
        ratios.append(m / se if se > 0 else (math.inf if m > 0 else -math.inf if m < 0 else 0.0))
    return min(ratios) if ratios else None


def untestable_reasons(fit: dict, *, converged: bool = True, excess_se_ratio: float | None = None) -> list[str]:
    """Every reason why ``fit`` cannot test a rate (empty when it can)."""
    reasons = []
    if not converged:
        reasons.append("the runs did not converge (training budget too small for this sweep)")
    if excess_se_ratio is not None and not excess_se_ratio >= MIN_EXCESS_SE:
        reasons.append(f"the excess over the floor is {excess_se_ratio:.2g} standard errors (< {MIN_EXCESS_SE:g}): "
                       "the measurement is at its floor")
    if fit["n_points"] < MIN_POINTS:
        reasons.append(f"{fit['n_points']} distinct x (< {MIN_POINTS})")
    if fit["decades"] < MIN_DECADES:
        reasons.append(f"x spans {fit['decades']:.2f} decades (< {MIN_DECADES:g})")
    if fit["n_seeds"] < 2 or not math.isfinite(fit.get("se", math.nan)):
        reasons.append(f"{fit['n_seeds']} seed(s) with a slope (< 2): no interval")
    return reasons


def verdict(fit: dict, predicted: float, *, bound: str = "upper", converged: bool = True,
            excess_se_ratio: float | None = None) -> dict:
    """The state of a claimed exponent ``predicted`` given ``fit`` (from :func:`fit_slope`).

    ``bound="upper"``: the claim says slope <= predicted; ``"lower"``: slope >= predicted. Both
    one-sided tests run at the fit's level: the slope is significantly above ``predicted`` when
    slope - t_level se > predicted, below when slope + t_level se < predicted. Returns
    ``verdict`` (one of :data:`VERDICTS`), ``reasons``, ``holds`` and the one-sided bounds used.
    """
    from scipy.stats import t as student_t

    if bound not in ("upper", "lower"):
        raise ValueError(f"verdict: bound={bound!r} must be 'upper' or 'lower'")
    if not math.isfinite(predicted):
        raise ValueError(f"verdict: predicted={predicted} must be finite")
    reasons = untestable_reasons(fit, converged=converged, excess_se_ratio=excess_se_ratio)
    out = {"verdict": "untestable", "reasons": reasons, "holds": None, "bound": bound, "predicted": predicted,
           "one_sided": [math.nan, math.nan]}
    if reasons:
        return out
    level, m, se = fit["level"], fit["slope"], fit["se"]
    q = float(student_t.ppf(level, fit["df"]))
    lo, hi = m - q * se, m + q * se
    out["one_sided"] = [lo, hi]
    pct = f"{100 * level:g}%"
    if lo > predicted:
        state = "slower over this range"
        why = f"one-sided {pct} lower bound on the slope {lo:.3g} > predicted {predicted:.3g}"
    elif hi < predicted:
        state = "faster than the bound"
        why = f"one-sided {pct} upper bound on the slope {hi:.3g} < predicted {predicted:.3g}"
    else:
        state = "consistent"
        why = f"one-sided {pct} bounds [{lo:.3g}, {hi:.3g}] contain predicted {predicted:.3g}"
    fails = "slower over this range" if bound == "upper" else "faster than the bound"
    out.update(verdict=state, holds=state != fails,
               reasons=[why + f" ({fit['n_seeds']} seeds, {fit['n_points']} points, {fit['decades']:.2f} decades)"])
    if state == fails:
        out["reasons"].append("over the measured range only: an O-bound with constants, log factors and floors "
                              "can still hold at larger x")
    return out


def power_verdict(fit: dict, predicted_p: float, *, x_decades: float, converged: bool = True) -> dict:
    """The state of a claimed decay exponent for the model y = a + b x^-p (a floor a, fitted by
    :func:`latentdit.fits.bootstrap_power_floor`): the bound error <= C x^-predicted_p above a floor
    holds unless the bootstrap interval of p lies entirely below ``predicted_p``.

    States as :func:`verdict`: *slower over this range* (interval below: ``holds`` False), *faster
    than the bound* (interval above), *consistent*; *untestable* with the reasons (not converged,
    fewer than :data:`MIN_POINTS` x, fewer than :data:`MIN_DECADES` decades, no interval)."""
    reasons = []
    if not converged:
        reasons.append("the runs did not converge (training budget too small for this sweep)")
    if fit["k"] < MIN_POINTS:
        reasons.append(f"{fit['k']} distinct x (< {MIN_POINTS})")
    if x_decades < MIN_DECADES:
        reasons.append(f"x spans {x_decades:.2f} decades (< {MIN_DECADES:g})")
    lo, hi = fit["p_ci"]
    if not (math.isfinite(lo) and math.isfinite(hi)):
        reasons.append(f"{fit['n_seeds']} seed(s): no bootstrap interval")
    if fit.get("dropped"):
        reasons.append(f"{fit['dropped']} point(s) with y <= 0 or not finite left out of the fit")
    out = {"verdict": "untestable", "holds": None, "reasons": reasons}
    if any(not r.endswith("left out of the fit") for r in reasons):
        return out
    ci = f"p = {fit['p']:.3g}, {100 * fit['level']:g}% bootstrap interval [{lo:.3g}, {hi:.3g}]"
    if hi < predicted_p:
        out.update(verdict="slower over this range", holds=False,
                   reasons=[f"{ci} below predicted {predicted_p:.3g}", "over the measured range only"] + reasons)
    elif lo > predicted_p:
        out.update(verdict="faster than the bound", holds=True,
                   reasons=[f"{ci} above predicted {predicted_p:.3g}"] + reasons)
    else:
        out.update(verdict="consistent", holds=True, reasons=[f"{ci} contains predicted {predicted_p:.3g}"] + reasons)
    return out
