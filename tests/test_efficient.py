"""The long-sequence experiment's pieces: the attention-free block, the stationary data source,
the spectral summary, the merged summary file and the experiment end to end (smoke sizes)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from latentdit.build import build_data, build_stationary_law
from latentdit.config import load_config
from latentdit.data.stationary import StationaryMixture
from latentdit.diffusion import DSMLoss, sample_times
from latentdit.evaluation.long import band_edges, spectral_summary
from latentdit.experiments.efficient_report import budget_values, loss_curve, write_summary
from latentdit.models.blocks import DiTBackbone


def test_attention_none_processes_tokens_independently():
    """With model.attention = "none" the output at token j depends on token j only (the Jacobian
    is block diagonal); with exact attention it does not."""
    torch.manual_seed(0)
    for mode, independent in (("none", True), ("exact", False)):
        net = DiTBackbone(6, 3, 16, 2, 4, 2.0, attention_mode=mode)
        for p in net.parameters():  # leave DiT's zero initialisation so that every branch is open
            torch.nn.init.normal_(p, std=0.3)
        X, t = torch.randn(1, 6, 3), torch.tensor([0.5])
        J = torch.autograd.functional.jacobian(lambda x: net(x, t), X)[0, :, :, 0]  # (L, d, L, d)
        off = sum(float(J[i, :, j].abs().sum()) for i in range(6) for j in range(6) if i != j)
        assert (off == 0.0) == independent, (mode, off)


def test_stationary_source_trains_on_fresh_draws_and_config_choices():
    cfg = load_config(None, ["data.source=stationary", "data.ambient_dim=64", "data.components=4", "data.n=0",
                             "encoder.init=identity", "encoder.latent_dim=64", "model.attention=none",
                             "diffusion.times=log"])
    data = build_data(cfg)
    assert data.sampler is not None and data.x.shape[1] == 64
    a, b = data.sampler(3, torch.Generator().manual_seed(1)), data.sampler(3, torch.Generator().manual_seed(2))
    assert a.shape == (3, 64) and not torch.equal(a, b)
    law = build_stationary_law(cfg)
    assert isinstance(law, StationaryMixture) and law.components == 4 and law.dim == 64
    with pytest.raises(Exception, match="diffusion.times"):
        load_config(None, ["diffusion.times=cubic"])


def test_log_times_cover_every_decade_equally():
    """sample_times(kind="log") and the loss built with times="log" (what the trainer draws from):
    each of the four decades of [1e-3, 10] gets a quarter of the draws (uniform times: 9e-4 / 10 of
    them in the first)."""
    g = torch.Generator().manual_seed(0)
    for t in (sample_times(200000, 1e-3, 10.0, generator=g, kind="log"),
              DSMLoss("edm", 1e-3, 10.0, "log").times(200000, generator=g)):
        t = t.double()
        assert float(t.min()) >= 1e-3 and float(t.max()) <= 10.0
        frac = [float(((t >= 10.0 ** a) & (t < 10.0 ** (a + 1))).double().mean()) for a in range(-3, 1)]
        assert all(abs(f - 0.25) < 0.01 for f in frac), frac
    t = DSMLoss("edm", 1e-3, 10.0).times(200000, generator=g).double()
    assert abs(float((t < 1e-2).double().mean()) - 9e-4) < 3e-4
    with pytest.raises(ValueError, match="cubic"):
        DSMLoss("edm", 1e-3, 10.0, "cubic")


def test_spectral_summary_of_white_noise():
    """For x = m + sqrt(v) z (white noise) every periodogram ordinate has mean v, so the band log
    powers tend to log v and the level to m; a mixture's components separate."""
    x = 0.3 + math.sqrt(0.5) * torch.randn(64, 4096, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    s = spectral_summary(x)
    assert s.shape == (64, 1 + len(band_edges(4096)) - 1)
    assert abs(float(s[:, 0].mean()) - 0.3) < 0.01
    assert (s[:, 2:].mean(0) - math.log(0.5)).abs().max() < 0.05  # the widest bands concentrate
    law = StationaryMixture.make(4096, components=4, seed=0)
    h, k = law.sample(64, generator=torch.Generator().manual_seed(1), return_labels=True)
    s = spectral_summary(h)
    means = torch.stack([s[k == c].mean(0) for c in range(4) if (k == c).any()])
    assert torch.cdist(means, means).add(torch.eye(len(means)) * 9).min() > 0.5


def test_band_edges_increase_at_small_dims():
    for d in (4, 9, 64, 16384):
        e = band_edges(d)
        assert e[0] == 1 and e[-1] == d // 2 + 1 and all(b > a for a, b in zip(e, e[1:]))


def test_write_summary_merges_parts(tmp_path):
    path = tmp_path / "summary.json"
    write_summary(path, "video", {"video_tokens": 4096, "gt_tokens": None}, {"command": "v"})
    write_summary(path, "gt", {"gt_tokens": 4096, "operator_swap_change": 0.001}, {"command": "g"})
    d = json.loads(path.read_text())
    assert d["video_tokens"] == 4096 and d["gt_tokens"] == 4096 and d["operator_swap_change"] == 0.001
    assert d["provenance"] == {"command": "g"} and set(d["provenance_by_part"]) == {"gt", "video"}


def test_loss_curve_chains_resumed_sessions(tmp_path):
    lines = [{"step": 10, "loss": 1.0, "time": 5.0}, {"step": 20, "loss": 0.9, "time": 10.0},
             {"step": 30, "loss": 0.8, "time": 4.0}, {"step": 30, "steps_trained": 30, "train_seconds": 6.0}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    c = loss_curve(tmp_path)
    assert c["step"] == [10, 20, 30] and c["time"] == [5.0, 10.0, 14.0] and c["seconds"] == 16.0


@pytest.mark.slow
def test_experiment_end_to_end_smoke(tmp_path):
    """The whole plan at smoke sizes: every model trained through the training path, the rows, the
    figure and the summary keys written; a second call reuses every run and evaluation."""
    from latentdit.experiments.efficient import main

    assert main(["--smoke", "--out", str(tmp_path)]) == 0
    d = json.loads((tmp_path / "summary.json").read_text())
    for key in ("gt_tokens", "gt_score_ratio_vs_no_attention", "gt_score_ratio_vs_f0",
                "gt_w2_excess_ratio_vs_no_attention", "gt_train_seconds", "poly_exact_ratio_1024",
                "operator_swap_change"):
        assert d[key] is not None, key
    assert d["operator_swap_change"] < 0.01  # poly and exact are interchangeable by the certificate
    assert d["provenance"]["command"].startswith("python -m latentdit.experiments.efficient --smoke")
    rows = (tmp_path / "rows.csv").read_text().splitlines()
    assert rows[0].startswith("model,tokens") and len(rows) > 16 * 8
    assert (tmp_path / "loss_curves.png").stat().st_size > 0
    from latentdit.provenance import missing_fields
    for name in ("models.json", "summary.json"):  # every committed figure JSON carries its provenance
        assert not missing_fields(json.loads((tmp_path / name).read_text())), name
    before = json.loads((tmp_path / "models.json").read_text())["models"]
    logs = {p: p.stat().st_mtime_ns for p in tmp_path.glob("runs/*/metrics.jsonl")}
    assert main(["--smoke", "--out", str(tmp_path)]) == 0  # every run and evaluation reused
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("runs/*/metrics.jsonl")} == logs
    assert json.loads((tmp_path / "models.json").read_text())["models"] == before
    # a part of the plan: one length, its runs reused, the summary keyed by that length
    assert main(["--smoke", "--lengths", "16", "--out", str(tmp_path / "part")]) == 0
    part = json.loads((tmp_path / "part" / "summary.json").read_text())
    assert part["gt_tokens"] == 16 and part["poly_exact_ratio_1024"] is not None
    with pytest.raises(SystemExit):
        main(["--smoke", "--lengths", "7", "--out", str(tmp_path / "bad")])


@pytest.mark.slow
def test_budget_plan_smoke_merges_by_its_rule(tmp_path, monkeypatch):
    """The budget plan at smoke sizes: W2 at every seed for poly, none and the exact-score control;
    its L keys merged into --summary only when the poly model trained within the budget."""
    import latentdit.experiments.efficient as eff

    target = tmp_path / "summary.json"
    write_summary(target, "video", {"video_tokens": 4100}, {"command": "v"})
    monkeypatch.setattr(eff, "BUDGET_SECONDS", 0.0)  # over the budget: nothing merged
    assert eff.main(["--plan", "budget", "--smoke", "--out", str(tmp_path / "b"), "--summary", str(target)]) == 0
    assert "gt_plan" not in json.loads(target.read_text())
    d = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert set(d["w2_excess_by_seed"]) == {"poly", "none", "exact_score"}
    assert all(set(v) == {"0", "1"} for v in d["w2_excess_by_seed"].values())
    assert d["gt_w2_excess_ratio_vs_no_attention"] == pytest.approx(d["w2_excess_ratio_by_seed"]["0"])
    monkeypatch.setattr(eff, "BUDGET_SECONDS", 1e9)  # within it: the runs reused, the keys merged
    assert eff.main(["--plan", "budget", "--smoke", "--out", str(tmp_path / "b"), "--summary", str(target)]) == 0
    merged = json.loads(target.read_text())
    assert merged["gt_plan"] == "budget" and merged["video_tokens"] == 4100
    assert merged["gt_score_ratio_vs_f0"] == pytest.approx(d["gt_score_ratio_vs_f0"])


def test_budget_values_ratio_per_seed():
    """The budget plan's W2 reading: the poly / none ratio at each seed, their mean and standard
    error (ddof 1), the control's excesses carried as they are."""
    recs = [{"model": "f0", "tokens": 8, "evaluated_with": "none (F = 0)",
             "exact_score_w2_excess_by_seed": {"0": 0.01, "1": -0.02}},
            {"model": "poly", "tokens": 8, "evaluated_with": "poly", "w2_excess_by_seed": {"0": 0.4, "1": 0.6}},
            {"model": "none", "tokens": 8, "evaluated_with": "none", "w2_excess_by_seed": {"0": 1.0, "1": 1.0}}]
    v = budget_values(recs, {"gt_tokens": 8}, 8)
    assert v["w2_excess_ratio_by_seed"] == {"0": 0.4, "1": 0.6} and v["gt_plan"] == "budget"
    assert v["w2_excess_ratio_mean"] == pytest.approx(0.5) and v["w2_excess_ratio_se"] == pytest.approx(0.1)
    assert v["w2_excess_by_seed"]["exact_score"] == {"0": 0.01, "1": -0.02}


def test_exact_score_control_draws_the_law():
    """The control's samples (the law's exact score through the pipeline's sampler) have the law's
    moments: every coordinate has second moment 1 and the mixture's mean level."""
    from latentdit.evaluation.long import exact_score_samples
    from latentdit.experiments.efficient import Length, initial_pipeline, variant_config

    cfg = variant_config(Length(16, 1, 4, ("poly",), 8, 8, threads=1), "poly")
    pipe, law = initial_pipeline(cfg), build_stationary_law(cfg)
    x = exact_score_samples(pipe, law, 2000, seed=0)
    assert x.dtype == torch.float64 and x.shape == (2000, 64)
    level = float((law.weights * law.levels).sum())
    assert abs(float(x.mean()) - level) < 0.03 and abs(float(x.pow(2).mean()) - 1.0) < 0.05


def test_evaluate_a_stationary_run_against_the_dense_score(tmp_path):
    """`latentdit evaluate` on a ``data.source = "stationary"`` run scores the model against this
    law: its per-t mse matches the one computed here with the score of the dense mixture
    (autograd of the multivariate normal log densities) on fresh draws, up to Monte Carlo error."""
    from latentdit.evaluation import evaluate_run
    from latentdit.pipeline import LatentDiTPipeline
    from latentdit.train import train

    cfg = load_config(None, ["data.source=stationary", "data.ambient_dim=16", "data.components=4", "data.n=0",
                             "encoder.init=identity", "encoder.latent_dim=16", "model.patch=4", "model.patching=1d",
                             "model.hidden=16", "model.depth=1", "model.heads=2", "train.steps=3",
                             "train.batch_size=4", "train.threads=1", "train.checkpoint_every=0",
                             "eval.num_samples=256", "eval.steps=4", "model.attention=exact"])
    run = train(cfg, tmp_path / "run", progress=False)
    m = evaluate_run(run)
    model = LatentDiTPipeline.from_pretrained(run).model
    law = build_stationary_law(cfg)
    cov = [law.dense_covariance(k) for k in range(4)]
    g = torch.Generator().manual_seed(3)
    prof = m["score_profile"]
    for i in (0, 8, 15):
        t = prof["t"][i]
        b, s = math.exp(-t / 2), -math.expm1(-t)
        x = law.sample(2048, t, generator=g).requires_grad_(True)
        comps = [torch.distributions.MultivariateNormal(b * law.levels[k] * torch.ones(16, dtype=torch.float64),
                                                        b * b * cov[k] + s * torch.eye(16, dtype=torch.float64))
                 for k in range(4)]
        logp = torch.logsumexp(torch.stack([c.log_prob(x) + law.weights[k].log() for k, c in enumerate(comps)], 1), 1)
        true = torch.autograd.grad(logp.sum(), x)[0]
        with torch.no_grad():
            mse = float((model(x.detach().float(), torch.full((2048,), t)).double() - true).pow(2).sum(1).mean())
        assert abs(prof["mse"][i] - mse) <= 4 * prof["mse_se"][i] + 0.05 * mse, (t, prof["mse"][i], mse)
    assert m["w2_floor"] > 0 and m["w2_summary"] > 0 and m["score_integral"] > 0
