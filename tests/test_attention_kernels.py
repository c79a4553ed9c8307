"""The poly kernel's peeled products and row-layout backward against exact softmax attention (closed
form: the L x L matrix written out in float64) and torch.autograd.gradcheck."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from latentdit.attention import attention, certify, choose_exp_poly
from latentdit.attention.cost import rank
from latentdit.attention.exact import reference_attention_grads
from latentdit.attention.features import make_plan
from latentdit.attention.kernels import CHUNK_ALIGN, FEATURE_BUDGET_CPU, chunk_length, poly_attention
from latentdit.attention.polynomials import exp_poly
from latentdit.attention.products import peeled
from latentdit.diffusion import DSMLoss
from test_attention import explicit_attention


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def unit_qkv(n, L, m, mv, R, seed=0, dtype=torch.float64):
    """Queries and keys of norm sqrt(R) (so |logit| <= R at scale 1), values N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(n, L, m, generator=g, dtype=torch.float64), dim=-1) * math.sqrt(R)
    k = F.normalize(torch.randn(n, L, m, generator=g, dtype=torch.float64), dim=-1) * math.sqrt(R)
    v = torch.randn(n, L, mv, generator=g, dtype=torch.float64)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def test_peeling_covers_every_top_degree_monomial_once():
    """The peeled GEMMs' rows are the degree-g block, in order, each from a prefix of degree g - 1;
    peeling is chosen where the top block outgrows the m scaled copies of [V, 1]."""
    plan = make_plan(8, 5)
    low, top = peeled(plan, 9)
    assert low.r1 == rank(8, 4) and plan.r1 - low.r1 == rank(8, 5) - rank(8, 4) == 792
    assert [op[2] for op in top] == list(range(8))                      # one GEMM per last variable
    assert [op[1] for op in top] == [math.comb(i + 4, 4) for i in range(8)]  # monomials in x_0..x_i
    assert all(src == rank(8, 3) for src, *_ in top)                     # prefixes of the degree-4 block
    assert peeled(make_plan(4, 7), 33) is None                           # 120 top rows <= 4 * 33
    assert peeled(make_plan(4, 7, ("degree", 1)), 5) is None             # split plans are built in full


@pytest.mark.parametrize("n,L,width", [(16, 16384, 176), (16, 4096, 176), (8, 16384, 495), (2, 45, 15),
                                         (4, 1, 10), (1, 100_000, 1)])
def test_chunk_lengths_are_aligned_balanced_and_within_the_budget(n, L, width):
    """Default chunks: a multiple of CHUNK_ALIGN rows, less than CHUNK_ALIGN rows over the feature
    budget's, no more chunks than the budget needs, padding < CHUNK_ALIGN + 1 rows per chunk; an
    explicit chunk is kept (at most L)."""
    cpu = torch.device("cpu")
    step = chunk_length(n, L, width, cpu)
    chunks = -(-L // step)
    budget_rows = max(1, min(L, max(64, FEATURE_BUDGET_CPU // (n * width))))
    assert step % CHUNK_ALIGN == 0
    assert step < budget_rows + CHUNK_ALIGN and chunks <= -(-L // budget_rows)
    assert 0 <= chunks * step - L < chunks * (CHUNK_ALIGN + 1)
    assert chunk_length(n, L, width, cpu, chunk=37) == min(37, L)


@pytest.mark.parametrize("m,mv,L,chunk", [(3, 1, 7, 4), (2, 1, 9, 4), (3, 2, 6, None)])
def test_gradcheck_float64_peeled_and_row_layout(m, mv, L, chunk):
    """Padding (L not a multiple of the chunk), several chunks, peeled (m c < top block) or not."""
    q, k, v = unit_qkv(2, L, m, mv, 2.0, seed=3)
    k = k + 0.1
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    p = exp_poly("chebyshev", 2.5, 5)

    def f(q, k, v):
        return poly_attention(q, k, v, p, scale=1.0, split=("degree", 0), chunk=chunk)

    assert torch.autograd.gradcheck(f, (q, k, v), eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("m,mv,R,eps", [(3, 1, 1.0, 1e-10), (8, 2, 0.2, 1e-7), (4, 6, 1.0, 1e-10)])
def test_forward_and_gradients_match_exact_attention(m, mv, R, eps):
    """At a tiny eps the kernel is exact attention: forward to 10 eps and every gradient to 100 eps
    (closed form dS = P (.) (dP - rowsum(dout (.) out)))."""
    q, k, v = unit_qkv(3, 45, m, mv, R, seed=5)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    d = torch.randn(3, 45, mv, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = attention(q, k, v, mode="poly", scale=1.0, eps=eps)
    assert (out - explicit_attention(q, k, v, 1.0)).abs().max() < 10 * eps
    got = torch.autograd.grad(out, (q, k, v), d)
    want = reference_attention_grads(q.detach(), k.detach(), v.detach(), d, 1.0)
    for a, b in zip(got, want):
        assert (a - b).norm() / b.norm() < 100 * eps


def test_head_size_8_within_the_certificate_forward_and_backward():
    """The kernel benchmark's regime (head size 8, |logit| <= 1.5, float32): output within the certified
    entry-wise bound of float64 exact attention; gradients within a few times eps."""
    q, k, v = unit_qkv(2, 700, 8, 8, 1.5, seed=6, dtype=torch.float32)
    cert = certify(q, k, 1.0, 1e-3)
    poly = choose_exp_poly(cert.R_used, 1e-3)
    assert peeled(make_plan(8, poly.degree), 9) is not None
    qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))
    out = poly_attention(qg, kg, vg, poly, scale=1.0, norms=cert.norms, split=("degree", 0))
    ref = explicit_attention(q, k, v, 1.0)
    spread = (v.double()[:, None, :, :] - ref[:, :, None, :]).abs().amax(-2)
    eb = poly.error_bound
    assert ((out.double() - ref).abs() - eb / (1 - eb) * spread).max() <= 1e-5  # + float32 rounding
    d = torch.randn_like(v)
    got = torch.autograd.grad(out, (qg, kg, vg), d)
    want = reference_attention_grads(q.double(), k.double(), v.double(), d.double(), 1.0)
    for a, b in zip(got, want):
        assert (a.double() - b).norm() / b.norm() < 5e-3


@pytest.mark.slow
def test_backbone_with_poly_attention_is_exact_attention_to_1e_4():
    """The benchmark's network (hidden 128, depth 4, 4 heads of query/key size 4, QK-norm near tau_max):
    the backbone output with poly attention is the exact-attention output to relative 1e-4, and so is
    the gradient of a loss with respect to every parameter to 1e-3."""
    from latentdit.bench.dit import FULL, build, make_ops, set_mode

    c = {k: v for k, v in FULL.items() if k != "lengths"}
    c["batch"] = 2
    exact = build(c, 256, "exact")
    poly = copy.deepcopy(exact)
    set_mode(poly, "poly")
    outs = {name: make_ops(mdl, c, 256)["backbone"]() for name, mdl in (("exact", exact), ("poly", poly))}
    assert (outs["poly"] - outs["exact"]).norm() / outs["exact"].norm() < 1e-4
    g = torch.Generator().manual_seed(3)
    x, noise = torch.randn(2, 4 * 256, generator=g), torch.randn(2, 4 * 256, generator=g)
    t = torch.tensor([0.1, 2.0])
    grads = {}
    for name, mdl in (("exact", exact), ("poly", poly)):
        mdl.train()
        mdl.zero_grad()
        DSMLoss("edm")(mdl, x, t, noise).backward()
        grads[name] = torch.cat([p.grad.flatten() for p in mdl.backbone.parameters() if p.grad is not None])
    assert (grads["poly"] - grads["exact"]).norm() / grads["exact"].norm() < 1e-3
