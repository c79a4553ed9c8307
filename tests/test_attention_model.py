"""Attention inside the score network: qk_dim, the polynomial method under the certificate, auto's
choice and its fallback, and ReLU linear attention against its O(L^2) formula."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import latentdit.models.blocks as blocks
from latentdit.attention import attention, attention_stats, reset_attention_stats
from latentdit.config import load_config
from latentdit.errors import ConfigError
from latentdit.models.blocks import DiTBackbone, DiTBlock, PaperBackbone, attention_summary


@pytest.fixture(autouse=True)
def _one_thread(_seed_and_threads):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    reset_attention_stats()
    yield
    torch.set_num_threads(threads)
    reset_attention_stats()


def _randomise(model: nn.Module, seed: int = 0, std: float = 0.3) -> None:
    """Give every parameter a random value (the DiT init zeroes adaLN and the output, which would
    make every block the identity and hide the attention)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("tau_raw"):
                p.copy_(2.0 * torch.randn(p.shape, generator=g))  # tau anywhere in (0, tau_max)
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))


def _softmax_attention(q, k, v, scale):
    return torch.softmax(scale * q.double() @ k.double().transpose(-1, -2), dim=-1) @ v.double()


def test_qk_dim_block_matches_the_written_out_formula():
    """A block with qk_dim = 3 != head size 8: the fused projection has 2 h m + hidden outputs, and
    attn() equals proj(concat_h softmax(q_h k_h^T / sqrt(m)) v_h) computed here from the weights."""
    hidden, heads, m, L = 16, 2, 3, 7
    blk = DiTBlock(hidden, heads, 2.0, qk_dim=m).double()
    assert blk.qkv.weight.shape == (2 * heads * m + hidden, hidden)
    _randomise(blk)
    x = torch.randn(2, L, hidden, dtype=torch.float64)
    W, b = blk.qkv.weight, blk.qkv.bias
    outs = []
    for h in range(heads):
        q = x @ W[h * m:(h + 1) * m].T + b[h * m:(h + 1) * m]
        k = x @ W[heads * m + h * m: heads * m + (h + 1) * m].T + b[heads * m + h * m: heads * m + (h + 1) * m]
        vo = 2 * heads * m + h * (hidden // heads)
        v = x @ W[vo:vo + hidden // heads].T + b[vo:vo + hidden // heads]
        outs.append(_softmax_attention(q, k, v, m ** -0.5))
    want = blk.proj(torch.cat(outs, dim=-1))
    torch.testing.assert_close(blk.attn(x), want, rtol=1e-10, atol=1e-10)


def test_default_qk_dim_keeps_the_fused_layout():
    """qk_dim unset: the projection is 3 x hidden as before (checkpoints stay loadable)."""
    blk = DiTBlock(32, 4, 4.0)
    assert blk.qk_dim == 8 and blk.qkv.weight.shape == (96, 32)
    cfg = load_config(None, [])
    assert cfg.model.qk_dim == 0


def _paper_regime_backbone(L: int, mode: str, seed: int = 0) -> DiTBackbone:
    bb = DiTBackbone(L, 2, hidden=32, depth=2, heads=8, mlp_ratio=2.0, attention_mode=mode,
                     qk_norm=True, tau_max=1.7, qk_dim=2).double()
    _randomise(bb, seed)
    return bb


def test_whole_backbone_poly_within_the_certified_bound(monkeypatch):
    """Every attention call inside a 2-block backbone run with mode='poly' is checked against the
    softmax attention of the same q, k, v: |out - exact| <= eps / (1 - eps) max_j |v_j - exact_i|
    per coordinate (the certificate's guarantee). The whole backbone output stays within 1e-2
    relative of the exact-attention backbone with the same weights."""
    L, eps = 64, 1e-3
    calls = []

    def checked(q, k, v, **kw):
        out = attention(q, k, v, **kw)
        exact = _softmax_attention(q, k, v, kw["scale"])
        spread = (v.double()[..., None, :, :] - exact[..., :, None, :]).abs().amax(dim=-2)
        err = (out.double() - exact).abs()
        assert (err <= eps / (1 - eps) * spread + 1e-12).all()
        calls.append(float((err / spread.clamp_min(1e-30)).max().detach()))
        return out

    monkeypatch.setattr(blocks, "attention", checked)
    X = torch.randn(3, L, 2, dtype=torch.float64)
    t = torch.tensor([0.01, 1.0, 5.0], dtype=torch.float64)
    poly = _paper_regime_backbone(L, "poly")
    out_poly = poly(X, t)
    monkeypatch.undo()
    assert len(calls) == 2 and attention_stats().poly == 2
    exact = _paper_regime_backbone(L, "exact")
    exact.load_state_dict(poly.state_dict())
    out_exact = exact(X, t)
    rel = (out_poly - out_exact).norm() / out_exact.norm()
    assert 0 < rel < 1e-2


def test_auto_picks_poly_when_certified():
    """Small qk_dim with QK-norm at L = 1024: the criterion certifies and predicts a speed-up, so
    'auto' runs poly in every block, and the summary plans the same."""
    bb = DiTBackbone(1024, 2, hidden=32, depth=2, heads=8, mlp_ratio=2.0, attention_mode="auto",
                     qk_norm=True, tau_max=1.7, qk_dim=2)
    plan = attention_summary(bb, batch=1)
    assert plan["planned"] == {"poly": 2} and plan["fallback_reasons"] == {}
    assert all(r["certificate"]["ok"] and r["logit_bound"] <= r["logit_bound_cap"] for r in plan["layers"])
    with torch.no_grad():
        bb(torch.randn(1, 1024, 2), torch.tensor([1.0]))
    st = attention_stats()
    assert st.poly == 2 and st.exact == 0
    after = attention_summary(bb)
    assert after["runtime"]["poly"] == 2
    assert json.loads(json.dumps(after))["planned"] == {"poly": 2}  # JSON-able for metrics/exports


def test_auto_falls_back_with_a_reason():
    """Head size 16 with tau_max = 4 (|logit| <= 16): no degree certifies 1e-3, so 'auto' runs
    exact, counts the fallback with its reason and warns once; the summary says the same."""
    bb = DiTBackbone(32, 2, hidden=32, depth=2, heads=2, mlp_ratio=2.0, attention_mode="auto",
                     qk_norm=True, tau_max=4.0)
    with torch.no_grad():
        for blk in bb.blocks:
            blk.tau_raw.fill_(10.0)  # tau ~ tau_max
    plan = attention_summary(bb)
    assert plan["planned"] == {"exact": 2} and plan["fallback_reasons"]
    with pytest.warns(RuntimeWarning, match="fell back"), torch.no_grad():
        bb(torch.randn(1, 32, 2), torch.tensor([1.0]))
    st = attention_stats()
    assert st.exact == 2 and st.poly == 0 and sum(st.fallback_reasons.values()) == 2
    assert set(st.fallback_reasons) == set(plan["fallback_reasons"])


def test_paper_block_auto_uses_its_entry_bound():
    """The paper block with entry bound B_e: |logit| <= m B_e^2 = 0.5, certified, poly planned and run."""
    bb = PaperBackbone(512, 2, depth=1, r=2, m=2, l=4, entry_bound=0.5, attention_mode="auto")
    plan = attention_summary(bb)
    assert plan["layers"][0]["logit_bound"] == pytest.approx(0.5)
    assert plan["planned"] == {"poly": 1}
    with torch.no_grad():
        bb(torch.randn(1, 512, 2), torch.tensor([1.0]))
    assert attention_stats().poly == 1


def _relu_linear_loops(q, k, v, delta=1e-6):
    """out_i = sum_j (relu q_i . relu k_j) v_j / (sum_j relu q_i . relu k_j + delta), row by row."""
    q, k, v = q.double(), k.double(), v.double()
    out = torch.empty(q.shape[:-1] + (v.shape[-1],), dtype=torch.float64)
    for i in range(q.shape[-2]):
        w = (torch.relu(q[..., i, None, :]) * torch.relu(k)).sum(-1)  # (..., Lk)
        out[..., i, :] = (w[..., None] * v).sum(-2) / (w.sum(-1, keepdim=True) + delta)
    return out


def test_relu_linear_matches_the_quadratic_formula():
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(2, 3, 17, 4, generator=g), torch.randn(2, 3, 23, 4, generator=g)
    v = torch.randn(2, 3, 23, 5, generator=g)
    out = attention(q.double(), k.double(), v.double(), mode="relu_linear")
    torch.testing.assert_close(out, _relu_linear_loops(q, k, v), rtol=1e-9, atol=1e-9)
    assert attention_stats().exact == 0 and attention_stats().poly == 0  # not counted


def test_relu_linear_block_and_config():
    """A DiT block in relu_linear mode computes proj(relu-linear(q, k, v)); the config accepts the
    mode and rejects a negative qk_dim in config-key terms."""
    blk = DiTBlock(8, 2, 2.0, attention_mode="relu_linear", qk_dim=3).double()
    _randomise(blk)
    x = torch.randn(1, 9, 8, dtype=torch.float64)
    q, k, v = blk.qkv(x).split([6, 6, 8], dim=-1)
    heads = [_relu_linear_loops(q[..., 3 * h:3 * h + 3], k[..., 3 * h:3 * h + 3], v[..., 4 * h:4 * h + 4])
             for h in range(2)]
    torch.testing.assert_close(blk.attn(x), blk.proj(torch.cat(heads, -1)), rtol=1e-9, atol=1e-9)
    assert load_config(None, ["model.attention=relu_linear"]).model.attention == "relu_linear"
    with pytest.raises(ConfigError, match="model.qk_dim"):
        load_config(None, ["model.qk_dim=-1"])
