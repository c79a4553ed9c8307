"""The fixed-law replicate of the ``estimation`` section of ``latentdit rates``: its tasks and its place in
the plan."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import torch

from latentdit.experiments.rates import config_key, plan_for, tasks
from latentdit.experiments.rates.plan import Budget
from latentdit.experiments.rates.preregistration import PLAN_VERSION, plan_markdown
from latentdit.experiments.rates.rows import plan_from_rows


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
    assert PLAN_VERSION == 3 and f"version {PLAN_VERSION}" in md and "- **v3.**" in md
    assert "### `estimation_fixed_law` (Thm 3.2)" in md and "fixed_law = FixedLaw(law_seed=0" in md
    assert "law ('random'" in md and "law_seed" in md
    old = asdict(plan_for("quick"))
    del old["estimation"]["fixed_law"]
    back = plan_from_rows([{"section": "plan", "plan": "quick", "spec": json.loads(json.dumps(old))}])
    assert back.estimation.fixed_law is None and not _fixed(back)
