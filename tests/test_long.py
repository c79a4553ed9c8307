"""The long-sequence ground truth (latentdit.data.long) and its training path with B = I."""

from __future__ import annotations

import json
import math

import pytest
import torch

from latentdit.config import load_config
from latentdit.data.long import LongMixture
from latentdit.diffusion import beta, sigma
from latentdit.errors import ConfigError
from latentdit.build import build_data, build_model
from latentdit.evaluation import run_config
from latentdit.pipeline import LatentDiTPipeline


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def _direct_log_density(law: LongMixture, h: torch.Tensor, t: float) -> torch.Tensor:
    """log sum_k pi_k prod_i N(h_i; beta mu_ki, beta^2 s_ki + sigma), written out per coordinate."""
    tt = torch.tensor(t, dtype=torch.float64)
    b, s = beta(tt), sigma(tt)
    comps = []
    for k in range(law.components):
        var = b * b * law.variances[k] + s
        logn = -0.5 * ((h - b * law.means[k]) ** 2 / var + torch.log(2 * math.pi * var))
        comps.append(torch.log(law.weights[k]) + logn.sum(-1))
    return torch.logsumexp(torch.stack(comps, -1), -1)


@pytest.mark.parametrize("t", [1e-3, 0.3, 3.0])
def test_score_is_the_gradient_of_the_log_density(t):
    law = LongMixture.random(24, 3, seed=1)
    h = law.sample(5, t, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    logp = _direct_log_density(law, h, t)
    (grad,) = torch.autograd.grad(logp.sum(), h)
    torch.testing.assert_close(law.latent_log_prob(h.detach(), t), logp.detach(), rtol=1e-10, atol=1e-8)
    torch.testing.assert_close(law.latent_score(h.detach(), t), grad, rtol=1e-8, atol=1e-8)


def test_agrees_with_subspace_gmm_where_the_laws_coincide():
    """With B = I and identity eigenvectors the SubspaceGMM is this law: same log density, score
    and optimal f at every t (an independent code path with eigen-decomposed covariances)."""
    law = LongMixture.random(16, 4, seed=3)
    gmm = law.as_subspace_gmm()
    h = law.sample(7, 0.5, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([1e-3, 0.01, 0.1, 0.5, 1.0, 2.0, 5.0], dtype=torch.float64)
    torch.testing.assert_close(law.latent_log_prob(h, t), gmm.latent_log_prob(h, t))
    torch.testing.assert_close(law.latent_score(h, t), gmm.latent_score(h, t))
    torch.testing.assert_close(law.optimal_f(h, t), gmm.optimal_f(h, t))
    torch.testing.assert_close(law.score(h, t), gmm.score(h, t))


def test_samples_have_the_stated_moments():
    """Sample mean and per-coordinate second moment against sum_k pi_k mu_k and sum_k pi_k (mu^2 + s)."""
    law = LongMixture.random(8, 2, seed=5)
    x = law.sample(40000, generator=torch.Generator().manual_seed(6))
    mean = (law.weights[:, None] * law.means).sum(0)
    second = (law.weights[:, None] * (law.means ** 2 + law.variances)).sum(0)
    assert (x.mean(0) - mean).abs().max() < 0.03
    assert (x.pow(2).mean(0) - second).abs().max() < 0.05
    assert abs(law.second_moment() - 1.0) < 0.25  # built to have second moment about 1


def test_posterior_couples_distant_tokens():
    """The score at the first coordinate moves when only the last coordinate is changed (through
    the responsibilities), at a time where the components overlap; within one component (K = 1) it
    does not move at all (a diagonal Gaussian has no coupling)."""
    t = 6.0
    for K, coupled in ((4, True), (1, False)):
        law = LongMixture.random(4096, K, seed=7)
        h = law.sample(3, t, generator=torch.Generator().manual_seed(8))
        h2 = h.clone()
        h2[:, -1] += 3.0
        d = (law.latent_score(h, t)[:, 0] - law.latent_score(h2, t)[:, 0]).abs().max()
        assert (d > 1e-6) if coupled else (d < 1e-12)


def test_long_score_at_65536_coordinates_is_cheap():
    """d0 = 65536 (16384 tokens of 4): the score of a few points is computed in chunks without any
    d0 x d0 matrix, and Tweedie's formula holds: optimal_f = sigma score + h."""
    law = LongMixture.random(65536, 8, seed=0)
    h = law.sample(2, 1.0, generator=torch.Generator().manual_seed(0))
    s = law.latent_score(h, 1.0)
    assert s.shape == (2, 65536) and torch.isfinite(s).all()
    torch.testing.assert_close(law.optimal_f(h, 1.0), sigma(torch.tensor(1.0, dtype=torch.float64)) * s + h)


def _long_cfg(tmp=None, *more):
    return load_config(None, ["data.source=long", "data.ambient_dim=256", "data.n=64", "data.components=3",
                              "encoder.init=identity", "encoder.latent_dim=256", "model.patch=4",
                              "model.patching=1d", "model.hidden=16", "model.heads=4", "model.qk_dim=2",
                              "model.qk_norm=true", "model.attention=auto", "model.depth=1",
                              "train.steps=3", "train.batch_size=8", "train.log_every=1",
                              "train.checkpoint_every=0", "optim.warmup_steps=1", "train.threads=1", *more])


def test_identity_encoder_builds_without_a_basis():
    """encoder.init=identity: no D x D buffer, encode/decode are the identity, and the score is
    (f(x) - x) / sigma with f the latent network on x itself."""
    cfg = _long_cfg()
    data = build_data(cfg)
    assert data.x.shape == (64, 256)
    model = build_model(cfg, data)
    assert model.W_B is None and not any("W_frozen" in k for k in model.state_dict())
    x, t = data.x[:2], torch.tensor([0.5, 2.0])
    with torch.no_grad():
        want = (model.f(x, t) - x) / sigma(t)[:, None]
        torch.testing.assert_close(model(x, t), want)
    with pytest.raises(ConfigError, match="encoder.learn"):
        load_config(None, ["encoder.init=identity", "encoder.learn=true"])
    with pytest.raises(ConfigError, match="identity"):
        build_model(load_config(None, ["data.source=long", "data.ambient_dim=64", "encoder.init=identity",
                                       "encoder.latent_dim=32", "data.n=64"]), build_data(
            load_config(None, ["data.source=long", "data.ambient_dim=64", "data.n=64"])))


def test_trains_and_exports_through_the_one_training_path(tmp_path):
    """Three steps of latentdit.train.train on the long law; the export reloads with the identity
    encoder and gives the same scores."""
    from latentdit.train import train

    cfg = _long_cfg()
    run = train(cfg, tmp_path / "run", progress=False)
    model = LatentDiTPipeline.from_pretrained(run).model
    assert model.config.identity_encoder and run_config(run).encoder.init == "identity"
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in lines if "loss" in r)
    x = torch.randn(2, 256)
    with torch.no_grad():
        assert torch.isfinite(model(x, torch.tensor([0.1, 1.0]))).all()


@pytest.mark.slow
def test_latentdit_evaluate_on_a_long_run_against_the_closed_form(tmp_path):
    """`latentdit evaluate` on a ``data.source = "long"`` run: its per-t relative score error equals
    the one computed here against the autograd gradient of the log density written out per
    coordinate (fresh draws, so up to Monte Carlo error); a wrong law would be far off."""
    from latentdit.cli import main
    from latentdit.train import train

    cfg = _long_cfg()
    run = train(cfg, tmp_path / "run", progress=False)
    out = tmp_path / "m.json"
    assert main(["evaluate", "--run", str(run), "--out", str(out), "--num", "128"]) == 0
    m = json.loads(out.read_text())
    assert m["steps_trained"] == 3 and m["w2_summary"] > 0 and m["w2_floor"] > 0 and m["d0"] == 256
    model = LatentDiTPipeline.from_pretrained(run).model
    law = LongMixture.random(cfg.data.ambient_dim, cfg.data.components, seed=cfg.data.seed)
    g = torch.Generator().manual_seed(99)
    times = m["score_profile"]["t"]
    assert len(m["score_rel_error_by_t"]) == len(times) == max(cfg.eval.score_times, 16)
    for t, rel in list(zip(times, m["score_rel_error_by_t"]))[::5]:
        x = law.sample(512, t, generator=g).double().requires_grad_(True)
        true = torch.autograd.grad(_direct_log_density(law, x, t).sum(), x)[0]
        with torch.no_grad():
            s = model(x.detach().float(), torch.full((512,), t)).double()
        want = float(((s - true).pow(2).sum(1).mean() / true.pow(2).sum(1).mean()).sqrt())
        assert abs(rel - want) <= 0.15 * want + 2e-3, (t, rel, want)
    by_t = m["score_rel_error_by_t"]
    assert m["score_rel_error"] == pytest.approx(sum(by_t) / len(by_t))
