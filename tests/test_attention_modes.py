"""Attention modes, fallbacks and statistics, FAVOR+, CUDA, the tuned factorisation and exact
attention with unequal head sizes, each against exact attention computed directly."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from test_attention import explicit_attention, rand_qkv

from latentdit.attention import (ATTENTION_MODES, attention, attention_stats, choose_exp_poly, performer_attention,
                                 reset_attention_stats)
from latentdit.attention import cost, kernels
from latentdit.attention.certificate import data_logit_bound
from latentdit.attention.kernels import poly_attention
from latentdit.attention.polynomials import quantize_bound


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def test_modes_fallback_and_statistics():
    assert ATTENTION_MODES == ("exact", "poly", "auto")
    reset_attention_stats()
    q, k, v = rand_qkv((1, 2, 64, 4), 64, 4, seed=0, dtype=torch.float32)
    with pytest.raises(ValueError, match="unknown attention mode"):
        attention(q, k, v, mode="fast")
    with pytest.raises(ValueError, match="certifies"):
        attention(q * 30, k * 30, v, mode="poly")
    out = attention(q, k, v, mode="exact")
    assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for _ in range(3):  # too short to pay off: exact, one warning
            out = attention(q, k, v, mode="auto")
        attention(q * 30, k * 30, v, mode="auto")  # no degree certifies: exact, no new warning
    assert len([w for w in rec if issubclass(w.category, RuntimeWarning)]) == 1
    assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v))
    st_ = attention_stats().as_dict()
    assert st_["exact"] == 5 and st_["poly"] == 0
    assert st_["fallback_reasons"] == {"not_faster": 3, "no_degree": 1}
    assert "no speed-up" in st_["fallback_messages"]["not_faster"]
    # long and bounded: auto picks the polynomial method
    q2, k2, v2 = rand_qkv((1, 2, 8192, 2), 8192, 2, seed=0, dtype=torch.float32)
    out2 = attention(q2, k2, v2, mode="auto")
    assert attention_stats().poly == 1
    ref = explicit_attention(q2[..., :256, :], k2, v2, 2 ** -0.5)
    assert (out2[..., :256, :].double() - ref).norm() / ref.norm() < 1e-3
    reset_attention_stats()
    assert attention_stats().exact == 0 and not attention_stats().warned


# --------------------------------------------------------------------------- baseline and devices
def test_performer_is_unbiased_but_noisy():
    q, k, v = rand_qkv((1, 1, 200, 4), 200, 4, offset=0.0, spread=0.3, seed=3)
    ref = explicit_attention(q, k, v, 0.5)
    errs = [((performer_attention(q, k, v, num_features=M, seed=1) - ref).norm() / ref.norm()).item()
            for M in (16, 1024)]
    assert errs[1] < errs[0]
    assert errs[1] < 0.1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    q, k, v = rand_qkv((1, 2, 300, 4), 300, 4, seed=2, dtype=torch.float32)
    qc, kc, vc = (x.cuda().requires_grad_() for x in (q, k, v))
    out = attention(qc, kc, vc, mode="poly")
    ref = explicit_attention(q, k, v, 0.5)
    assert (out.double().cpu() - ref).norm() / ref.norm() < 1e-3
    out.sum().backward()
    assert qc.grad.is_cuda and torch.isfinite(qc.grad).all()


def test_tuned_split_is_used_and_exact():
    q, k, v = rand_qkv((1, 2, 40, 3), 40, 3, seed=6)
    p = choose_exp_poly(quantize_bound(data_logit_bound(q, k, 0.5)[0]), 1e-9)
    try:
        sp = kernels.tune_split(3, p.degree, 3, n=2, L=64, dtype=torch.float64, repeats=1)
        assert sp in cost.candidate_splits(3, p.degree, 3)
        assert kernels.choose_split(3, p.degree, 3, q.device) == sp
        out = poly_attention(q, k, v, p, scale=0.5)
    finally:
        kernels._TUNED_SPLITS.clear()
    assert (out - explicit_attention(q, k, v, 0.5)).abs().max() < 1e-7


@pytest.mark.slow
def test_exact_attention_compiles_without_graph_breaks():
    """mode='exact' traces into one torch.compile graph (the call counter must not split it)."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64) for _ in range(3))
    f = torch.compile(lambda q, k, v: attention(q, k, v, mode="exact"), fullgraph=True, backend="eager")
    torch.testing.assert_close(f(q, k, v), explicit_attention(q, k, v, 0.5), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("m, mv", [(4, 32), (32, 4), (2, 8)])
@pytest.mark.parametrize("scale", [None, 1.0, 0.3])
def test_exact_attention_with_unequal_head_sizes_matches_the_formula(m, mv, scale):
    """Query/key size m != value size: the zero-padded SDPA call against softmax(scale q k^T) v written
    out in float64 (scale None = 1/sqrt(m) of the true m, not of the padded size), values and
    gradients."""
    g = torch.Generator().manual_seed(m * 100 + mv)
    q, k = (torch.randn(2, 3, n, m, generator=g, dtype=torch.float64, requires_grad=True) for n in (37, 29))
    v = torch.randn(2, 3, 29, mv, generator=g, dtype=torch.float64, requires_grad=True)
    out = attention(q, k, v, mode="exact", scale=scale)
    s = m ** -0.5 if scale is None else scale
    want = torch.softmax(s * q @ k.transpose(-2, -1), dim=-1) @ v
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-12)
    dout = torch.randn_like(want)
    got = torch.autograd.grad(out, (q, k, v), dout)
    ref = torch.autograd.grad(want, (q, k, v), dout)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
