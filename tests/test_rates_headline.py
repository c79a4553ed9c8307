"""The version-2 headline keys, the per-curve convergence rule and the classification of every
entry, on rows with known closed-form values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from latentdit.experiments.rates import analyse, plan_for
from latentdit.experiments.rates.headline import (approximation_slope_d0, curve_converged, estimation_D_ratio, headline,
                                                  sample_complexity_exponent)
from latentdit.experiments.rates.preregistration import ENTRIES, describe, plan_markdown
from tests.test_rates import synthetic_rows

NS = [8, 32, 128, 512, 2048]


def _learned(D_factor=1.0, p=0.5, seeds=range(6)):
    """score_integral = (0.05 + n^-p) g_s, g_s a seed factor; at D = 2048 times D_factor."""
    rows = []
    for s in seeds:
        g = 1.0 + 0.05 * (s - 2.5)
        for D, f in ((32, 1.0), (2048, D_factor)):
            for n in NS:
                rows.append({"section": "estimation", "stop": "heldout", "weighting": "none", "seed": s, "D": D, "d0": 4, "n": n,
                             "score_integral": f * g * (0.05 + n ** -p), "w2_excess": g * n ** -0.3,
                             "stop_reason": "patience"})
    return rows


def test_absent_without_rows():
    h = headline([])
    assert all(v == {"status": "absent"} for v in h.values())
    assert estimation_D_ratio(_learned()[:5]) == {"status": "absent"}  # one D only


def test_D_ratio_is_the_ratio_of_seed_means_and_its_interval():
    same = estimation_D_ratio(_learned(1.0))
    assert same["status"] == "measured" and same["D"] == [32, 2048] and not same["parted_at"]
    for p in same["points"]:
        assert p["ratio"] == pytest.approx(1.0, abs=1e-12) and p["ci"][0] <= 1.0 <= p["ci"][1]
    apart = estimation_D_ratio(_learned(1.3))
    assert all(p["ratio"] == pytest.approx(1.3, rel=1e-12) for p in apart["points"])
    assert len(apart["parted_at"]) == len(NS)  # a constant factor: the intervals collapse on 1.3


def test_d0_collapse_compares_equal_n_over_d0():
    """score_integral = d0 f(n / d0) g_s collapses exactly (ratio 1 at every shared n / d0); a factor
    1.5 at d0 = 8 parts the curves at every shared point."""
    from latentdit.experiments.rates.headline import estimation_d0_collapse

    def rows(k8):
        return [{"section": "estimation", "stop": "heldout", "seed": s, "D": 32, "d0": d0, "n": n,
                 "score_integral": (k8 if d0 == 8 else 1.0) * d0 * (1 + 0.1 * s) * (n / d0) ** -0.5}
                for s in range(4) for d0 in (2, 8) for n in (16, 64, 256)]
    same = estimation_d0_collapse(rows(1.0))
    assert {p["n_over_d0"] for p in same["points"]} == {8.0, 32.0} and not same["parted_at"]
    assert all(p["ratio"] == pytest.approx(1.0, abs=1e-12) for p in same["points"])
    apart = estimation_d0_collapse(rows(1.5))
    assert len(apart["parted_at"]) == 2 and apart["points"][0]["ratio"] == pytest.approx(1.5)
    assert estimation_d0_collapse([]) == {"status": "absent"}


def test_sample_complexity_exponent_from_the_learned_rows():
    f = sample_complexity_exponent(_learned(p=0.5))
    assert f["status"] == "measured" and "learned W_B, D = 32" in f["source"]
    assert f["p"] == pytest.approx(0.5, abs=1e-3) and f["p_ci"][0] <= 0.5 <= f["p_ci"][1] and f["holds"] is True
    slow = sample_complexity_exponent(_learned(p=0.2))
    assert slow["p"] == pytest.approx(0.2, abs=1e-3) and slow["holds"] is False


def test_headline_holds_only_on_converged_curves():
    """Plan v4: one run at its step cap makes the learned curve's headline untestable (holds None),
    and the D ratio and the d0 collapse name only the d0 whose curves all stopped before the cap."""
    from latentdit.experiments.rates.headline import estimation_d0_collapse

    rows = _learned(p=0.5)
    capped = [dict(r) for r in rows]
    capped[0]["stop_reason"] = "step cap"  # D = 32, d0 = 4, seed 0, smallest n
    f = sample_complexity_exponent(capped)
    assert f["holds"] is None and not f["convergence"]["converged"] and f["p"] == pytest.approx(0.5, abs=1e-3)
    assert sample_complexity_exponent(rows)["convergence"]["converged"]
    assert estimation_D_ratio(rows)["converged_d0"] == [4] and estimation_D_ratio(rows)["holds"] is True
    assert estimation_D_ratio(_learned(1.3))["holds"] is False
    r = estimation_D_ratio(capped)
    assert r["converged_d0"] == [] and r["holds"] is None
    two = rows + [{**r, "d0": 8, "n": 2 * r["n"], "score_integral": 2 * r["score_integral"]} for r in rows]
    c = estimation_d0_collapse(two)
    assert c["converged_d0"] == [4, 8] and c["holds"] is True  # d0 (0.05 + (n / d0)^-1/2) up to the seed factor
    c = estimation_d0_collapse(capped + [{**r, "d0": 8, "n": 2 * r["n"], "score_integral": 2 * r["score_integral"]}
                                         for r in rows])
    assert c["converged_d0"] == [8] and c["holds"] is None


def test_v4_grids_span_the_decades_their_verdicts_ask():
    """The full plan's fstar d0 grid spans >= 1.5 decades in >= 4 points with its d0 curve inside the
    capacity sweep; the ERM runs are at d0 = 4 only; the estimation cap is 8,000 steps."""
    from latentdit.experiments.rates.plan import tasks
    from latentdit.experiments.rates.verdicts import MIN_DECADES, MIN_POINTS

    plan = plan_for("full")
    f = plan.fstar
    assert math.log10(max(f.d0_values) / min(f.d0_values)) >= MIN_DECADES and len(f.d0_values) >= MIN_POINTS
    assert [f.d0_width(d) for d in (2, 4, 16, 64)] == [12, 16, 32, 64]
    todo = tasks(plan)
    for d0 in f.d0_values:
        assert f.d0_width(d0) in {t["width"] for t in todo if t["section"] == "fstar" and t["d0"] == d0}
    est = [t for t in todo if t["section"] == "estimation"]
    assert {t["d0"] for t in est if t["stop"] == "erm"} == {4}
    assert {t["d0"] for t in est if t["stop"] == "heldout"} == {2, 4, 8}
    assert {t["budget"]["max_steps"] for t in est} == {8000}


class _Fstar:
    """A plan section with the d0 curve width = 8 sqrt(d0 / 4)."""

    @staticmethod
    def d0_width(d0: int) -> int:
        return int(round(8 * (d0 / 4) ** 0.5))


def _fstar_rows(shift_2x=0.0):
    """eps_hat sqrt(d0) = 0.1 d0^(0.3 + 0.02 (s - 1)) on the d0 curve (per-seed slopes 0.28, 0.30,
    0.32); off the curve (width 99) a value that would change the slope; eps_hat_2x shifted."""
    rows = []
    for s in range(3):
        for d0 in (4, 16, 64, 256):
            e = 0.1 * d0 ** (0.3 + 0.02 * (s - 1)) / math.sqrt(d0)
            for w, v in ((_Fstar.d0_width(d0), e), (99, 5.0 * e * d0)):
                rows.append({"section": "fstar", "seed": s, "D": 512, "d0": d0, "width": w, "params": 10 * w * w, "eps_hat": v,
                             "score_uniform": v, "eps_hat_2x": v + shift_2x, "eps_hat_F0": 1.0, "norm_W_OV": 2.0})
    return rows


def test_approximation_slope_d0_of_a_known_power():
    from types import SimpleNamespace

    plan = SimpleNamespace(fstar=_Fstar())
    a = approximation_slope_d0(_fstar_rows(), plan)
    assert a["slope"] == pytest.approx(0.3, abs=1e-12) and a["verdict"] == "faster than the bound" and a["holds"]
    assert approximation_slope_d0(_fstar_rows()) == {"status": "absent"}  # no plan section: no d0 curve
    c = analyse(_fstar_rows(), SimpleNamespace(fstar=_Fstar(), sample=None, approx=None, blocks=None, t0=None,
                                               encoder=None, budget=SimpleNamespace(eval_samples=100)))["claims"]
    assert c["approximation_fstar"]["slope"] == pytest.approx(0.3, abs=1e-12)
    assert c["approximation_fstar"]["convergence"]["converged"] is True  # eps_hat_2x equal: no change
    assert c["fstar_capacity_d0_4"]["kind"] == "check" and c["fstar_capacity_d0_4"]["columns"]["norm_W_OV"]
    moved = analyse(_fstar_rows(shift_2x=1.0), SimpleNamespace(
        fstar=_Fstar(), sample=None, approx=None, blocks=None, t0=None, encoder=None,
        budget=SimpleNamespace(eval_samples=100)))["claims"]["approximation_fstar"]
    assert moved["convergence"]["converged"] is False and moved["verdict"] == "untestable"


def test_convergence_by_doubled_budget_and_by_stop_reason():
    """Base curve at x = 1 with seed values 1.0, 1.2, 1.4 (SE 0.1155): a doubled twin moving the
    mean by 0.1 converges, by 0.2 does not; without twins a run at its step cap fails the curve."""
    base = [{"seed": s, "x": 1, "y": v, "stop_reason": "patience"} for s, v in enumerate((1.0, 1.2, 1.4))]
    se = np.std([1.0, 1.2, 1.4], ddof=1) / math.sqrt(3)
    for shift, ok in ((0.1, True), (0.2, False)):
        twin = [{**r, "y": r["y"] - shift, "budget_scale": 2} for r in base]
        c = curve_converged(base, twin, lambda r: r["x"], lambda r: r["y"])
        assert c["converged"] is ok and c["rule"] == "doubled budget"
        assert f"{shift / se:.2g}" in c["detail"]
    capped = base[:2] + [{**base[2], "stop_reason": "step cap"}]
    c = curve_converged(capped, [], lambda r: r["x"], lambda r: r["y"])
    assert c == {"converged": False, "rule": "stop reason", "detail": "1 of 3 runs reached the step cap"}


def test_every_entry_is_classified_with_its_failure_line():
    """Every entry analyse produces is in the registry; claims say how they could fail, the
    by-construction entries of v1 are checks or diagnostics, holds is stored, and the v2 entries
    appear when their rows exist."""
    plan = plan_for("quick")
    c = analyse(synthetic_rows(plan) + _learned(), plan)["claims"]
    assert {"estimation_learned_D32_d0_4", "estimation_learned_D2048_d0_4", "distribution_recovery_D32_d0_4"} <= set(c)
    for k, e in c.items():
        assert describe(k) is not None and "NOT PRE-REGISTERED" not in e["failure"], k
        assert e["kind"] in ("claim", "check", "diagnostic") and "holds" in e
    assert c["t0_tradeoff"]["kind"] == "diagnostic" and c["t0_tradeoff"]["verdict"] == "reported"
    assert c["learned_encoder_vs_steps"]["kind"] == "diagnostic"
    assert c["d0_scaling_blocks"]["kind"] == "check" and c["d0_scaling_blocks"]["verdict"] in ("passes", "untestable")
    assert c["approximation_dit_d0_4"]["kind"] == "check" and c["d0_scaling_coupled"]["kind"] == "claim"
    e = c["estimation_learned_D32_d0_4"]
    assert e["power_fit"]["p"] == pytest.approx(0.5, abs=1e-3) and e["verdict"] == "faster than the bound"
    md = plan_markdown()
    assert all(f"`{k}`" in md for k in ENTRIES) and "How it could fail other than by optimisation" in md


def test_committed_plan_file_is_the_registry():
    """docs/rates/plan.md is what ``latentdit rates --write-plan`` writes from the code: a change of
    the plan without a regenerated plan file (and hence a new plan commit) fails here."""
    from pathlib import Path

    committed = Path(__file__).resolve().parents[1] / "docs" / "rates" / "plan.md"
    assert committed.read_text() == plan_markdown() + "\n", "regenerate: latentdit rates --out docs/rates --write-plan"
