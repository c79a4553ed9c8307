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
    """The sweep pipeline (runner -> store -> fits -> verdicts -> summary) against closed forms.

    (a) A synthetic runner with known power laws per seed: the summary must report exactly those
    exponents, the closed-form 95% t-interval around them, the verdict each interval implies, and the
    D-spread of the constructed means. (b) The real runner on the micro plan: the off-subspace variance
    of the trained model's samples vs 1 - exp(-T0) (within the chi-square range of a variance estimate),
    the fitted T0-slope vs the closed-form slope of 1 - exp(-T0), PCA of exact-subspace data recovering
    the subspace to rounding, and a resume that reruns nothing."""
    from scipy.stats import chi2
    from scipy.stats import t as student_t

    plan = plan_for("micro")
    sig = lambda T0: 1.0 - math.exp(-T0)  # noqa: E731 - sigma(T0), the OU variance at T0

    # ---- (a) known exponents; seed s tilts each exponent by 0.05 (s - 1), so the mean is the exponent
    # and the interval half-width is t_{0.975, 2} * 0.05 / sqrt(3)
    exps = {"D": 0.0, "d0": 0.9, "score_n": -0.6, "subspace": -1 / 3, "noisy": -1.0, "w2": 0.2, "tv": -1 / 6}

    def synthetic(p, threads=0):
        e = lambda k: exps[k] + 0.05 * (p["seed"] - 1)  # noqa: E731
        c = 1.0 + 0.1 * p["seed"]
        n = p["n"]
        out = {"score_sigma_error": c * p["D"] ** e("D") * p["d0"] ** e("d0"), "score_rel_error": 0.1,
               "score_sigma_sq_error": c * n ** e("score_n"), "subspace_error": 0.01 * c * n ** e("subspace"),
               "subspace_error_noisy_pca": c * n ** e("noisy"), "w2_latent": c * n ** e("w2"),
               "w2_latent_reference": 0.5, "off_subspace_var": sig(p["T0"]) * (1 + 0.01 * (p["seed"] - 1)),
               "off_subspace_var_expected": sig(p["T0"]), "train_seconds": 0.0, "eval_seconds": 0.0}
        if p["d0"] <= 2:
            out.update(tv_latent=c * n ** e("tv"), tv_latent_reference=0.1)
        return out

    s = run_rates(tmp_path / "synthetic", plan, workers=1, progress=False, runner=synthetic,
                  attention=tmp_path / "missing.json")
    half = student_t.ppf(0.975, 2) * 0.05 / math.sqrt(3)  # t-interval of 3 seed slopes with sd 0.05
    want = {"score_vs_D": ("D", "consistent"), "score_vs_d0": ("d0", "violated"),
            "score_vs_n": ("score_n", "tighter than the bound"), "subspace_vs_n": ("subspace", "consistent"),
            "subspace_noisy_pca_vs_n": ("noisy", "tighter than the bound"), "latent_w2_vs_n": ("w2", "violated"),
            "latent_tv_vs_n": ("tv", "consistent")}
    for key, (e, verdict) in want.items():
        c = s["claims"][key]
        assert c["measured_slope"] == pytest.approx(exps[e], abs=1e-9), key
        assert c["interval"] == pytest.approx([exps[e] - half, exps[e] + half], abs=1e-9), key
        assert c["verdict"] == verdict, (key, c)
    slope_T0 = math.log(sig(0.1) / sig(1e-3)) / math.log(0.1 / 1e-3)
    off = s["claims"]["off_subspace_vs_T0"]
    assert off["measured_slope"] == pytest.approx(slope_T0, abs=1e-9) and off["verdict"] == "consistent"
    assert off["ratio_mean"] == pytest.approx(1.0, abs=1e-12) and off["ratio_range"] == pytest.approx([0.99, 1.01])
    means = [np.mean([(1 + 0.1 * sd) * D ** (0.05 * (sd - 1)) * plan.base_d0 ** (0.9 + 0.05 * (sd - 1))
                      for sd in plan.seeds]) for D in plan.D_values]
    assert s["d_independence_spread"] == pytest.approx(max(means) / min(means) - 1, rel=1e-9)

    # ---- (b) the real runner
    s = run_rates(tmp_path, plan, workers=1, progress=False, attention=tmp_path / "missing.json")
    report = (tmp_path / "report.md").read_text()
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(s))
    assert s["meta"]["failed"] == 0, s["meta"]["failures"]
    for c in CLAIMS:
        assert f"## {c.title}" in report and (tmp_path / f"{c.key}.png").is_file()
    store = RateStore(tmp_path / rates.DB_NAME)
    rows = store.results()
    store.close()
    assert len(rows) == len(configurations(plan))
    n_eval = plan.budget.eval_samples
    for r in [r for r in rows if r["d0"] < r["D"]]:
        # Cor. 3.2.1 (iii): the model's score is exactly -x/sigma off its subspace, so the samples'
        # per-direction variance there is sigma(T0) (N - 1) / N up to chi-square sampling error
        k = r["D"] - r["d0"]
        dof = (n_eval - 1) * k
        lo, hi = chi2.ppf([1e-4, 1 - 1e-4], dof) / (n_eval * k)
        assert r["off_subspace_var_expected"] == pytest.approx(sig(r["T0"]), rel=1e-12)
        assert lo <= r["off_subspace_var"] / sig(r["T0"]) <= hi, r
        # exact-subspace data: PCA of n >= d0 clean points recovers span(B) to float32 rounding, the
        # noised points' PCA does not
        assert r["subspace_error"] < 1e-5 < r["subspace_error_noisy_pca"], r
        assert 0 < r["score_rel_error"] < 1 and r["w2_latent_reference"] > 0
    assert s["claims"]["subspace_vs_n"]["verdict"] == "tighter than the bound"
    # same seed, same noise: x_perp is scaled by sqrt(sigma(T0) / sigma(T)), so every seed's slope is the
    # closed-form slope of 1 - exp(-T0)
    assert s["claims"]["off_subspace_vs_T0"]["measured_slope"] == pytest.approx(slope_T0, abs=2e-3)
    tv = [r for r in rows if "tv_latent" in r]
    assert tv and all(0 < r["tv_latent_reference"] < r["tv_latent"] <= 1 for r in tv)
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
