"""Slope fits and the four verdict states on synthetic power laws with known exponents."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import t as student_t

from latentdit.experiments.rates.verdicts import VERDICTS, fit_slope, verdict

XS = [500.0, 2000.0, 8000.0, 32000.0]  # 4 points, 1.81 decades


def _points(exponent, seeds=5, noise=0.03, xs=XS, seed=0, c=2.0):
    rng = np.random.default_rng(seed)
    return [(s, x, c * x ** exponent * math.exp(noise * rng.standard_normal())) for s in range(seeds) for x in xs]


def _tilted(exponent, seeds=5, noise=0.01, seed=0, xs=XS):
    """Seed s has exponent ``exponent + 0.05 (s - 2)`` (symmetric, mean ``exponent``) plus small noise:
    the one-sided intervals have half-width about 0.07 and are centred within 0.01 of ``exponent``."""
    rng = np.random.default_rng(seed)
    return [(s, x, 2.0 * x ** (exponent + 0.05 * (s - 2)) * math.exp(noise * rng.standard_normal()))
            for s in range(seeds) for x in xs]


def test_fit_recovers_the_exponent_and_its_interval_covers():
    fit = fit_slope(_points(-0.4))
    assert fit["n_seeds"] == 5 and fit["n_points"] == 4
    assert fit["decades"] == pytest.approx(math.log10(64))
    assert abs(fit["slope"] + 0.4) < 0.03 and fit["ci"][0] < fit["slope"] < fit["ci"][1]
    # closed form: seed s has slope e + 0.05 (s - 2) exactly, so the interval is the t-interval of those
    pts = [(s, x, x ** (-0.4 + 0.05 * (s - 2))) for s in range(5) for x in XS]
    f = fit_slope(pts)
    half = student_t.ppf(0.975, 4) * np.std([0.05 * (s - 2) for s in range(5)], ddof=1) / math.sqrt(5)
    assert f["slope"] == pytest.approx(-0.4, abs=1e-12)
    assert f["ci"] == pytest.approx([-0.4 - half, -0.4 + half], abs=1e-10)
    covered = sum(fit_slope(_points(-0.4, seeds=3, noise=0.1, seed=r))["ci"][0] <= -0.4
                  <= fit_slope(_points(-0.4, seeds=3, noise=0.1, seed=r))["ci"][1] for r in range(150))
    assert 0.88 <= covered / 150 <= 1.0


def test_bad_points_are_dropped():
    pts = _points(0.5, seeds=3) + [(0, 100.0, 0.0), (1, 100.0, float("nan")), (2, 100.0, -1.0)]
    fit = fit_slope(pts)
    assert fit["n_points"] == 4 and abs(fit["slope"] - 0.5) < 0.05 and fit["dropped"] == 3


@pytest.mark.parametrize("true,predicted,bound,state,holds", [
    (-1 / 3, -1 / 3, "upper", "consistent", True),
    (-0.8, -1 / 3, "upper", "faster than the bound", True),
    (0.0, -1 / 3, "upper", "slower over this range", False),
    (0.5, 0.5, "lower", "consistent", True),
    (0.2, 0.5, "lower", "faster than the bound", False),
    (0.9, 0.5, "lower", "slower over this range", True),
])
def test_states_of_synthetic_power_laws(true, predicted, bound, state, holds):
    v = verdict(fit_slope(_tilted(true)), predicted, bound=bound)
    assert v["verdict"] == state and v["holds"] is holds
    assert v["verdict"] in VERDICTS and v["reasons"]
    lo, hi = v["one_sided"]
    assert lo < true < hi or state != "consistent"


def test_one_sided_level_is_used():
    """A mean slope between t_{0.95,4} and t_{0.975,4} standard errors above the prediction: the
    two-sided 95% interval contains the prediction, the one-sided 95% test rejects it."""
    se = 0.05 * math.sqrt(2.5) / math.sqrt(5)  # sd of 0.05 (s - 2), s = 0..4, over sqrt(5)
    k = 0.5 * (student_t.ppf(0.95, 4) + student_t.ppf(0.975, 4))
    pts = [(s, x, x ** (k * se + 0.05 * (s - 2))) for s in range(5) for x in XS]
    fit = fit_slope(pts)
    assert fit["se"] == pytest.approx(se) and fit["ci"][0] < 0 < fit["ci"][1]  # two-sided 95% contains 0
    assert verdict(fit, 0.0)["verdict"] == "slower over this range"  # the one-sided 95% test rejects


def test_each_untestable_rule_fires():
    good = fit_slope(_tilted(-0.4))
    assert verdict(good, -0.4)["verdict"] == "consistent"

    def reasons(v):
        assert v["verdict"] == "untestable" and v["holds"] is None
        return " ".join(v["reasons"])

    assert "converge" in reasons(verdict(good, -0.4, converged=False))
    assert "standard errors" in reasons(verdict(good, -0.4, excess_se_ratio=2.5))
    assert verdict(good, -0.4, excess_se_ratio=3.5)["verdict"] == "consistent"
    three = fit_slope(_tilted(-0.4, xs=[10.0, 100.0, 1000.0]))  # 2 decades but 3 points
    assert "3 distinct x" in reasons(verdict(three, -0.4))
    narrow = fit_slope(_tilted(-0.4, xs=[100.0, 200.0, 400.0, 800.0, 1600.0]))  # 5 points, 1.2 decades
    assert "decades" in reasons(verdict(narrow, -0.4))
    one = fit_slope(_tilted(-0.4, seeds=1))
    assert one["ci"] == [-math.inf, math.inf] and "no interval" in reasons(verdict(one, -0.4))
    # several rules at once are all listed
    v = verdict(narrow, -0.4, converged=False, excess_se_ratio=0.5)
    assert len(v["reasons"]) == 3
    with pytest.raises(ValueError, match="bound="):
        verdict(good, 0.0, bound="equal")


def test_excess_se_ratio_is_the_worst_point():
    from latentdit.experiments.rates.verdicts import excess_se_ratio

    # x = 1: excess 1.0 +- (0.1, 0, -0.1): mean 1, SE 0.1 / sqrt(3) -> 17.3; x = 2: mean 0.1, same SE -> 1.73
    pts = [(s, 1, 1.0 + d) for s, d in enumerate((0.1, 0.0, -0.1))] + \
          [(s, 2, 0.1 + d) for s, d in enumerate((0.1, 0.0, -0.1))]
    assert excess_se_ratio(pts) == pytest.approx(0.1 / (0.1 / math.sqrt(3)))
    assert excess_se_ratio([(0, 1, 0.5)]) is None
    fit = fit_slope(_tilted(-0.4))
    assert verdict(fit, -0.4, excess_se_ratio=excess_se_ratio(pts))["verdict"] == "untestable"
