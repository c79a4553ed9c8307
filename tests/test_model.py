"""Score network of eq. (2.5): reshape, blocks, encoder, and the exact-score limit."""

from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from latentdit.diffusion import DSMLoss
from latentdit.config import ModelConfig
from latentdit.data.gmm import SubspaceGMM
from latentdit.errors import ConfigError
from latentdit.models.blocks import PaperAttention
from latentdit.models.reshape import Reshape, resolve_patching
from latentdit.models.score import LatentScoreNet


def test_reshape_2d_layout_matches_patch_definition():
    # d0 = 16 as a 4 x 4 grid, patches 2 x 2: token 0 holds grid entries (0,0),(0,1),(1,0),(1,1)
    r = Reshape(16, 2)
    assert r.mode == "2d" and r.num_tokens == 4 and r.token_dim == 4
    h = torch.arange(16.0)[None]
    X = r(h)
    assert X[0, 0].tolist() == [0, 1, 4, 5]
    assert X[0, 1].tolist() == [2, 3, 6, 7]
    assert X[0, 3].tolist() == [10, 11, 14, 15]
    assert torch.equal(r.inverse(X), h)


@pytest.mark.parametrize("d0,patch,mode", [(64, 4, "2d"), (12, 3, "1d"), (12, 4, "auto"), (36, 3, "auto")])
def test_reshape_round_trip(d0, patch, mode):
    r = Reshape(d0, patch, mode)
    h = torch.randn(5, d0)
    assert r(h).shape == (5, r.num_tokens, r.token_dim)
    assert r.num_tokens * r.token_dim == d0
    assert torch.equal(r.inverse(r(h)), h)


def test_reshape_errors_name_the_fix():
    with pytest.raises(ConfigError, match="fits neither"):
        resolve_patching(7, 2)
    with pytest.raises(ConfigError, match="not a square"):
        resolve_patching(12, 2, "2d")
    with pytest.raises(ConfigError, match="patching"):
        resolve_patching(16, 2, "3d")


def _gmm(D=24, d0=4, K=3, seed=1):
    return SubspaceGMM.random(D, d0, K, seed=seed)


def test_exact_f_gives_exact_score():
    """With W_B = B and f = f* (= sigma grad log p_t^h + h), eq. (2.5) is the exact score (Lemma)."""
    g = _gmm()
    cfg = ModelConfig(hidden=16, depth=1, heads=2, patch=2)
    m = LatentScoreNet(24, 4, **asdict(cfg), encoder_init=g.B.float()).double()
    m.f = lambda h, t, y=None: g.optimal_f(h, t)  # swap in the closed-form latent network
    t = torch.rand(50, dtype=torch.float64) * 3 + 0.01
    x = g.sample(50, 0.7)
    assert torch.allclose(m(x, t), g.score(x, t), atol=1e-8)


@pytest.mark.parametrize("block", ["dit", "paper"])
@pytest.mark.parametrize("classes", [0, 3])
def test_shapes_and_zero_init_is_linear_gaussian_score(block, classes):
    """At initialisation (zeroed output) the preconditioned net is the score of N(0, v W W^T + ...)."""
    cfg = ModelConfig(block=block, hidden=16, depth=2, heads=2, patch=2, num_classes=classes)
    m = LatentScoreNet(20, 16, **asdict(cfg), latent_second_moment=2.0)
    x, t = torch.randn(8, 20), torch.rand(8) + 0.1
    y = torch.randint(0, classes, (8,)) if classes else None
    s = m(x, t, y)
    assert s.shape == (8, 20) and torch.isfinite(s).all()
    if block == "dit":
        W = m.W_B.detach()
        b2, sg = torch.exp(-t), -torch.expm1(-t)
        h = x @ W
        # latent part: score of N(0, b^2 v + sigma); orthogonal part: -x_perp / sigma
        expect = (h * (-1 / (b2 * 2.0 + sg))[:, None]) @ W.T - (x - h @ W.T) / sg[:, None]
        assert torch.allclose(s, expect, atol=1e-5)


def _diagonal_net(D=20, d0=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    mean, var = torch.randn(d0, generator=g), torch.rand(d0, generator=g) * 3 + 0.01
    cfg = ModelConfig(hidden=16, depth=2, heads=2, patch=2, precondition_stats="diagonal")
    m = LatentScoreNet(D, d0, **asdict(cfg), latent_mean=mean, latent_var=var).double()
    return m, mean.double(), var.double()


def test_diagonal_zero_init_is_the_score_of_the_fitted_gaussian():
    """Zeroed output: the score of h0 ~ N(m, diag(v)) in span(W_B), i.e. latent N(beta m, b^2 v + sigma)
    coordinate by coordinate, and -x_perp / sigma off the subspace."""
    m, mean, var = _diagonal_net()
    x, t = torch.randn(8, 20, dtype=torch.float64), torch.rand(8, dtype=torch.float64) * 2 + 0.05
    W = m.W_B.detach()
    b, sg = torch.exp(-t / 2)[:, None], -torch.expm1(-t)[:, None]
    h = x @ W
    expect = (-(h - b * mean) / (b * b * var + sg)) @ W.T - (x - h @ W.T) / sg
    assert torch.allclose(m(x, t), expect, atol=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("stats", ["scalar", "diagonal"])
def test_edm_loss_of_the_exact_gaussian_denoiser_is_d0_over_D(stats):
    """With data drawn from the Gaussian the preconditioning is built on, the zero-init net is the
    exact denoiser and each latent residual has variance c_out^2: the edm loss is d0 / D in expectation."""
    D, d0, n = 20, 16, 40000
    if stats == "diagonal":
        m, mean, var = _diagonal_net(D, d0)
    else:
        cfg = ModelConfig(hidden=16, depth=2, heads=2, patch=2)
        m = LatentScoreNet(D, d0, **asdict(cfg), latent_second_moment=1.7).double()
        mean, var = torch.zeros(d0, dtype=torch.float64), torch.full((d0,), 1.7, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    h0 = mean + var.sqrt() * torch.randn(n, d0, generator=g, dtype=torch.float64)
    x0 = h0 @ m.W_B.detach().T
    t = torch.rand(n, generator=g, dtype=torch.float64) * 3 + 1e-3
    with torch.no_grad():
        loss = DSMLoss()(m, x0, t, torch.randn(n, D, generator=g, dtype=torch.float64))
    assert abs(loss.item() - d0 / D) < 0.02 * d0 / D, loss.item()


def test_build_model_fits_diagonal_statistics_and_they_survive_export(tmp_path):
    from latentdit.build import build_data, build_model, make_pipeline
    from latentdit.config import Config, read_config_file
    from latentdit.pipeline import LatentDiTPipeline

    d = read_config_file(Path(__file__).resolve().parents[1] / "configs" / "tiny.toml")
    d["model"]["precondition_stats"] = "diagonal"
    cfg = Config.from_dict(d)
    data = build_data(cfg)
    m = build_model(cfg, data)
    h = data.x.double() @ m.W_B.detach().double()
    assert torch.allclose(m.latent_mean.double(), h.mean(0), atol=1e-5)
    assert torch.allclose(m.latent_var.double(), h.var(0, correction=0), rtol=1e-4)
    make_pipeline(m, cfg, data).save_pretrained(tmp_path / "export")
    m2 = LatentDiTPipeline.from_pretrained(tmp_path / "export").model
    assert torch.equal(m2.latent_mean, m.latent_mean) and torch.equal(m2.latent_var, m.latent_var)


def test_diagonal_statistics_shape_is_checked():
    cfg = ModelConfig(hidden=16, depth=1, heads=2, patch=2, precondition_stats="diagonal")
    with pytest.raises(ValueError, match="shape"):
        LatentScoreNet(20, 16, **asdict(cfg), latent_mean=torch.zeros(4), latent_var=torch.ones(16))


def test_paper_attention_matches_column_formula():
    """Row-form implementation equals X + sum_i W_O^i W_V^i X softmax((W_K^i X)^T W_Q^i X) (Sec. 3)."""
    torch.manual_seed(0)
    d, r, m_, L = 4, 2, 3, 5
    att = PaperAttention(d, r, m_).double()
    X = torch.randn(1, L, d, dtype=torch.float64)
    out = att(X)[0].T  # columns = tokens, (d, L)
    Xc = X[0].T
    expect = Xc.clone()
    for i in range(r):
        sl = slice(i * m_, (i + 1) * m_)
        WQ, WK, WV = att.W_Q.weight[sl], att.W_K.weight[sl], att.W_V.weight[sl]
        WO = att.W_O.weight[:, sl]
        A = torch.softmax((WK @ Xc).T @ (WQ @ Xc), dim=0)  # column-stochastic, (L_k, L_q)
        expect = expect + WO @ WV @ Xc @ A
    assert torch.allclose(out, expect, atol=1e-10)


def _logits_used_by(att: PaperAttention, X: torch.Tensor, monkeypatch) -> tuple[torch.Tensor, dict, torch.Tensor]:
    """Run the real module and capture the q, k, scale and logit bound it hands to the attention kernel."""
    import latentdit.models.blocks as blocks

    seen = {}
    real = blocks.attention

    def spy(q, k, v, **kw):
        seen.update(q=q.detach().clone(), k=k.detach().clone(), **kw)
        return real(q, k, v, **kw)

    monkeypatch.setattr(blocks, "attention", spy)
    with torch.no_grad():
        out = att(X)
    return seen["scale"] * seen["q"] @ seen["k"].transpose(-1, -2), seen, out


def test_paper_entry_bound_bounds_logits(monkeypatch):
    """With adversarially large W_Q, W_K and inputs, the logits the module actually feeds to softmax stay
    within m B_e^2 (Def. 3.2), come close to it (the clip saturates, it does not just shrink), and the
    bound passed on to the kernel is that value; without the bound the same weights give logits ~1e6."""
    d, r, m, b = 4, 2, 3, 0.5
    att = PaperAttention(d, r, m, entry_bound=b)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for W in (att.W_Q, att.W_K):
            W.weight.copy_(1e3 * torch.randn(W.weight.shape, generator=g))
    X = 100 * torch.randn(2, 6, d, generator=g)
    X[0, 0] = X[0, 1]  # equal tokens: their q . k is a sum of m squares near B_e^2 each
    logits, seen, out = _logits_used_by(att, X, monkeypatch)
    assert seen["scale"] == 1.0 and seen["logit_bound"] == pytest.approx(m * b * b)
    assert logits.abs().max() <= m * b * b + 1e-6
    assert logits.abs().max() >= 0.99 * m * b * b
    # the output is X + W_O softmax(q k^T) v with those very logits (exact attention, closed form)
    v = att.W_V(X).reshape(2, 6, r, m).transpose(1, 2)
    ref = X + att.W_O((torch.softmax(logits, -1) @ v).transpose(1, 2).reshape(2, 6, r * m))
    torch.testing.assert_close(out, ref.detach(), rtol=1e-4, atol=1e-2)

    free = PaperAttention(d, r, m, entry_bound=None)
    free.load_state_dict(att.state_dict())
    logits_free, seen_free, _ = _logits_used_by(free, X, monkeypatch)
    assert seen_free["logit_bound"] is None and logits_free.abs().max() > 1e6


@pytest.mark.slow
def test_learned_encoder_stays_orthonormal_and_moves():
    cfg = ModelConfig(hidden=16, depth=1, heads=2, patch=2)
    m = LatentScoreNet(30, 4, **asdict(cfg), learn_encoder=True, generator=torch.Generator().manual_seed(0))
    W0 = m.W_B.detach().clone()
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(5):
        x0 = torch.randn(64, 30)
        t = torch.rand(64) + 0.05
        loss = DSMLoss()(m, x0, t, torch.randn(64, 30))
        opt.zero_grad()
        loss.backward()
        opt.step()
    W = m.W_B.detach()
    assert torch.allclose(W.T @ W, torch.eye(4), atol=1e-5)
    assert (W - W0).abs().max() > 1e-4


def test_frozen_encoder_has_no_gradient():
    cfg = ModelConfig(hidden=16, depth=1, heads=2, patch=2)
    m = LatentScoreNet(30, 4, **asdict(cfg), learn_encoder=False)
    assert all(not p.requires_grad for p in m.encoder.parameters())
    W = m.W_B
    assert torch.allclose(W.T @ W, torch.eye(4), atol=1e-5)


def test_random_encoder_is_not_the_ground_truth_of_the_same_seed():
    from latentdit.firststage.linear import LinearEncoder
    from latentdit.metrics.distances import subspace_error

    g = SubspaceGMM.random(64, 4, 2, seed=0)
    enc = LinearEncoder(64, 4, learn=True, generator=torch.Generator().manual_seed(0))
    # a Haar-random 4-plane in R^64 overlaps B by about d0^2/D = 0.25: error about 2 d0 - 0.5
    assert subspace_error(enc.W_B.detach(), g.B) > 5.0


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh"])
def test_dit_mlp_activation_is_the_closed_form_gelu(activation):
    """The MLP nonlinearity is x Phi(x) (exact) or the tanh formula of Hendrycks & Gimpel."""
    cfg = ModelConfig(hidden=8, depth=1, heads=2, patch=2, activation=activation)
    act = LatentScoreNet(4, 4, **asdict(cfg)).backbone.blocks[0].mlp[1]
    x = torch.linspace(-4, 4, 101, dtype=torch.float64)
    if activation == "gelu":
        want = x * 0.5 * (1 + torch.erf(x / 2**0.5))
    else:
        want = 0.5 * x * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (x + 0.044715 * x**3)))
    torch.testing.assert_close(act(x), want, rtol=0, atol=1e-12)


def test_format0_export_from_before_activation_loads_the_network_it_saved(tmp_path):
    """A format-0 export (one config.json with the training config under "config") whose config
    predates ``model.activation`` is rebuilt with the tanh GELU it used."""
    import json

    from latentdit.config import Config
    from latentdit.pipeline import LatentDiTPipeline

    cfg = Config.from_dict({"data": {"ambient_dim": 8, "latent_dim": 4}, "encoder": {"latent_dim": 4},
                            "model": {"hidden": 16, "depth": 1, "heads": 2, "activation": "gelu_tanh"}})
    torch.manual_seed(0)
    model = LatentScoreNet(8, 4, **asdict(cfg.model)).eval()
    for p in model.parameters():  # non-zero everywhere so the activation matters
        torch.nn.init.normal_(p, std=0.5)
    LatentDiTPipeline(model).save_pretrained(tmp_path)
    old = cfg.to_dict()
    del old["model"]["activation"]
    (tmp_path / "config.json").write_text(json.dumps({"config": old, "ambient_dim": 8, "latent_dim": 4,
                                                      "num_classes": 0}))
    (tmp_path / "sampling.json").unlink()
    loaded = LatentDiTPipeline.from_pretrained(tmp_path).model
    assert loaded.config.activation == "gelu_tanh"
    x, t = torch.randn(16, 8), torch.full((16,), 0.5)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t), model(x, t), rtol=0, atol=0)


def test_build_model_leaves_the_config_unchanged():
    import copy

    from latentdit.build import TrainData, build_model
    from latentdit.config import Config

    cfg = Config.from_dict({"encoder": {"latent_dim": 4}, "model": {"hidden": 16, "depth": 1, "heads": 2}})
    before = copy.deepcopy(cfg)
    data = TrainData(torch.randn(64, 8), torch.arange(64) % 3, 3)
    model = build_model(cfg, data)
    assert cfg == before and cfg.model.num_classes == 0
    assert model.num_classes == 3 and model.cfg.num_classes == 3


def test_preconditioner_is_the_gaussian_posterior_and_c_noise_the_log_time():
    """For h0 ~ N(m, diag(v)) and h_t = beta h0 + sqrt(sigma) z, Bayes gives
    beta E[h0 | h_t] = beta m + beta^2 v / (beta^2 v + sigma) (h_t - beta m) and
    Var(beta h0 | h_t) = beta^2 v sigma / (beta^2 v + sigma): the preconditioner with F = 0 is that
    mean and c_out^2 that variance; c_in^2 is 1 / Var(h_t)."""
    from latentdit.models.precond import Preconditioner

    m, v = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64), torch.tensor([0.3, 1.0, 4.0], dtype=torch.float64)
    t = torch.tensor([1e-3, 0.3, 2.0, 9.0], dtype=torch.float64)
    b, s = torch.exp(-t / 2)[:, None], (1 - torch.exp(-t))[:, None]
    h = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    pre = Preconditioner(v, m)
    post_mean = b * m + b * b * v / (b * b * v + s) * (h - b * m)
    torch.testing.assert_close(pre.apply(lambda hh, tn: torch.zeros_like(hh), h, t), post_mean)
    torch.testing.assert_close(pre.c_out(t) ** 2, b * b * v * s / (b * b * v + s))
    torch.testing.assert_close(pre.c_in(t) ** -2, b * b * v + s)
    torch.testing.assert_close(pre.c_noise(t), 100 * (torch.log(t) + 8))
    off = Preconditioner(torch.tensor(2.0, dtype=torch.float64), enabled=False)
    torch.testing.assert_close(off.apply(lambda hh, tn: 3 * hh, h, t), 3 * h)


def test_sincos_table_is_the_closed_form_per_axis():
    """Grid (3, 4), width 8: token 4 r + c is [sin(r w), cos(r w), sin(c w), cos(c w)] with
    w = (1, 10000^-1/2), each axis taking 4 columns; a video grid gives every token its own row."""
    import math

    from latentdit.models.blocks import sincos_table

    table = sincos_table((3, 4), 8)[0].double()
    w = torch.tensor([1.0, 0.01], dtype=torch.float64)
    for r in range(3):
        for c in range(4):
            want = torch.cat([torch.sin(r * w), torch.cos(r * w), torch.sin(c * w), torch.cos(c * w)])
            assert torch.allclose(table[r * 4 + c], want, atol=1e-6)
    vid = sincos_table((4, 8, 8), 64)[0]  # (frames, rows, cols): 24 + 20 + 20 columns
    assert vid.shape == (256, 64) and (torch.cdist(vid, vid) + torch.eye(256)).min() > 1e-3
    frame2 = torch.tensor([math.sin(2 * 10000 ** (-k / 12)) for k in range(12)]
                          + [math.cos(2 * 10000 ** (-k / 12)) for k in range(12)])
    assert torch.allclose(vid[128:192, :24], frame2.expand(64, 24), atol=1e-6)
    assert sincos_table((5,), 7)[0, :, 6].abs().max() == 0  # odd width: one zero column
    with pytest.raises(ValueError):
        sincos_table((2, 0), 8)


def test_sincos_positions_follow_the_grid_and_are_not_weights(tmp_path):
    """pos_embed = sincos: the 2-D reshape's grid (or the first stage's token_grid) sets a fixed
    table that is neither trained nor stored, and an export rebuilds the same network."""
    from latentdit.models.blocks import sincos_table

    cfg = ModelConfig(hidden=16, depth=1, heads=2, patch=2, pos_embed="sincos")
    m = LatentScoreNet(20, 16, **asdict(cfg))
    assert torch.equal(m.backbone.pos, sincos_table((2, 2), 16))
    assert "backbone.pos" not in m.state_dict() and all(p is not m.backbone.pos for p in m.parameters())
    v = LatentScoreNet(64, 64, **asdict(ModelConfig(hidden=16, depth=1, heads=2, patch=4, patching="1d",
                                                    pos_embed="sincos")), token_grid=(2, 2, 4), identity_encoder=True)
    assert torch.equal(v.backbone.pos, sincos_table((2, 2, 4), 16))
    with pytest.raises(ValueError, match="token grid"):
        LatentScoreNet(64, 64, **asdict(ModelConfig(hidden=16, depth=1, heads=2, patch=4, patching="1d",
                                                    pos_embed="sincos")), token_grid=(3, 3))
    back = LatentScoreNet(**v.config_dict())  # what an export's config.json rebuilds
    back.load_state_dict(v.state_dict())
    x, t = torch.randn(3, 64), torch.full((3,), 0.5)
    with torch.no_grad():
        assert torch.equal(back(x, t), v(x, t))
    assert back.config.token_grid == [2, 2, 4]
