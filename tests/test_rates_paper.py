"""Thm 3.1's regression target, Def. 3.2's norms and the fstar / estimation sections of ``latentdit rates``."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from latentdit.data.gmm import SubspaceGMM
from latentdit.diffusion import beta, sigma
from latentdit.metrics.norms import def32_norms
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
    W = law.B.float()
    return SimpleNamespace(W_B=W, encoder=SimpleNamespace(encode=lambda x, W: x @ W), f=f)


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
