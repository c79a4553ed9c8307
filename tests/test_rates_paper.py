"""Thm 3.1's regression target, Def. 3.2's norms and the fstar / estimation sections of ``latentdit rates``."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from latentdit.data.gmm import SubspaceGMM
from latentdit.diffusion import beta, sigma
from latentdit.evaluation.norms import def32_norms
from latentdit.models.blocks import PaperBackbone
from latentdit.train.regression import OptimumRegression, optimal_f


def _one_gaussian(D=5, d0=3, seed=0):
    law = SubspaceGMM.random(D, d0, 1, seed=seed)
    S = (law.eigvecs[0] * law.eigvals[0]) @ law.eigvecs[0].T
    return law, S, law.means[0]


def test_optimal_f_of_one_gaussian_is_the_linear_posterior_mean():
    """h0 ~ N(mu, S): beta E[h0 | h_t] = beta mu + beta^2 S C^-1 (h - beta mu), C = beta^2 S + sigma I."""
    law, S, mu = _one_gaussian()
    h = torch.randn(6, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = torch.tensor(0.7, dtype=torch.float64)
    b, s = beta(t), sigma(t)
    C = b * b * S + s * torch.eye(3, dtype=torch.float64)
    want = b * mu + (b * b * S @ torch.linalg.solve(C, (h - b * mu).T)).T
    assert torch.allclose(optimal_f(law, h, t), want, atol=1e-12)


def _stub(law, f):
    """A network's latent denoiser, net(x_t, t, y, latent=True) -> (f(W^T x_t, t), W), with W = B."""
    W = law.B.float()
    return lambda x, t, y=None, latent=False: (f(x @ W, t, y), W)


def test_regression_loss_is_zero_at_the_optimum_and_the_closed_form_elsewhere():
    """f = f*: loss 0 (float32 rounding). f = 0 at one time t: E||f*||^2 / d0 with
    f* = beta mu + K u, u = h_t - beta mu ~ N(0, C), K = beta^2 S C^-1: (beta^2 |mu|^2 + tr(K C K^T)) / d0."""
    law, S, mu = _one_gaussian()
    n, t0 = 20000, 0.4
    g = torch.Generator().manual_seed(2)
    x0 = law.sample(n, generator=g).float()
    t, noise = torch.full((n,), t0), torch.randn(n, 5, generator=g)
    loss = OptimumRegression(law)
    exact = _stub(law, lambda h, t, y=None: optimal_f(law, h.double(), t.double()).float())
    assert float(loss(exact, x0, t, noise)) < 1e-10
    zero = _stub(law, lambda h, t, y=None: torch.zeros_like(h))
    tt = torch.tensor(t0, dtype=torch.float64)
    b, s = beta(tt), sigma(tt)
    C = b * b * S + s * torch.eye(3, dtype=torch.float64)
    K = b * b * S @ torch.linalg.inv(C)
    want = float((b * b * mu @ mu + torch.trace(K @ C @ K.T)) / 3)
    assert float(loss(zero, x0, t, noise)) == pytest.approx(want, rel=0.03)


def test_regression_loss_of_a_network_is_its_sigma_weighted_score_error():
    """With W_B = B and data on span B, ||f - f*||^2 = sigma(t)^2 ||s_W(x_t, t) - grad log p_t(x_t)||^2
    (the parts off the subspace agree): the loss read through net(x_t, t, latent=True) equals the
    network's score error against the law's closed-form score, divided by d0."""
    from latentdit.diffusion import add_noise
    from latentdit.models.score import LatentScoreNet

    law = SubspaceGMM.random(6, 2, 2, seed=4)
    g = torch.Generator().manual_seed(5)
    net = LatentScoreNet(6, 2, encoder_init=law.B.float(), hidden=16, depth=1, heads=2, generator=g)
    x0 = law.sample(256, generator=g).float()
    t, noise = torch.rand(256, generator=g) * 2 + 0.05, torch.randn(256, 6, generator=g)
    with torch.no_grad():
        got = float(OptimumRegression(law)(net, x0, t, noise))
        xt = add_noise(x0, t, noise)
        err = (net(xt, t).double() - law.score(xt.double(), t.double())).pow(2).sum(1)
    assert got == pytest.approx(float((sigma(t.double()) ** 2 * err).mean() / 2), rel=1e-4)


def test_trainer_and_its_validation_set_use_a_replacement_objective(tmp_path):
    """Trainer(loss=...) trains on the given objective, and the held-out loss is that objective too."""
    from latentdit.build import TrainData
    from latentdit.config import load_config
    from latentdit.train.loop import Trainer

    law = SubspaceGMM.random(8, 2, 2, seed=3)
    cfg = load_config(None, ["data.ambient_dim=8", "data.latent_dim=2", "encoder.latent_dim=2", "model.hidden=16",
                             "model.depth=1", "model.heads=2", "model.patch=1", "train.threads=1", "train.device=cpu",
                             "train.val_every=5", "train.val_points=64", "train.batch_size=32"])
    x = law.sample(256, generator=torch.Generator().manual_seed(0)).float()
    data = TrainData(x, None, 0, sampler=lambda m, g: law.sample(m, generator=g).float(), basis=law.B.float())
    obj = OptimumRegression(law, cfg.diffusion.T0, cfg.diffusion.T)
    tr = Trainer(cfg, tmp_path / "run", data=data, loss=obj)
    assert tr.loss_fn is obj and tr.val.objective is obj
    v = tr.val
    with torch.no_grad():
        want = float(obj(tr.ema, v.x0, v.t, v.noise))
    assert v.loss(tr.ema) == pytest.approx(want, rel=1e-5)
    before = v.loss(tr.model)
    for _ in range(30):
        assert math.isfinite(tr.train_step())
    assert v.loss(tr.model) < before


def test_def32_norms_of_hand_set_paper_weights():
    """r = 2 heads of size m = 1 on tokens of size d = 2: W_OV^i = W_O[:, i] W_V[i] is rank one with
    spectral norm |W_O[:, i]| |W_V[i]|; W_KQ^i = W_K[i]^T W_Q[i] likewise."""
    bb = PaperBackbone(3, 2, 1, 2, 1, 4)
    a, f = bb.attn[0], bb.ff[0]
    with torch.no_grad():
        a.W_V.weight.copy_(torch.tensor([[3.0, 4.0], [1.0, 0.0]]))
        a.W_O.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        a.W_Q.weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 1.0]]))
        a.W_K.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 0.5]]))
        f.W_1.weight.copy_(torch.diag(torch.tensor([5.0, 1.0])).repeat(2, 1))
        bb.E.copy_(torch.tensor([[[3.0, 4.0], [0.0, 1.0], [1.0, 0.0]]]))
    norms = def32_norms(SimpleNamespace(backbone=bb))
    assert norms["norm_W_OV"] == pytest.approx(5.0)  # head 0: |(1, 0)| |(3, 4)|; head 1: 2 * 1
    assert norms["norm_W_KQ"] == pytest.approx(2 * math.sqrt(2))  # head 0: 2 |(1, 1)|; head 1: 0.5
    assert norms["norm_W_1"] == pytest.approx(5 * math.sqrt(2))
    assert norms["norm_E_2inf"] == pytest.approx(5.0)


@pytest.mark.slow
def test_micro_fstar_and_estimation_rows(tmp_path):
    """Every new section end to end on the micro plan: the documented fields, in range."""
    from latentdit.experiments.rates.plan import only_sections, plan_for, tasks
    from latentdit.experiments.rates.run import run_dir_for, run_task

    plan = only_sections(plan_for("micro"), ["fstar", "estimation"])
    todo = tasks(plan)
    assert {t["section"] for t in todo} == {"fstar", "estimation"}
    assert {t.get("stop") for t in todo if t["section"] == "estimation"} == {"heldout", "erm", "population"}
    f_task = next(t for t in todo if t["section"] == "fstar")
    r = run_task({**f_task, "run_dir": str(run_dir_for(tmp_path, f_task))})
    for k in ("eps_hat", "eps_hat_2x", "eps_hat_F0", "sigma_err_max", "norm_W_OV", "norm_W_KQ", "params"):
        assert math.isfinite(r[k]) and r[k] >= 0, k
    assert r["sigma_err_max"] == pytest.approx(r["eps_hat"] * 2)  # d0 = 4
    assert r["steps_trained_2x"] >= r["steps_trained"]
    e_task = next(t for t in todo if t["section"] == "estimation" and t["stop"] == "heldout")
    r = run_task({**e_task, "run_dir": str(run_dir_for(tmp_path, e_task))})
    for k in ("score_integral", "erm_score_integral", "kde_score_integral", "em_score_integral", "w2_excess",
              "subspace_error", "control_dpm2m_w2_excess", "subspace_error_pca_n", "w2_clean", "w2_clean_floor"):
        assert math.isfinite(r[k]), k
    for k in ("tv_classifier", "tv_classifier_floor", "tv_classifier_control", "memorisation_fraction",
              "memorisation_fraction_control"):
        assert 0 <= r[k] <= 1, k
    assert r["kde_bandwidth"] > 0


def test_estimation_tasks_select_checkpoints_without_population_data():
    """heldout: the Trainer splits a fifth of the n points off (no val_x, no sampler); erm: the
    validation loss is the empirical risk on the training points; both with a learned random-init
    W_B, ambient noise and the theorem's unweighted loss. The n points are nested across n."""
    from latentdit.experiments.rates.paper_tasks import estimation_config, estimation_data
    from latentdit.experiments.rates.plan import Budget, plan_for, tasks
    from latentdit.experiments.rates.run import build_law

    todo = [t for t in tasks(plan_for("micro")) if t["section"] == "estimation"]
    for t in todo:
        cfg, law = estimation_config(t), build_law(t)
        data, x = estimation_data(t, law, Budget(**t["budget"]))
        assert cfg.encoder.learn and cfg.encoder.init == "random" and cfg.train.noise == "ambient"
        assert cfg.diffusion.weighting == "none" and cfg.optim.schedule == "constant"
        if t["stop"] == "heldout":
            assert data.val_x is None and data.sampler is None and cfg.train.val_points == round(0.2 * t["n"])
        elif t["stop"] == "erm":
            assert data.val_x is x and data.sampler is None
        else:
            assert t["n"] == 0 and data.sampler is not None and x is None
    t = todo[0]
    small = estimation_data({**t, "n": 8}, build_law(t), Budget(**t["budget"]))[1]
    assert torch.equal(small, estimation_data(t, build_law(t), Budget(**t["budget"]))[1][:8])
