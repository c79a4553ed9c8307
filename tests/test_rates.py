"""`latentdit rates`: slope fitting, verdicts, the resumable store, TV estimate, a micro sweep end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import norm

from latentdit.experiments import rates
from latentdit.experiments.rates import (CLAIMS, RateStore, config_key, configurations, fit_slopes, plan_for,
                                         run_rates, run_sweep, tv_to_density, verdict_upper)


def test_slope_fit_recovers_known_exponent():
    rng = np.random.default_rng(0)
    xs = np.array([500, 2000, 8000, 32000], float)
    pts = [(s, x, 3.0 * x ** -0.4 * math.exp(0.05 * rng.standard_normal())) for s in range(6) for x in xs]
    fit = fit_slopes(pts)
    assert fit["n_seeds"] == 6
    assert abs(fit["slope"] + 0.4) < 0.03
    assert fit["ci"][1] - fit["ci"][0] < 0.1
    # the 95% t-interval covers the true exponent about 95% of the time
    covered = 0
    for rep in range(200):
        pts = [(s, x, 3.0 * x ** -0.4 * math.exp(0.1 * rng.standard_normal())) for s in range(3) for x in xs]
        lo, hi = fit_slopes(pts)["ci"]
        covered += lo <= -0.4 <= hi
    assert 0.88 <= covered / 200 <= 0.995
    # noiseless data: exact slope, zero-width interval
    exact = fit_slopes([(s, x, 2.0 * x ** 0.5) for s in range(3) for x in xs])
    assert exact["slope"] == pytest.approx(0.5, abs=1e-9)
    assert exact["ci"][1] - exact["ci"][0] < 1e-8


def test_verdicts():
    assert verdict_upper([-0.9, -0.6], -1 / 3) == "tighter than the bound"
    assert verdict_upper([-0.5, -0.1], -1 / 3) == "consistent"
    assert verdict_upper([0.1, 0.3], 0.0) == "violated"


def _fake_runner(params: dict, threads: int) -> dict:
    _fake_runner.calls.append(config_key(params))
    return {"value": params["n"] * 1.0}


def test_store_skips_finished_and_reruns_unfinished(tmp_path):
    configs = [{"D": 8, "d0": 2, "n": n, "T0": 0.01, "seed": 0} for n in (10, 20, 30)]
    store = RateStore(tmp_path / "r.sqlite")
    store.record(configs[0], {"value": 10.0}, 0.1)  # finished before the "kill"
    store.mark_running(configs[1])  # was running when the sweep was killed
    store.close()

    store = RateStore(tmp_path / "r.sqlite")  # a new process opens the same store
    assert store.status(configs[0]) == "done" and store.status(configs[1]) == "running"
    _fake_runner.calls = []
    counts = run_sweep(store, configs, runner=_fake_runner, workers=1, progress=False)
    assert counts == {"skipped": 1, "ran": 2, "failed": 0}
    assert _fake_runner.calls == [config_key(configs[1]), config_key(configs[2])]
    assert all(store.status(c) == "done" for c in configs)
    assert sorted(r["value"] for r in store.results()) == [10.0, 20.0, 30.0]

    _fake_runner.calls = []
    counts = run_sweep(store, configs, runner=_fake_runner, workers=1, progress=False)
    assert counts["ran"] == 0 and counts["skipped"] == 3 and _fake_runner.calls == []
    store.close()


def test_failed_config_is_recorded_and_retried(tmp_path):
    def bad(params, threads):
        raise RuntimeError("boom")

    store = RateStore(tmp_path / "r.sqlite")
    c = {"D": 8, "d0": 2, "n": 10, "T0": 0.01, "seed": 0}
    assert run_sweep(store, [c], runner=bad, progress=False)["failed"] == 1
    assert store.status(c) == "failed" and "boom" in store.failures()[0][1]
    _fake_runner.calls = []
    assert run_sweep(store, [c], runner=_fake_runner, progress=False)["ran"] == 1
    store.close()


def test_tv_against_closed_form():
    rng = np.random.default_rng(1)
    mu = 1.0
    q = rng.normal(mu, 1.0, size=(4000, 1))
    p = rng.normal(0.0, 1.0, size=(8000, 1))

    def log_p(h):
        return norm.logpdf(h[:, 0])

    exact = 2 * norm.cdf(mu / 2) - 1  # TV(N(0,1), N(mu,1))
    assert tv_to_density(q, log_p, p) == pytest.approx(exact, abs=0.025)
    same = rng.normal(0.0, 1.0, size=(4000, 1))
    assert tv_to_density(same, log_p, p) < 0.03


def test_configurations_share_points_and_have_three_seeds():
    for mode in ("quick", "full"):
        plan = plan_for(mode)
        cs = configurations(plan)
        assert len({config_key(c) for c in cs}) == len(cs)
        assert len(plan.seeds) >= 3
        for name, (param, points) in rates.sweeps(plan).items():
            for p in points:
                got = [c for c in cs if all(c[k] == p[k] for k in ("D", "d0", "n", "T0"))]
                assert len(got) == len(plan.seeds), (name, p)
    full = plan_for("full")
    assert full.D_values == (32, 128, 512, 2048) and full.d0_values == (4, 16, 64)
    assert full.n_values == (500, 2000, 8000, 32000) and full.T0_values == (1e-3, 1e-2, 1e-1)


def test_micro_sweep_end_to_end(tmp_path):
    plan = plan_for("micro")
    s = run_rates(tmp_path, plan, workers=1, progress=False, attention=tmp_path / "missing.json")
    report = (tmp_path / "report.md").read_text()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary == json.loads(json.dumps(s))
    assert summary["meta"]["failed"] == 0, summary["meta"]["failures"]
    for c in CLAIMS:
        e = summary["claims"][c.key]
        for k in ("measured_slope", "interval", "predicted_exponent", "verdict"):
            assert k in e
        assert e["verdict"] in ("consistent", "tighter than the bound", "violated", "inconclusive")
        assert f"## {c.title}" in report and (tmp_path / f"{c.key}.png").is_file()
    assert isinstance(summary["d_independence_spread"], float) and summary["d_independence_spread"] >= 0
    assert "Attention phase transition" in report
    # resume: nothing is rerun
    again = run_rates(tmp_path, plan, workers=1, progress=False)
    assert again["meta"]["ran_now"] == 0 and again["meta"]["skipped"] == len(configurations(plan))


def test_workers_run_in_processes(tmp_path):
    # a picklable stand-in runner: {param name: threads}; the real runner is covered above
    cs = [{"D": 8, "d0": 2, "n": n, "T0": 0.01, "seed": 0} for n in (10, 20, 30)]
    store = RateStore(tmp_path / "r.sqlite")
    counts = run_sweep(store, cs, runner=dict.fromkeys, workers=2, progress=False)
    assert counts == {"skipped": 0, "ran": 3, "failed": 0}
    assert {config_key(c) for c in cs} == store.finished_keys()
    assert all(r["seconds"] >= 0 for r in store.results())
    store.close()
