"""Ground-truth evaluation: the score-error functionals of Thm 3.1 / 3.2 against closed forms, the
floors and excesses of W2, the exact-score sampler controls, and evaluate_gmm's keys."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from latentdit.config import Config
from latentdit.data.gmm import SubspaceGMM
from latentdit.diffusion import beta, sigma
from latentdit.evaluation.gmm import (evaluate_ground_truth, evaluate_gmm, exact_score_samples, log_times,
                                      score_error_profile, score_integral_error, score_uniform_error)
from latentdit.metrics.distances import w2


def _law(D=8, d0=2, K=3, seed=0):
    # overlapping components: with well separated ones the W2 floor is dominated by the binomial
    # fluctuation of the component counts
    return SubspaceGMM.random(D, d0, K, seed=seed, mean_scale=0.5)


def _sampler(law, seed=0):
    g = torch.Generator().manual_seed(seed)
    return lambda n, t: law.sample(n, t, generator=g)


def test_log_times_spacing_and_bad_arguments():
    ts = log_times(1e-3, 10.0, 16)
    assert len(ts) == 16 and ts[0] == 1e-3 and ts[-1] == 10.0
    ratios = ts[1:] / ts[:-1]
    assert torch.allclose(ratios, torch.full_like(ratios, 10 ** (4 / 15)), rtol=1e-12)
    with pytest.raises(ValueError, match="n="):
        log_times(1e-3, 10.0, 1)
    with pytest.raises(ValueError, match="T0"):
        log_times(1.0, 0.5)


@pytest.mark.slow
def test_profile_of_the_exact_score_is_zero():
    law = _law()
    prof = score_error_profile(law.score, law.score, _sampler(law), log_times(1e-3, 10.0), 500)
    assert len(prof["t"]) == 16
    # the score under test sees x in float32 (as a network does): only float32 rounding remains
    rel = [m / q for m, q in zip(prof["mse"], prof["true_sq_norm"])]
    assert max(rel) < 1e-10
    assert score_uniform_error(prof, 2) < 1e-4


@pytest.mark.slow
def test_profile_of_a_wrong_score_matches_its_closed_form():
    """s(x, t) = -x / sigma(t) (the score of N(0, sigma I)) against a one-component latent law
    h ~ N(mu, S): off the subspace it is exact; in the latent, with C = beta^2 S + sigma I and
    u = h_t - beta mu ~ N(0, C), the error is (C^-1 - I/sigma) u - beta mu / sigma, so
    E||.||^2 = tr((C^-1 - I/sigma)^2 C) + beta^2 ||mu||^2 / sigma^2."""
    law = _law(D=6, d0=3, K=1, seed=3)
    S = (law.eigvecs[0] * law.eigvals[0]) @ law.eigvecs[0].T
    mu = law.means[0]
    times = [0.05, 0.3, 1.0, 3.0]
    prof = score_error_profile(lambda x, t: -x / sigma(t)[:, None], law.score, _sampler(law, 1), times, 40000)
    for t, m, se in zip(prof["t"], prof["mse"], prof["mse_se"]):
        b, s = beta(torch.tensor(t, dtype=torch.float64)), sigma(torch.tensor(t, dtype=torch.float64))
        C = b ** 2 * S + s * torch.eye(3, dtype=torch.float64)
        A = torch.linalg.inv(C) - torch.eye(3, dtype=torch.float64) / s
        exact = float(torch.trace(A @ A @ C) + b ** 2 * mu.pow(2).sum() / s ** 2)
        assert abs(m - exact) < 5 * se + 1e-9 * exact, (t, m, exact, se)
        assert se < 0.05 * exact  # the test is sharp enough to catch a wrong constant
    # Thm 3.1's functional is the maximum over t of sigma sqrt(mse) / sqrt(d0)
    want = max(s * math.sqrt(m) for s, m in zip(prof["sigma"], prof["mse"])) / math.sqrt(3)
    assert score_uniform_error(prof, 3) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("T0,T", [(1e-3, 10.0), (1e-2, 5.0)])
def test_integral_quadrature_against_closed_forms(T0, T):
    ts = log_times(T0, T, 16).tolist()

    def quad(f):
        return score_integral_error({"t": ts, "mse": [f(t) for t in ts]}, T0, T)

    # exact for power laws, e.g. the 1/t blow-up near T0 and polynomials' terms
    assert quad(lambda t: 2.0 / t) == pytest.approx(2.0 * math.log(T / T0) / T, rel=1e-10)
    assert quad(lambda t: t ** 2) == pytest.approx((T ** 3 - T0 ** 3) / (3 * T), rel=1e-10)
    assert quad(lambda t: 0.5) == pytest.approx(0.5 * (T - T0) / T, rel=1e-10)
    # a sum of power laws is not interpolated exactly; the 16-point quadrature stays within 2%
    f = lambda t: 1.0 / t + 3.0 * t ** 2 + 0.5  # noqa: E731
    exact = (math.log(T / T0) + (T ** 3 - T0 ** 3) + 0.5 * (T - T0)) / T
    assert quad(f) == pytest.approx(exact, rel=0.02)
    with pytest.raises(ValueError, match="not \\[T0, T\\]"):
        score_integral_error({"t": ts[1:], "mse": [1.0] * 15}, T0, T)


@pytest.mark.slow
def test_exact_score_controls():
    """With the exact score, DPM-Solver++(2M) at 50 steps reaches the true-vs-true W2 floor; the
    uniform-step Euler-Maruyama sampler of App. D.1 has a discretisation error that shrinks with steps."""
    law = _law(D=8, d0=2, seed=1)
    n, T0, T = 500, 1e-3, 10.0
    g = torch.Generator().manual_seed(5)
    h_true, h_ref = law.sample_latent(n, T0, generator=g), law.sample_latent(n, T0, generator=g)
    floor = w2(h_ref, h_true)

    def excess(sampler, steps, grid):
        x = exact_score_samples(law, n, sampler=sampler, steps=steps, T0=T0, T=T, grid=grid, seed=7)
        return w2(x @ law.B, h_true) - floor

    assert abs(excess("dpm2m", 50, "auto")) < 0.5 * floor
    em = [excess("em", s, "uniform") for s in (8, 32, 128)]
    assert em[0] > em[1] > em[2], em
    assert em[0] > floor  # 8 uniform steps are visibly wrong


class ExactModel(torch.nn.Module):
    """A stand-in network whose denoiser and score are the law's exact ones."""

    num_classes = 0

    def __init__(self, law):
        super().__init__()
        self.law, self.ambient_dim = law, law.B.shape[0]
        self._p = torch.nn.Parameter(torch.zeros(1))

    @property
    def W_B(self):
        return self.law.B.float()

    def denoise(self, x, t, y=None):
        return self.law.denoise(x, t)

    def forward(self, x, t, y=None):
        return self.law.score(x, t)


def _pipe(law, cfg):
    from latentdit.pipeline import LatentDiTPipeline

    return LatentDiTPipeline(ExactModel(law), cfg.diffusion.T0, cfg.diffusion.T)


def _cfg(D, d0, T0=1e-3, steps=30):
    return Config.from_dict({"data": {"source": "gmm", "n": 50, "ambient_dim": D, "latent_dim": d0, "components": 2},
                             "encoder": {"latent_dim": d0}, "diffusion": {"T0": T0, "T": 10.0},
                             "eval": {"sampler": "dpm2m", "steps": steps}})


@pytest.mark.slow
def test_evaluate_ground_truth_with_the_exact_score():
    """Closed forms: the exact score has zero profile, its dpm2m samples sit at the W2/TV floors, the
    subspace error is 0 and the off-subspace variance is sigma(T0) within its chi-square range."""
    law = _law(D=8, d0=2, seed=2)
    cfg = _cfg(8, 2, T0=0.05)
    m = evaluate_ground_truth(_pipe(law, cfg), law, sampler="dpm2m", steps=30, score_points=200, num_samples=600,
                              tv_points=2000, seed=3, control=True, x_train=law.sample(40, generator=torch.Generator()))
    assert len(m["score_t"]) == 16 and max(m["score_mse"]) < 1e-8 * max(m["score_true_sq_norm"])
    assert m["score_integral"] < 1e-8 and m["score_uniform"] < 1e-4
    assert m["w2_excess"] == pytest.approx(m["w2_latent"] - m["w2_floor"])  # implementation check
    assert abs(m["w2_excess"]) < 0.5 * m["w2_floor"]
    assert abs(m["tv_excess"]) < 0.05 and 0 < m["tv_floor"] < 0.2
    assert abs(m["control_dpm2m_w2_excess"]) < 0.5 * m["w2_floor"]
    assert "control_em_w2_excess" in m and m["subspace_error"] < 1e-6  # float32 W
    expected = 1 - math.exp(-0.05)
    assert m["off_subspace_var_expected"] == pytest.approx(expected)
    # 600 samples x 6 off-subspace directions: relative sd of the variance estimate ~ sqrt(2 / 3600)
    assert abs(m["off_subspace_var"] / expected - 1) < 4 * math.sqrt(2 / 3600)
    # the memorising empirical minimiser of 40 points is far off near T0 and close at T
    assert len(m["erm_score_mse"]) == 16 and m["erm_score_mse"][0] > 100 * m["erm_score_mse"][-1] > 0
    assert m["erm_score_integral"] > 0 and m["erm_score_uniform"] > 0
    with pytest.raises(ValueError, match="times="):
        evaluate_ground_truth(_pipe(law, cfg), law, sampler="dpm2m", steps=30, score_points=10, num_samples=10, seed=0,
                              times=6)


@pytest.mark.slow
def test_evaluate_gmm_keeps_its_keys_and_adds_the_functionals():
    from latentdit.build import build_data, build_model, make_pipeline

    cfg = Config.from_dict({"data": {"source": "gmm", "n": 64, "ambient_dim": 8, "latent_dim": 4, "components": 2},
                            "encoder": {"latent_dim": 4},
                            "model": {"hidden": 8, "depth": 1, "heads": 1, "patch": 1},
                            "eval": {"num_samples": 64, "steps": 3, "score_times": 4}})
    model = build_model(cfg, build_data(cfg), generator=torch.Generator().manual_seed(0)).eval()
    m = evaluate_gmm(make_pipeline(model, cfg, build_data(cfg)), cfg)
    for key in ("subspace_error", "w2_latent", "w2_latent_reference", "off_subspace_var", "off_subspace_var_expected",
                "score_rel_error", "score_sigma_error", "score_error_by_t", "num_samples", "eval_seconds",
                "score_t", "score_mse", "score_uniform", "score_integral", "w2_floor", "w2_excess"):
        assert key in m, key
    assert len(m["score_t"]) == 16  # at least 16 times whatever eval.score_times says
    assert m["w2_latent_reference"] == m["w2_floor"]
    # an untrained network is far from the exact score: the functionals see it
    assert m["score_integral"] > 0 and m["score_rel_error"] > 0.01
    assert np.isfinite(m["score_uniform"])



# ------------------------------------------------------------------------------ attention criterion


def test_attention_phase_head_size_grows_with_log_L_and_curves_differ():
    from latentdit.experiments.rates.attention_phase import head_size, phase_rows

    assert [head_size(2 ** p) for p in (8, 12, 16, 20)] == [3, 4, 6, 7]  # round(ln L / 2)
    rows = phase_rows([2 ** 8, 2 ** 16], [0.1, 0.3, 0.6, 1.0])
    by_L = {L: [r for r in rows if r["L"] == L] for L in (2 ** 8, 2 ** 16)}
    for rs in by_L.values():
        errs = [r["error_bound"] for r in rs]
        assert errs == sorted(errs)  # a polynomial of fixed degree can only get worse on a wider interval
        assert rs[0]["meets_target"] and not rs[-1]["meets_target"]
        assert all(r["R"] == pytest.approx(r["m"] * r["B"] ** 2) for r in rs)
    # at the same B / sqrt(ln L) the longer sequence has a larger head and a smaller target: its
    # curve is not the other one's
    assert by_L[2 ** 16][1]["error_bound"] != pytest.approx(by_L[2 ** 8][1]["error_bound"], rel=0.1)
    assert by_L[2 ** 8][1]["meets_target"] and not by_L[2 ** 16][1]["meets_target"]


@pytest.mark.slow
def test_attention_break_even_and_measured_errors():
    """B*(L) is a real boundary of the certificate (ok just below, not ok just above); the polynomial
    attention's measured error on bounded-entry inputs stays within the certified guarantee."""
    from latentdit.experiments.rates.attention_phase import _certified_ok, break_even, measured_rows

    for L in (2 ** 8, 2 ** 12):
        be = break_even(L)
        m, B = be["m"], be["B_star"]
        assert B is not None and be["predicted_speedup"] >= 1.0
        assert _certified_ok(L, m, B).ok and not _certified_ok(L, m, B * 1.01).ok
        assert be["R_star"] == pytest.approx(m * B * B)
    for r in measured_rows([2 ** 8], [0.2, 0.5]):
        assert r["measured"] <= r["guaranteed"], r
        assert r["measured"] > 0


def test_attention_rank_exponent_in_units_of_ln_L():
    """Per L and c = R / ln L: g is the smallest Chebyshev degree whose certified error on
    [-R, R] is at most 1/L (degree g - 1 is not), the rank is C(m + g, g) and the exponent
    log_L of it; it grows with c; a rank past MAX_RANK or no degree is flagged, not plotted as
    a measurement."""
    import math

    from latentdit.attention.cost import MAX_RANK
    from latentdit.attention.polynomials import exp_poly, quantize_bound
    from latentdit.experiments.rates.attention_phase import exponent_rows

    rows = exponent_rows([2 ** 8, 2 ** 16], [0.05, 0.2, 0.8, 3.2])
    for L in (2 ** 8, 2 ** 16):
        rs = [r for r in rows if r["L"] == L and r["degree"] is not None]
        assert [r["rank_exponent"] for r in rs] == sorted(r["rank_exponent"] for r in rs) and len(rs) >= 2
        for r in rs:
            R = quantize_bound(r["c"] * math.log(L))
            assert exp_poly("chebyshev", R, r["degree"]).error_bound <= 1 / L
            assert r["degree"] == 0 or exp_poly("chebyshev", R, r["degree"] - 1).error_bound > 1 / L
            assert r["rank"] == math.comb(r["m"] + r["degree"], r["degree"])
            assert r["rank_exponent"] == pytest.approx(math.log(r["rank"]) / math.log(L))
            assert r["capped"] == ("MAX_RANK" if r["rank"] > MAX_RANK else None)
    assert any(r["capped"] == "MAX_DEGREE" and r["degree"] is None for r in rows)  # c = 3.2 at L = 2^16


@pytest.mark.slow
def test_attention_phase_quick_writes_its_plot(tmp_path):
    from latentdit.experiments.rates.attention_phase import attention_phase

    out = attention_phase(tmp_path, quick=True)
    assert (tmp_path / out["png"]).stat().st_size > 1000
    assert len(out["break_even"]) == len(out["lengths"]) == 3
    assert all(r["B_star"] is not None for r in out["break_even"])
    assert all(r["limit"] in ("cost", "MAX_RANK", "MAX_DEGREE") for r in out["break_even"])
    assert all(r["c_star"] == pytest.approx(r["R_star"] / math.log(r["L"])) for r in out["break_even"])


# ------------------------------------------------------------------------------ report


def _entry(kind, key, exponent, predicted, *, why="", profiles=None, reference=None):
    from latentdit.experiments.rates.verdicts import fit_slope, verdict

    xs = [500, 2000, 8000, 32000]
    pts = [(s, x, 2.0 * x ** (exponent + 0.02 * (s - 1))) for s in range(3) for x in xs]
    fit = fit_slope(pts)
    v = verdict(fit, predicted)
    means = [[x, float(np.mean([y for s, xx, y in pts if xx == x])), 0.01] for x in xs]
    e = {"kind": kind, "title": f"title of {key}", "theorem": "Thm 3.2", "statement": f"statement of {key}",
         "why": why, "sweep": "n", "x": "n", "y": "error", "points": means, "reference": reference or {},
         "profiles": profiles or {}, "slope": fit["slope"], "ci": fit["ci"], "predicted": predicted,
         "bound": "upper", "verdict": v["verdict"], "reasons": v["reasons"], "n_points": fit["n_points"],
         "decades": fit["decades"]}
    return e


def test_report_separates_claims_from_checks_with_their_statistics(tmp_path):
    import json
    from types import SimpleNamespace

    from latentdit.experiments.rates.report import summary_dict, write_report

    ts = log_times(1e-3, 10.0).tolist()
    analysis = {"claims": {
        "score_vs_n": _entry("claim", "score_vs_n", -0.1, -1 / 3,
                             profiles={"n=500": {"t": ts, "mse": [1 / t for t in ts]}},
                             reference={"ERM": [[500, 1.0], [32000, 0.5]]}),
        "off_subspace_vs_T0": _entry("check", "off_subspace_vs_T0", 1.0, 1.0,
                                     why="off W_B the network's score is -x / sigma(t) exactly"),
        "empty": {"kind": "claim", "title": "nothing measured", "points": [], "slope": float("nan"),
                  "ci": [float("nan"), float("nan")], "predicted": 0.0, "verdict": "untestable",
                  "reasons": ["0 distinct x (< 4)"], "n_points": 0, "decades": 0.0}},
        "top": {"d_independence_spread": 0.05, "sample_complexity_slope_d0_4": -0.2, "capacity_D_mismatch_max": 0.01}}
    plan = SimpleNamespace(name="quick", seeds=(0, 1, 2), budget=None)
    att = {"head_size": "max(2, round(ln L / 2))", "eps": "1/L", "heads": 32, "png": "attention_phase.png",
           "break_even": [{"L": 256, "m": 3, "B_star": 1.49, "B_star_over_sqrt_log_L": 0.63, "R_star": 6.6,
                           "degree": 11, "rank": 364, "predicted_speedup": 1.19}],
           "measured": [{"L": 256, "m": 3, "B": 0.47, "degree": 3, "guaranteed": 1e-3, "measured": 2e-5}]}
    path = write_report(tmp_path, plan, [], analysis, meta={"configs": 3, "finished": 3}, attention=att)
    text = path.read_text()
    claims_at = text.index("## Claims (can fail)")
    checks_at = text.index("## Implementation checks (hold by construction)")
    att_at = text.index("## Attention criterion")
    assert claims_at < checks_at < att_at
    claims_part, checks_part = text[claims_at:checks_at], text[checks_at:att_at]
    assert "title of score_vs_n" in claims_part and "title of score_vs_n" not in checks_part
    assert "title of off_subspace_vs_T0" in checks_part and "title of off_subspace_vs_T0" not in claims_part
    assert "off W_B the network's score is -x / sigma(t) exactly" in checks_part
    e = analysis["claims"]["score_vs_n"]
    assert e["verdict"] == "slower over this range"  # slope -0.1 against an upper bound -1/3
    for s in (f"{e['slope']:.3g}", f"{e['ci'][0]:.3g}", "-0.333", "slower over this range",
              "4 points over 1.81 decades", e["reasons"][0]):
        assert s in claims_part, s
    assert "0 distinct x (< 4)" in claims_part and "untestable" in claims_part
    assert "| 256 | 3 | 1.49 |" in text and "d_independence_spread`: 0.05" in text
    for key in ("score_vs_n", "off_subspace_vs_T0"):
        assert (tmp_path / f"{key}.png").stat().st_size > 1000 and f"]({key}.png)" in text
    assert not (tmp_path / "empty.png").exists()

    s = summary_dict(analysis, plan, {"configs": 3}, attention=att)
    json.dumps(s, allow_nan=False)  # JSON-safe: the NaN slope of the empty entry is null
    assert s["claims"]["empty"]["slope"] is None
    assert set(s["claims"]["score_vs_n"]) >= {"kind", "slope", "ci", "predicted", "verdict", "n_points", "decades",
                                             "title", "reasons"}
    assert s["claims"]["off_subspace_vs_T0"]["kind"] == "check"
    assert s["d_independence_spread"] == 0.05 and s["capacity_D_mismatch_max"] == 0.01
    assert s["attention"]["break_even"][0]["B_star"] == 1.49


def test_erm_score_against_autograd_and_one_point():
    """The empirical risk minimiser's score: for one training point it is (beta x1 - x) / sigma; for
    many, the gradient (by autograd) of log sum_i exp(-|x - beta x_i|^2 / (2 sigma))."""
    from latentdit.metrics.distances import erm_score

    g = torch.Generator().manual_seed(0)
    xtr = torch.randn(50, 5, generator=g, dtype=torch.float64)
    x = torch.randn(7, 5, generator=g, dtype=torch.float64)
    t = torch.tensor([1e-3, 0.01, 0.1, 0.5, 1.0, 3.0, 10.0], dtype=torch.float64)
    b, s = beta(t)[:, None], sigma(t)[:, None]
    one = erm_score(xtr[:1], x, t)
    assert torch.allclose(one, (b * xtr[0] - x) / s, rtol=1e-10)
    xr = x.clone().requires_grad_(True)
    logp = torch.logsumexp(-(xr[:, None, :] - b[:, :, None] * xtr[None]).pow(2).sum(-1) / (2 * s), dim=1)
    (grad,) = torch.autograd.grad(logp.sum(), xr)
    assert torch.allclose(erm_score(xtr, x, t, chunk=3), grad, rtol=1e-8, atol=1e-8)


def test_timing_section_compares_with_the_target_and_splits_by_section():
    """The report's timing lines: the wall against the mode's target (over or within) and each
    section's share of the task seconds, summed from the rows."""
    from latentdit.experiments.rates.report import _timing_lines, section_costs

    rows = [{"section": "sample", "seconds": 30.0}, {"section": "sample", "seconds": 10.0},
            {"section": "t0", "seconds": 60.0}]
    assert section_costs(rows) == {"sample": {"tasks": 2, "task_seconds": 40.0}, "t0": {"tasks": 1, "task_seconds": 60.0}}
    over = "\n".join(_timing_lines("full", {"wall_seconds": 14500.0, "wall_is_lower_bound": True}, rows))
    assert "14500 s (a lower bound) against the `full` plan's target of 14400 s: over by 100 s" in over
    assert "| sample | 2 | 40 | 40% | 20 |" in over and "| t0 | 1 | 60 | 60% | 60 |" in over
    within = "\n".join(_timing_lines("quick", {"wall_seconds": 400.0}, rows))
    assert "400 s against the `quick` plan's target of 900 s: within" in within
