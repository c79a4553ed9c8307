"""The fixed-law replicate of the ``estimation`` section of ``latentdit rates``: its tasks, its place in
the plan, the spread comparison in closed form and its report section from rows alone."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace

import pytest
import torch

from latentdit.experiments.rates import config_key, main, plan_for, tasks
from latentdit.experiments.rates.fixed_law import fixed_law_headline, spread_comparison
from latentdit.experiments.rates.headline import estimation_D_ratio
from latentdit.experiments.rates.plan import Budget, only_sections
from latentdit.experiments.rates.preregistration import PLAN_VERSION, plan_markdown
from latentdit.experiments.rates.rows import plan_from_rows, plan_row, with_defaults, write_rows


def _fixed(plan) -> list[dict]:
    return [t for t in tasks(plan) if t.get("law") == "fixed"]


def test_replicates_draw_one_law_and_their_own_data_initialisation_and_sgd_noise():
    """At one n every replicate builds the same law (weights, means, covariances and subspace B equal),
    draws different points and trains from a different seed (initialisation, held-out split, SGD noise);
    the random-law tasks of the same point draw different laws. Each replicate's points are nested in n."""
    from latentdit.experiments.rates.paper_tasks import estimation_config, estimation_data
    from latentdit.experiments.rates.run import build_law

    plan = plan_for("quick")
    fix = _fixed(plan)
    n = min(t["n"] for t in fix)
    at_n = sorted((t for t in fix if t["n"] == n), key=lambda t: t["seed"])
    assert len(at_n) == len(plan.estimation.fixed_law.replicates) >= 2
    laws = [build_law(t) for t in at_n]
    fields = ("weights", "means", "eigvecs", "eigvals", "B")
    for law in laws[1:]:
        assert all(torch.equal(getattr(law, k), getattr(laws[0], k)) for k in fields)
    data = [estimation_data(t, law, Budget(**t["budget"]))[1] for t, law in zip(at_n, laws)]
    assert all(x.shape == (n, at_n[0]["D"]) for x in data)
    assert not torch.equal(data[0], data[1])
    assert len({estimation_config(t).train.seed for t in at_n}) == len(at_n)
    rnd = [t for t in tasks(plan) if t["section"] == "estimation" and t.get("law") is None and t["n"] == n
           and (t["D"], t["d0"], t["stop"]) == (at_n[0]["D"], at_n[0]["d0"], "heldout")]
    assert len(rnd) >= 2 and not torch.equal(build_law(rnd[0]).means, build_law(rnd[1]).means)
    big = next(t for t in fix if t["seed"] == at_n[0]["seed"] and t["n"] > n)
    assert torch.equal(data[0], estimation_data(big, build_law(big), Budget(**big["budget"]))[1][:n])


def test_the_plan_lists_the_fixed_law_with_keys_of_its_own():
    """Full: D = 32, d0 = 4, the estimation n grid, held-out selection, 3 replicates apart from the
    random-law seeds; quick: 2 replicates at 2 n. The other tasks keep their keys; the fixed-law keys
    are new; the plan file documents the entry, the grid, the row fields and version 3. A plan line
    from before the fixed law (no field) rebuilds a plan without it."""
    for mode, reps, k in (("full", 3, 5), ("quick", 2, 2)):
        plan = plan_for(mode)
        f, est = plan.estimation.fixed_law, plan.estimation
        fix = _fixed(plan)
        assert len(fix) == reps * k and {t["seed"] for t in fix} == set(f.replicates)
        assert not set(f.replicates) & set(est.seeds)
        assert {(t["D"], t["d0"], t["stop"], t["weighting"], t["law_seed"]) for t in fix} == {(32, 4, "heldout", "none",
                                                                                              f.law_seed)}
        assert {t["n"] for t in fix} == set(f.n_values) <= set(est.n_values)
        without = {config_key(t) for t in tasks(replace(plan, estimation=replace(est, fixed_law=None)))}
        keys = {config_key(t) for t in tasks(plan)}
        assert without <= keys and keys - without == {config_key(t) for t in fix}
    assert plan_for("full").estimation.fixed_law.n_values == plan_for("full").estimation.n_values
    md = plan_markdown()
    assert PLAN_VERSION >= 3 and f"version {PLAN_VERSION}" in md and "- **v3.**" in md
    assert "### `estimation_fixed_law` (Thm 3.2)" in md and "fixed_law = FixedLaw(law_seed=0" in md
    assert "law ('random'" in md and "law_seed" in md
    old = asdict(plan_for("quick"))
    del old["estimation"]["fixed_law"]
    back = plan_from_rows([{"section": "plan", "plan": "quick", "spec": json.loads(json.dumps(old))}])
    assert back.estimation.fixed_law is None and not _fixed(back)


NS = (64, 256, 1024, 4096)


def _rows(D_values=(32,)) -> list[dict]:
    """Random-law seeds s = 0, 1, 2: score_integral = (1 + 0.3 (s - 1)) (0.05 + n^-1/2); replicates
    r = 10, 11, 12 of law seed 0: (1 + 0.02 (r - 11)) (0.02 + n^-0.4). At each n the seed SD is
    0.3 (0.05 + n^-1/2), the replicate SD 0.02 (0.02 + n^-0.4)."""
    rows = []
    for n in NS:
        for D in D_values:
            for s in (0, 1, 2):
                rows.append({"section": "estimation", "stop": "heldout", "weighting": "none", "D": D, "d0": 4, "n": n,
                             "seed": s, "score_integral": (1 + 0.3 * (s - 1)) * (0.05 + n ** -0.5),
                             "stop_reason": "plateau"})
        for r in (10, 11, 12):
            rows.append({"section": "estimation", "stop": "heldout", "weighting": "none", "D": 32, "d0": 4, "n": n,
                         "seed": r, "law": "fixed", "law_seed": 0, "stop_reason": "plateau",
                         "score_integral": (1 + 0.02 * (r - 11)) * (0.02 + n ** -0.4)})
    return rows


def test_spread_comparison_and_exponents_in_closed_form():
    """Per n: the two SDs, their ratio, the law share 1 - ratio^-2 and F = ratio^2 with its F(2, 2)
    tail; p = 0.4 on the replicates and 0.5 on the random laws (the floor model is exact); the
    random-law keys and entries do not read the replicates."""
    from scipy.stats import f as f_dist

    from latentdit.experiments.rates.headline import sample_complexity_exponent

    rows = _rows((32, 512))
    rnd = [r for r in rows if "law" not in r and r["D"] == 32]
    pts = spread_comparison(rnd, [r for r in rows if r.get("law") == "fixed"])
    assert [p["n"] for p in pts] == list(NS)
    for p in pts:
        sr, sf = 0.3 * (0.05 + p["n"] ** -0.5), 0.02 * (0.02 + p["n"] ** -0.4)
        assert p["random_sd"] == pytest.approx(sr, rel=1e-9) and p["fixed_sd"] == pytest.approx(sf, rel=1e-9)
        assert p["sd_ratio"] == pytest.approx(sr / sf, rel=1e-9) and p["law_share"] == pytest.approx(1 - (sf / sr) ** 2)
        F = (sr / sf) ** 2
        assert p["F"] == pytest.approx(F) and p["p_value"] == pytest.approx(f_dist.sf(F, 2, 2))
        assert (p["random_seeds"], p["replicates"]) == (3, 3)
    h = fixed_law_headline(rows)
    e, s = h["fixed_law_exponent"], h["fixed_law_spread"]
    assert e["status"] == "measured" and e["p"] == pytest.approx(0.4, abs=1e-3) and e["holds"] is True
    assert e["random_law"]["p"] == pytest.approx(0.5, abs=1e-3) and e["n_seeds"] == 3
    assert s["points"] == pts and s["replicates"] == [10, 11, 12] and s["random_seeds"] == [0, 1, 2]
    assert sample_complexity_exponent(rows)["p"] == pytest.approx(0.5, abs=1e-3)
    assert all(p["seeds"] == [0, 1, 2] for p in estimation_D_ratio(rows)["points"])
    assert fixed_law_headline([r for r in rows if "law" not in r]) == {
        "fixed_law_exponent": {"status": "absent"}, "fixed_law_spread": {"status": "absent"}}


def test_report_only_renders_the_fixed_law_section(tmp_path):
    """``--report-only`` on a rows file of an estimation-only plan: the fixed-law entry right after the
    random-law entry of its D and d0, its spread columns, and both summary keys measured."""
    plan = only_sections(plan_for("quick"), ["estimation"])
    est = plan.estimation
    plan = replace(plan, estimation=replace(est, D_values=(32,), d0_values=(4,), n_values=NS, seeds=(0, 1, 2),
                                            fixed_law=replace(est.fixed_law, replicates=(10, 11, 12), n_values=NS)))
    write_rows(tmp_path / "rows.csv", [with_defaults(r, plan.name) for r in [plan_row(plan), *_rows()]])
    assert main(["--out", str(tmp_path), "--report-only"]) == 0
    text = (tmp_path / "report.md").read_text()
    head = "### Estimation on one fixed law (D = 32, d0 = 4, law seed 0)"
    assert head in text and text.index("### Estimation with a learned W_B (D = 32, d0 = 4)") < text.index(head)
    assert "| n | mean | SE | random laws (seed mean) | fixed law (replicate mean) | random-law seed SD |" in text
    assert "(estimation_fixed_law_D32_d0_4.png)" in text
    assert "- `fixed_law_spread`: D = 32, d0 = 4, law seed 0: n = 64" in text
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["fixed_law_exponent"]["status"] == "measured" and summary["fixed_law_spread"]["status"] == "measured"
    assert summary["fixed_law_exponent"]["p"] == pytest.approx(0.4, abs=1e-3)
    assert summary["claims"]["estimation_fixed_law_D32_d0_4"]["kind"] == "claim"
    assert math.isfinite(summary["claims"]["estimation_fixed_law_D32_d0_4"]["power_fit"]["p"])
