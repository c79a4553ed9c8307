"""`latentdit rates`: plans, the resumable store and sweep, the analysis against known exponents,
and the micro plan end to end through the library's Trainer."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from latentdit.experiments import rates
from latentdit.experiments.rates import RateStore, analyse, config_key, plan_for, run_rates, run_sweep, tasks
from latentdit.experiments.rates.run import build_law, task_data


def test_plans_cover_every_section_with_the_documented_sizes():
    for mode in ("micro", "quick", "full"):
        plan = plan_for(mode)
        ts = tasks(plan)
        assert len({config_key(t) for t in ts}) == len(ts)
        assert {t["section"] for t in ts} == set(rates.SECTIONS), mode
        assert len(plan.seeds) >= 2
    full = plan_for("full")
    assert len(full.seeds) == 5
    ns = full.sample.n_values
    assert {64, 256, 1024, 4096, 16384} <= set(ns) and 4 in full.sample.d0_values
    assert math.log10(1024 / min(ns)) >= 1.5  # 1.5 decades below the n where the excess reaches its floor
    assert set(full.approx.d0_values) >= {4, 16} and full.approx.D_values == (32, 2048)
    assert full.approx.depths == (1, 2, 4, 8) and set(full.approx.blocks) == {"dit", "paper"}
    T0s = full.t0.T0_values
    assert len(T0s) >= 7 and min(T0s) == 1e-4 and max(T0s) == 1e-1
    d0s = [b * full.blocks.block_dim for b in full.blocks.blocks]
    assert math.log10(max(d0s) / min(d0s)) >= 1.5 and len(d0s) >= 4
    # n = infinity (n = 0) is part of every sample sweep
    assert {t["n"] for t in tasks(full) if t["section"] == "sample"} == {0, *full.sample.n_values}
    with pytest.raises(ValueError, match="unknown mode"):
        plan_for("huge")


def test_a_section_budget_caps_its_tasks_and_keeps_the_plans_evaluation_sizes():
    from dataclasses import replace

    from latentdit.experiments.rates.plan import section_budget

    plan = plan_for("micro")
    own = replace(plan.budget, max_steps=5, eval_samples=7, score_points=3)
    plan = replace(plan, approx=replace(plan.approx, budget=own))
    assert section_budget(plan, "approx").max_steps == 5 and section_budget(plan, "sample") == plan.budget
    for t in tasks(plan):
        b = t["budget"]
        assert b["max_steps"] == (5 if t["section"] == "approx" else plan.budget.max_steps), t["section"]
        # the floors of every section come from one evaluation size
        assert (b["eval_samples"], b["score_points"]) == (plan.budget.eval_samples, plan.budget.score_points)
    # tasks differ with their budget, so a changed section budget is a new configuration in the store
    old = {config_key(t) for t in tasks(plan_for("micro")) if t["section"] == "approx"}
    assert old.isdisjoint(config_key(t) for t in tasks(plan) if t["section"] == "approx")


def test_a_section_can_run_its_own_seeds():
    from dataclasses import replace

    from latentdit.experiments.rates.plan import section_seeds

    plan = plan_for("micro")
    plan = replace(plan, seeds=(0, 1, 2), blocks=replace(plan.blocks, seeds=(5, 6)))
    assert section_seeds(plan, "blocks") == (5, 6) and section_seeds(plan, "sample") == (0, 1, 2)
    by = {}
    for t in tasks(plan):  # the fixed-law replicate runs its own replicate seeds
        by.setdefault(t["section"] + ("/fixed" if t.get("law") == "fixed" else ""), set()).add(t["seed"])
    assert by.pop("estimation/fixed") == set(plan.estimation.fixed_law.replicates)
    assert by.pop("blocks") == {5, 6} and all(v == {0, 1, 2} for v in by.values())
    full = plan_for("full")  # >= 5 seeds for the sample-complexity claim, at least 2 (an interval) everywhere
    assert len(section_seeds(full, "sample")) >= 5 and all(len(section_seeds(full, s)) >= 2 for s in rates.SECTIONS)
    # the capacity sweep's larger D runs only the paired seeds, the first D every seed of the section
    approx = {D: {t["seed"] for t in tasks(full) if t["section"] == "approx" and t["D"] == D} for D in (32, 2048)}
    assert approx == {32: {0, 1, 2}, 2048: {0}}


@pytest.mark.slow
def test_task_data_nested_subsets_and_shared_held_out_points():
    """Finite n are prefixes of one seeded draw; every n of a seed validates on the same held-out
    points, never training points; n = 0 trains on fresh draws from the law."""
    plan = plan_for("micro")
    ts = {t["n"]: t for t in tasks(plan) if t["section"] == "sample" and t["seed"] == 1}
    datas = {n: task_data(t, build_law(t), plan.budget) for n, t in ts.items()}
    small, big = datas[16][0], datas[64][0]
    assert torch.equal(small.x, big.x[:16]) and small.sampler is None
    assert all(torch.equal(d.val_x, small.val_x) for d, _ in datas.values())
    assert torch.cdist(small.val_x.double(), big.x.double()).min() > 1e-6
    inf = datas[0][0]
    assert inf.sampler is not None and datas[0][1] is None
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(inf.sampler(5, g1), inf.sampler(5, g2))
    law = build_law(ts[16])
    assert float((small.basis.double() @ small.basis.double().T - law.B @ law.B.T).norm()) < 1e-4
    assert all(torch.equal(d.basis, small.basis) for d, _ in datas.values())  # one basis for every n


def _fake(task, threads):
    return {"value": float(task["n"])}


def test_store_skips_finished_and_reruns_unfinished(tmp_path):
    todo = [{"section": "sample", "D": 8, "d0": 2, "n": n, "T0": 0.01, "seed": 0} for n in (10, 20, 30)]
    store = RateStore(tmp_path / "r.sqlite")
    store.record(todo[0], {"value": 10.0}, 0.1)  # finished before the driver was killed
    store.mark_running(todo[1])  # running when it was killed
    store.close()
    store = RateStore(tmp_path / "r.sqlite")
    assert store.status(todo[0]) == "done" and store.status(todo[1]) == "running"
    counts = run_sweep(store, todo, out=tmp_path, runner=_fake, progress=False)
    assert counts == {"skipped": 1, "ran": 2, "failed": 0}
    assert sorted(r["value"] for r in store.results()) == [10.0, 20.0, 30.0]
    assert "run_dir" not in store.results()[0]  # the store keys tasks, not paths
    assert run_sweep(store, todo, out=tmp_path, runner=_fake, progress=False)["ran"] == 0
    store.close()


def _boom(task, threads):
    raise RuntimeError("boom")


def test_failed_task_is_recorded_and_retried(tmp_path):
    store = RateStore(tmp_path / "r.sqlite")
    t = {"section": "sample", "D": 8, "d0": 2, "n": 10, "T0": 0.01, "seed": 0}
    assert run_sweep(store, [t], out=tmp_path, runner=_boom, progress=False)["failed"] == 1
    assert store.status(t) == "failed" and "boom" in store.failures()[0][1]
    assert run_sweep(store, [t], out=tmp_path, runner=_fake, progress=False)["ran"] == 1
    store.close()


def synthetic_rows(plan, tilt=0.02):
    """Rows with known power laws; seed s tilts each exponent by tilt (s - mean seed)."""
    rows, ms = [], float(np.mean(plan.seeds))
    base = {"converged": True, "off_subspace_var": 1.0, "off_subspace_var_expected": 1.0, "subspace_error": 1e-9,
            "subspace_error_pca_n": 1e-9,
            "score_t": [1.0], "score_mse": [1.0]}
    for t in tasks(plan):
        s, e = t["seed"], tilt * (t["seed"] - ms)
        r = {**t, **base}
        if t["section"] == "sample":
            excess = 0.0 if t["n"] == 0 else 2.0 * t["n"] ** (-0.5 + e)
            r.update(population_loss=1.0 + 0.1 * s + excess, score_integral=0.3 + 0.01 * s + excess / 2,
                     score_uniform=0.1)
        elif t["section"] == "approx":
            p = 10 * t["depth"] * t.get("width", 3)
            r.update(params=p, score_uniform=0.1 * p ** (-0.2 + e) * (1.1 if t["D"] == max(plan.approx.D_values) else 1))
        elif t["section"] == "blocks":
            r.update(score_uniform=0.2 * t["d0"] ** (0.3 + e) / math.sqrt(t["d0"]))
        elif t["section"] == "t0":
            r.update(score_integral=t["T0"] ** (-0.5 + e))
        elif t["section"] == "encoder":
            steps = [100, 200, 400, 800]
            r.update(score_uniform=0.1, curve_steps=steps, curve_subspace_error=[st ** (-1.0 + e) for st in steps])
        elif t["section"] == "encoder_noisy":
            r.update(subspace_error=t["n"] ** (-0.4 + e), subspace_error_pca=t["n"] ** -1.0)
            del r["off_subspace_var"]
        elif t["section"] == "fstar":  # every fstar row carries its capacity and eps_hat (paper_tasks)
            p = 10 * t["depth"] * t["width"]
            r.update(params=p, eps_hat=0.1 * p ** (-0.2 + e), eps_hat_2x=0.1 * p ** (-0.2 + e), score_uniform=0.1)
        else:
            r.update(score_uniform=0.1 * (1 + 0.01 * s))
        rows.append(r)
    return rows


def test_analysis_reports_known_exponents():
    """Constructed rows with known exponents: each claim's slope, its interval (closed-form
    t-interval of the per-seed slopes), the verdict, the excess over n = inf and the D mismatch."""
    from scipy.stats import t as student_t

    plan = plan_for("quick")
    a = analyse(synthetic_rows(plan), plan)
    c, top = a["claims"], a["top"]
    n = len(plan.seeds)
    sd = 0.02 * float(np.std(plan.seeds, ddof=1))
    half = student_t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    e = c["sample_complexity_d0_4"]
    assert e["kind"] == "claim" and e["slope"] == pytest.approx(-0.5, abs=1e-9)
    assert e["ci"] == pytest.approx([-0.5 - half, -0.5 + half], abs=1e-9)
    assert e["verdict"] == "faster than the bound" and top["sample_complexity_slope_d0_4"] == e["slope"]
    assert c["population_loss_vs_n_d0_4"]["slope"] == pytest.approx(-0.5, abs=1e-9)
    assert c["approximation_dit_d0_4"]["slope"] == pytest.approx(-0.2, abs=1e-9)
    assert top["capacity_D_mismatch_max"] == pytest.approx(0.1 / 1.05, rel=1e-9)
    assert c["d0_scaling_blocks"]["slope"] == pytest.approx(0.3, abs=1e-9)
    assert c["t0_tradeoff"]["slope"] == pytest.approx(-0.5, abs=1e-9) and c["t0_tradeoff"]["bound"] == "lower"
    assert c["learned_encoder_vs_steps"]["slope"] == pytest.approx(-1.0, abs=1e-9)
    assert c["learned_subspace_vs_n"]["slope"] == pytest.approx(-0.4, abs=1e-9)
    assert c["learned_subspace_vs_n"]["reference"]["PCA"][0][1] == pytest.approx(1 / 64)
    for k in ("check_off_subspace_variance", "check_pca_subspace", "check_d_independence"):
        assert c[k]["kind"] == "check" and c[k]["why"]
    means = [np.mean([0.1 * (1 + 0.01 * s) for s in plan.seeds])] * 2
    assert top["d_independence_spread"] == pytest.approx(max(means) / min(means) - 1, abs=1e-12)
    # an n whose excess is within noise of zero is left out of the fit (and named), the rest still fits
    rows = synthetic_rows(plan)
    big = max(plan.sample.n_values)
    for r in rows:
        if r["section"] == "sample" and r["n"] == big:
            r["score_integral"] = 0.3 + 0.01 * r["seed"] + (-1) ** r["seed"] * 1e-6
    e = analyse(rows, plan)["claims"]["sample_complexity_d0_4"]
    assert e["dropped"] == [big] and any("left out of the fit" in x for x in e["reasons"])
    assert e["slope"] == pytest.approx(-0.5, abs=1e-9) and e["n_points"] == len(plan.sample.n_values) - 1
    assert [p[0] for p in e["points"]] == list(plan.sample.n_values)
    # a run that hit its step cap makes the claims untestable, with that reason
    rows = synthetic_rows(plan)
    rows[0]["converged"] = False
    e = analyse(rows, plan)["claims"]["sample_complexity_d0_4"]
    assert e["verdict"] == "untestable" and any("converge" in r for r in e["reasons"])


@pytest.mark.slow
def test_micro_plan_end_to_end_through_the_trainer(tmp_path):
    """Every task trains in its own run directory through the library's Trainer (an export, a
    metrics.jsonl with the held-out loss), the rows carry the documented keys, the off-subspace
    variance check holds against its chi-square range, and a killed driver (a row lost from the
    store) resumes from the run directory without training again."""
    plan = plan_for("micro")
    s = run_rates(tmp_path, plan, workers=1, progress=False, attention=False)
    assert s["meta"]["failed"] == 0, s["meta"]["failures"]
    assert json.loads((tmp_path / "summary.json").read_text())["claims"].keys() == s["claims"].keys()
    report = (tmp_path / "report.md").read_text()
    assert "## Claims (can fail)" in report and "## Implementation checks (hold by construction)" in report
    store = RateStore(tmp_path / rates.DB_NAME)
    rows = store.results()
    assert len(rows) == len(tasks(plan))
    for r in rows:
        assert r["steps_trained"] <= plan.budget.max_steps and r["population_loss"] > 0
        assert 0 <= r["subspace_error"] <= 2 * r["d0"]  # ||P - Q||_F^2 of two rank-d0 projections
        if r["section"] == "encoder_noisy":  # noisy data: subspaces only
            assert 0 < r["subspace_error_pca"] <= 2 * r["d0"]
            continue
        assert len(r["score_t"]) >= 16 and r["score_integral"] > 0 and r["score_uniform"] > 0
        if r["section"] == "encoder":  # the Trainer's periodic evaluation, every eval_every steps
            assert r["curve_steps"] == list(range(r["eval_every"], r["steps_trained"] + 1, r["eval_every"]))
            assert len(r["curve_subspace_error"]) == len(r["curve_steps"])
        if r["section"] == "sample" and r["n"] > 0:
            assert r["erm_score_integral"] > 0 and 0 <= r["memorisation_fraction"] <= 1
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == len(rows)
    for run in runs:
        recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert any("val_loss" in x for x in recs) and (run / "model" / "training.json").is_file()
    assert s["claims"]["check_off_subspace_variance"]["verdict"] == "passes"
    assert s["claims"]["check_pca_subspace"]["verdict"] == "passes"
    # the driver was killed after a task's training but before its row was written: the rerun
    # evaluates the existing export (no new training) and gets the same row
    victim = next(r for r in rows if r["section"] == "sample" and r["n"] > 0)
    key = config_key({k: victim[k] for k in _task_keys(plan, victim)})
    store.db.execute("DELETE FROM runs WHERE key = ?", (key,))
    store.db.commit()
    store.close()
    again = run_rates(tmp_path, plan, workers=1, progress=False, attention=False)
    assert again["meta"]["ran_now"] == 1 and again["meta"]["skipped"] == len(rows) - 1
    store = RateStore(tmp_path / rates.DB_NAME)
    new = next(r for r in store.results() if config_key({k: r[k] for k in _task_keys(plan, r)}) == key)
    store.close()
    assert new["population_loss"] == victim["population_loss"] and new["score_mse"] == victim["score_mse"]
    assert new["steps_trained"] == victim["steps_trained"]


def _task_keys(plan, row):
    t = next(t for t in tasks(plan) if all(row.get(k) == v for k, v in t.items()))
    return list(t)


def test_a_subset_of_sections_runs_alone():
    from latentdit.errors import ConfigError
    from latentdit.experiments.rates import main, only_sections

    plan = only_sections(plan_for("full"), ["sample", "t0"])
    assert {t["section"] for t in tasks(plan)} == {"sample", "t0"}
    a = analyse(synthetic_rows(plan), plan)
    assert {k for k in a["claims"] if not k.startswith("check_")} == {
        "sample_complexity_d0_4", "population_loss_vs_n_d0_4", "t0_tradeoff"}
    assert math.isnan(a["top"]["capacity_D_mismatch_max"])
    # encoder and encoder_noisy share one plan field
    assert {t["section"] for t in tasks(only_sections(plan_for("micro"), ["encoder_noisy"]))} == {
        "encoder", "encoder_noisy"}
    with pytest.raises(ValueError, match="unknown section"):
        only_sections(plan, ["samples"])
    with pytest.raises(ConfigError, match="--sections"):
        main(["--out", "unused", "--micro", "--sections", "sample,bogus"])


@pytest.mark.slow
def test_a_resumed_sweep_adds_its_session_to_the_timing(tmp_path):
    """Extending a finished sweep (here: one more n) runs only the new tasks and adds that session's
    wall and CPU seconds to the earlier ones in timing.json."""
    from dataclasses import replace

    plan = plan_for("quick")
    first = replace(plan, sample=replace(plan.sample, n_values=plan.sample.n_values[1:]))  # n_max stays
    table = {config_key(t): r for t, r in zip(tasks(plan), synthetic_rows(plan))}

    def runner(task, threads):
        return {k: v for k, v in table[config_key({k: v for k, v in task.items() if k != "run_dir"})].items()
                if k not in task}

    run_rates(tmp_path, first, runner=runner, workers=1, progress=False, attention=False)
    t1 = json.loads((tmp_path / "timing.json").read_text())
    assert t1["tasks_ran"] == len(tasks(first)) and len(t1["sessions"]) == 1 and t1["plan"] == "quick"
    s = run_rates(tmp_path, plan, runner=runner, workers=1, progress=False, attention=False)
    t2 = json.loads((tmp_path / "timing.json").read_text())
    assert s["meta"]["ran_now"] == len(tasks(plan)) - len(tasks(first)) == t2["sessions"][1]["tasks_ran"]
    assert t2["tasks_ran"] == len(tasks(plan)) and len(t2["sessions"]) == 2
    assert t2["wall_seconds"] == pytest.approx(t1["wall_seconds"] + t2["sessions"][1]["wall_seconds"])
    assert all(x["provenance"]["command"] for x in t2["sessions"])
    (tmp_path / rates.DB_NAME).unlink()  # a new sweep in the same directory starts its timing afresh
    run_rates(tmp_path, first, runner=runner, workers=1, progress=False, attention=False)
    t3 = json.loads((tmp_path / "timing.json").read_text())
    assert len(t3["sessions"]) == 1 and t3["tasks_ran"] == len(tasks(first))


@pytest.mark.slow
def test_a_killed_drivers_tasks_count_as_an_unrecorded_session(tmp_path):
    """A driver killed before it wrote timing.json leaves finished tasks in the store; the next
    session adds their span as an unrecorded session and says the total is a lower bound."""
    plan = plan_for("quick")
    table = {config_key(t): r for t, r in zip(tasks(plan), synthetic_rows(plan))}

    def runner(task, threads):
        return {k: v for k, v in table[config_key({k: v for k, v in task.items() if k != "run_dir"})].items()
                if k not in task}

    store = RateStore(tmp_path / rates.DB_NAME)
    done = tasks(plan)[:3]
    for t in done:  # finished by the killed driver, 2 s each
        store.record(t, runner(t, 1), 2.0)
    store.close()
    run_rates(tmp_path, plan, runner=runner, workers=1, progress=False, attention=False)
    t = json.loads((tmp_path / "timing.json").read_text())
    lost, now = t["sessions"]
    assert lost["recorded"] is False and lost["tasks_ran"] == 3 and lost["wall_seconds"] >= 2.0
    assert lost["wall_seconds"] < 10.0  # the three were recorded within a second of each other
    assert now["tasks_ran"] == len(tasks(plan)) - 3 and t["tasks_ran"] == len(tasks(plan))
    assert t["wall_is_lower_bound"] is True
    assert t["wall_seconds"] == pytest.approx(lost["wall_seconds"] + now["wall_seconds"])


@pytest.mark.slow
def test_ctrl_c_stops_a_local_sweep_at_once(slow_pool_driver, tmp_path):
    """SIGINT to the driver ends a pool sweep within seconds, not after the tasks in flight (its
    workers are stopped with it); the store keeps those tasks as running, so a rerun runs them again.

    SIGINT is sent once both tasks run in their workers (each writes a file when it starts): the
    store marks a task running before the pool has started a worker for it. Should the driver
    not exit, its stacks (faulthandler, on SIGUSR1) are part of the failure message."""
    import os
    import signal
    import sqlite3
    import subprocess
    import time

    code = ("import faulthandler, sys; from pathlib import Path; import slowtask\n"
            "from latentdit.experiments.rates import RateStore, run_sweep\n"
            "out = Path(sys.argv[1]); store = RateStore(out / 'r.sqlite')\n"
            "faulthandler.register(signal.SIGUSR1, file=open(out / 'stacks.txt', 'w'), all_threads=True)\n"
            "todo = [{'section': 'sample', 'D': 8, 'd0': 2, 'n': n, 'T0': 0.01, 'seed': 0} for n in (1, 2, 3)]\n"
            "try:\n    run_sweep(store, todo, out=out, runner=slowtask.slow, workers=2, progress=False)\n"
            "except KeyboardInterrupt:\n    sys.exit(130)\n")
    p = slow_pool_driver(code)
    t0 = time.time()
    os.kill(p.pid, signal.SIGINT)  # the driver only: its workers would run on for two minutes
    try:
        rc = p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.kill(p.pid, signal.SIGUSR1)
        time.sleep(1)
        pytest.fail("the driver did not exit within 30 s of SIGINT; its stacks:\n" + (tmp_path / "stacks.txt").read_text())
    assert rc == 130 and time.time() - t0 < 30
    with sqlite3.connect(tmp_path / "r.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM runs WHERE status = 'running'").fetchone()[0] == 2


def test_busy_seconds_counts_the_time_some_task_ran():
    from latentdit.experiments.rates.timing import busy_seconds

    # two workers overlapping, a 30 s pause (a driver between tasks), then a 2 h gap (no driver)
    iv = [(0, 100), (50, 160), (190, 300), (7500, 7600)]
    assert busy_seconds(iv) == pytest.approx(300 + 100)
    assert busy_seconds(iv, gap=10) == pytest.approx(160 + 110 + 100)
    assert busy_seconds([]) == 0.0
