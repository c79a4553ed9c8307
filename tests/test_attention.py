"""Polynomial-method attention against exact attention computed directly (explicit softmax)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from latentdit.attention import attention, certify, choose_exp_poly
from latentdit.attention.certificate import data_logit_bound
from latentdit.attention.cost import MAX_RANK, best_split, rank, split_ranks
from latentdit.attention.features import make_plan
from latentdit.attention.kernels import poly_attention
from latentdit.attention.polynomials import certified_relative_error, exp_poly, quantize_bound, taylor_error_bound


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def explicit_attention(q, k, v, scale):
    """softmax(scale q k^T) v in float64 with the L x L matrix written out."""
    logits = scale * q.double() @ k.double().transpose(-2, -1)
    return torch.softmax(logits, dim=-1) @ v.double()


def rand_qkv(shape_q, Lk, mv, *, offset=1.0, spread=0.5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(*shape_q, generator=g, dtype=dtype) * spread
    kshape = shape_q[:-2] + (Lk, shape_q[-1])
    k = torch.randn(*kshape, generator=g, dtype=dtype) * spread + offset
    v = torch.randn(*(shape_q[:-2] + (Lk, mv)), generator=g, dtype=dtype)
    return q, k, v


def assert_within_certificate(out, ref, v, error_bound):
    """|out_i - ref_i| <= eb / (1 - eb) max_j |v_j - ref_i| for every query and coordinate."""
    spread = (v.double()[..., None, :, :] - ref[..., :, None, :]).abs().amax(-2)  # (..., Lq, mv)
    bound = error_bound / (1 - error_bound) * spread
    excess = ((out.double() - ref).abs() - bound).max().item()
    assert excess <= 1e-12, f"error exceeds the certified bound by {excess}"


# --------------------------------------------------------------------------- polynomial bounds
def grid_rel_error(coeffs, R, points):
    """max |P(t) exp(-R t) - 1| over ``points`` equispaced t in [-1, 1]: a lower bound on the true
    maximum, computed without the certificate's machinery."""
    t = np.linspace(-1, 1, points)
    return np.abs(np.polyval(np.asarray(coeffs)[::-1], t) * np.exp(-R * t) - 1).max()


@pytest.mark.parametrize("R", [0.3, 1.0, 3.0, 6.0])
@pytest.mark.parametrize("g", [2, 4, 8])
def test_taylor_closed_form_bound_holds_on_a_grid(R, g):
    p = exp_poly("taylor", R, g)
    err = grid_rel_error(p.coeffs, R, 20001)
    assert err <= taylor_error_bound(R, g) * (1 + 1e-9)
    assert err <= p.error_bound * (1 + 1e-9)
    # at t = -1 the remainder is (R^{g+1}/(g+1)!) e^{R - xi R} for some xi in [0, 1]: the bound is
    # attained up to the factor e^R
    assert err >= taylor_error_bound(R, g) * math.exp(-R) * (1 - 1e-9)


@pytest.mark.parametrize("R", [0.5, 1.5, 3.0, 5.0])
@pytest.mark.parametrize("g", [3, 6, 9])
def test_chebyshev_certificate_is_an_upper_bound_and_tight(R, g):
    p = exp_poly("chebyshev", R, g)
    err = grid_rel_error(p.coeffs, R, 200001)
    assert err <= p.error_bound
    assert p.error_bound <= 1.2 * err + 1e-12
    # relative minimax beats the Taylor remainder by orders of magnitude
    assert p.error_bound < taylor_error_bound(R, g)


def test_certificate_catches_a_perturbed_polynomial():
    p = exp_poly("chebyshev", 3.0, 8)
    bad = np.array(p.coeffs)
    bad[5] += 1e-3
    err = grid_rel_error(bad, 3.0, 200001)
    assert certified_relative_error(bad, 3.0) >= err > 10 * p.error_bound


@pytest.mark.parametrize("kind", ["chebyshev", "taylor"])
def test_chosen_degree_is_minimal_monotone_and_positive(kind):
    prev = 0
    for R in [0.25, 0.5, 1.0, 2.0, 3.0, 4.0]:
        p = choose_exp_poly(R, 1e-3, kind)
        assert p is not None and p.error_bound <= 1e-3
        assert p.degree >= prev
        prev = p.degree
        lower = p.degree - (2 if kind == "taylor" else 1)
        if lower >= 1:
            assert exp_poly(kind, R, lower).error_bound > 1e-3
        t = np.linspace(-1, 1, 10001)
        assert np.polyval(p.coeffs[::-1], t).min() > 0  # positivity on the certified interval
        if kind == "taylor":
            assert p.degree % 2 == 0
            assert np.polyval(p.coeffs[::-1], np.linspace(-20, 20, 4001)).min() > 0  # everywhere
    assert choose_exp_poly(3.0, 1e-3, "chebyshev").degree < choose_exp_poly(3.0, 1e-3, "taylor").degree
    assert choose_exp_poly(40.0, 1e-3, kind) is None


def test_quantize_bound_rounds_up():
    for R in [0.0, 0.1, 1.0, 1.0001, 2.9999, 3.0, 3.0001, 7.3, 1e3]:
        assert quantize_bound(R) >= R
        assert quantize_bound(R) - R <= max(1 / 64, R / 63)
    assert len({quantize_bound(x) for x in np.linspace(0.01, 16, 20000)}) < 250


# --------------------------------------------------------------------------- the criterion
@settings(max_examples=60, deadline=None)
@given(m=st.integers(1, 6), Lq=st.integers(1, 40), Lk=st.integers(1, 40),
       scale=st.floats(-3, 3).filter(lambda s: abs(s) > 1e-3), offset=st.floats(-5, 5),
       spread=st.floats(0.01, 4), seed=st.integers(0, 2 ** 16))
def test_certified_bound_is_never_below_true_max_logit(m, Lq, Lk, scale, offset, spread, seed):
    q, k, _ = rand_qkv((2, Lq, m), Lk, 1, offset=offset, spread=spread, seed=seed, dtype=torch.float32)
    R = data_logit_bound(q, k, scale)[0]
    kc = k.double() - k.double().mean(-2, keepdim=True)
    true = (scale * q.double() @ kc.transpose(-2, -1)).abs().max().item()
    assert R * (1 + 1e-5) + 1e-6 >= true
    cert = certify(q, k, scale, 1e-3)
    assert cert.R_used >= cert.R
    assert cert.entry_bound ** 2 * m + 1e-5 >= true  # |<q', k'>| <= m max|q'| max|k'|


def test_certificate_fields():
    q, k, v = rand_qkv((1, 2, 4096, 4), 4096, 4, dtype=torch.float32)
    cert = certify(q, k, None, 1e-3)
    assert cert.certified and cert.ok and cert.code == ""
    assert cert.rank == math.comb(4 + cert.degree, cert.degree)
    assert cert.error_bound <= 1e-3
    assert cert.predicted_speedup > 1
    assert cert.entry_ratio == pytest.approx(cert.entry_bound / math.sqrt(math.log(4096)))
    assert cert.centered and cert.norms is not None
    small = certify(q[..., :64, :], k[..., :64, :], None, 1e-3)
    assert small.certified and not small.ok and small.code == "not_faster"
    big = certify(q * 20, k * 20, None, 1e-3)
    assert not big.certified and big.code == "no_degree" and big.degree is None
    given_bound = certify(q, k, 1.0, 1e-3, logit_bound=2.0)
    assert given_bound.R == 2.0 and not given_bound.centered and given_bound.entry_bound is None
    wide = certify(torch.zeros(1, 8, 16), torch.zeros(1, 8, 16), 1.0, 1e-9, logit_bound=6.0)
    assert wide.code in ("rank_too_large", "no_degree") and not wide.certified
    assert MAX_RANK < rank(16, 12)


def test_best_split_is_a_valid_factorisation():
    for m, g in [(1, 5), (2, 7), (4, 8), (8, 5), (5, 3)]:
        sp = best_split(m, g, m)
        r1, r2 = split_ranks(m, g, sp)
        plan = make_plan(m, g, sp)
        assert (plan.r1, plan.r2) == (r1, r2)
        assert (plan.slot_degree >= 0).sum() == rank(m, g)  # every monomial has one slot


# --------------------------------------------------------------------------- forward accuracy
@pytest.mark.parametrize("m", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("kind", ["chebyshev", "taylor"])
def test_poly_forward_within_certified_error(m, kind):
    # head size 8 with Taylor needs a smaller bound to stay below the maximum rank
    q, k, v = rand_qkv((2, 3, 50, m), 61, 3, seed=m, spread=0.5 if m < 8 or kind == "chebyshev" else 0.3)
    eps = 1e-4
    out = attention(q, k, v, mode="poly", eps=eps, kind=kind)
    ref = explicit_attention(q, k, v, 1 / math.sqrt(m))
    cert = certify(q, k, None, eps, kind=kind)
    assert_within_certificate(out, ref, v, cert.error_bound)
    assert (out - ref).norm() / ref.norm() < 10 * eps


@pytest.mark.parametrize("m,split", [(4, ("degree", 0)), (4, ("degree", 1)), (4, ("degree", 2)), (4, ("vars", 1)),
                                     (4, ("vars", 2)), (4, ("vars", 3)), (3, ("degree", 3)), (5, ("vars", 4))])
@pytest.mark.parametrize("chunk", [None, 7])
def test_every_factorisation_and_chunking_gives_the_same_kernel(m, split, chunk):
    q, k, v = rand_qkv((1, 2, 33, m), 29, 2, seed=3)
    s = 0.7
    R, qa, ka, _, _ = data_logit_bound(q, k, s)
    p = choose_exp_poly(quantize_bound(R), 1e-9)
    out = poly_attention(q, k, v, p, scale=s, split=split, chunk=chunk, norms=(qa, ka))
    ref = explicit_attention(q, k, v, s)
    assert (out - ref).norm() / ref.norm() < 1e-7


def test_cross_attention_broadcast_and_value_width():
    g = torch.Generator().manual_seed(5)
    q = torch.randn(3, 2, 17, 4, generator=g, dtype=torch.float64) * 0.4
    k = torch.randn(1, 2, 45, 4, generator=g, dtype=torch.float64) * 0.4 - 2.0
    v = torch.randn(1, 2, 45, 7, generator=g, dtype=torch.float64)
    out = attention(q, k, v, mode="poly", eps=1e-8)
    assert out.shape == (3, 2, 17, 7)
    ref = F.scaled_dot_product_attention(q, k.expand(3, -1, -1, -1), v.expand(3, -1, -1, -1))
    assert (out - ref).abs().max() < 1e-7
    # no batch dimensions at all, one key
    q2, k2, v2 = q[0, 0], k[0, 0, :1], v[0, 0, :1]
    out2 = attention(q2, k2, v2, mode="poly", eps=1e-6)
    assert torch.allclose(out2, v2.expand(17, 7), atol=1e-12)


def test_scale_convention_and_logit_bound_path():
    q, k, v = rand_qkv((2, 40, 4), 40, 4, offset=0.0, seed=11)
    # scale=None is 1/sqrt(m), like SDPA
    assert torch.allclose(attention(q, k, v, mode="poly", eps=1e-9), explicit_attention(q, k, v, 0.5), atol=1e-8)
    # the paper's scale=1.0, and a negative scale
    for s in (1.0, -0.8):
        assert torch.allclose(attention(q, k, v, mode="poly", scale=s, eps=1e-9), explicit_attention(q, k, v, s),
                              atol=1e-8)
    # QK-norm style: |logit| <= tau^2 by construction, degree chosen without inspecting q, k
    tau = 1.5
    qn, kn = F.normalize(q, dim=-1) * tau, F.normalize(k, dim=-1) * tau
    out = attention(qn, kn, v, mode="poly", scale=1.0, eps=1e-5, logit_bound=tau ** 2)
    ref = explicit_attention(qn, kn, v, 1.0)
    assert_within_certificate(out, ref, v, choose_exp_poly(quantize_bound(tau ** 2), 1e-5).error_bound)


def test_half_precision_inputs():
    q, k, v = rand_qkv((1, 2, 64, 4), 64, 4, seed=2, dtype=torch.float32)
    for dt in (torch.float16, torch.bfloat16):
        out = attention(q.to(dt), k.to(dt), v.to(dt), mode="poly")
        assert out.dtype == dt
        ref = explicit_attention(q.to(dt), k.to(dt), v.to(dt), 0.5)
        assert (out.double() - ref).abs().max() < 2e-2


@pytest.mark.slow
def test_float32_large_L_matches_float64_exact():
    q, k, v = rand_qkv((1, 2, 4096, 4), 4096, 4, seed=4, dtype=torch.float32)
    out = attention(q, k, v, mode="poly", eps=1e-3)
    ref = explicit_attention(q, k, v, 0.5)
    cert = certify(q, k, None, 1e-3)
    assert_within_certificate(out, ref, v, cert.error_bound + 1e-5)  # + float32 rounding
    assert (out - ref).norm() / ref.norm() < 1e-3


# --------------------------------------------------------------------------- backward
@pytest.mark.parametrize("m,split", [(2, ("degree", 0)), (3, ("degree", 1)), (3, ("vars", 1)), (2, ("vars", 1))])
def test_gradcheck_float64(m, split):
    q, k, v = rand_qkv((1, 2, 6, m), 5, 3, seed=7)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    p = exp_poly("chebyshev", 2.0, 5)

    def f(q, k, v):
        return poly_attention(q, k, v, p, scale=0.9, split=split, chunk=4)

    assert torch.autograd.gradcheck(f, (q, k, v), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_gradcheck_public_api_with_construction_time_bound():
    """The QK-norm path of the model: |logit| <= bound by construction, degree fixed in advance."""
    q, k, v = rand_qkv((1, 2, 5, 4), 6, 2, offset=0.0, seed=8)
    q, k = 0.9 * F.normalize(q, dim=-1), 0.9 * F.normalize(k, dim=-1)
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))

    def f(q, k, v):
        return attention(q, k, v, mode="poly", scale=1.0, logit_bound=1.0, eps=1e-6)

    assert torch.autograd.gradcheck(f, (q, k, v), eps=1e-6, atol=1e-8, rtol=1e-6)
    # and the gradients are those of exact attention up to the certified approximation
    d = torch.randn(1, 2, 5, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    gp = torch.autograd.grad(f(q, k, v), (q, k, v), d)
    ge = torch.autograd.grad(explicit_attention(q, k, v, 1.0), (q, k, v), d)
    for a, b in zip(gp, ge):
        assert (a - b).norm() / b.norm() < 1e-5


@pytest.mark.parametrize("m", [2, 4])
def test_gradients_match_exact_attention(m):
    q, k, v = rand_qkv((2, 2, 37, m), 41, 3, seed=9)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    d = torch.randn(2, 2, 37, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    gp = torch.autograd.grad(attention(q, k, v, mode="poly", eps=1e-10), (q, k, v), d)
    ge = torch.autograd.grad(explicit_attention(q, k, v, 1 / math.sqrt(m)), (q, k, v), d)
    for a, b in zip(gp, ge):
        assert (a - b).norm() / b.norm() < 1e-7


def test_stacked_layers_sharing_feature_buffers_match_exact_attention():
    """Two attention layers of the same size in sequence share the per-thread feature buffers
    (forward of the second runs between forward and backward of the first); outputs and gradients
    must still be those of exact attention, and a different size in between must not disturb them."""
    q, k, v = rand_qkv((3, 2, 24, 2), 24, 2, seed=11)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    d = torch.randn(3, 2, 24, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)

    def net(att):
        h = att(q, k, v)
        other = att(q[:, :, :7], k[:, :, :9], v[:, :, :9])  # another size in between
        return att(h + q, k, h) + 0 * other.sum()

    poly = net(lambda a, b, c: attention(a, b, c, mode="poly", eps=1e-10))
    exact = net(lambda a, b, c: explicit_attention(a, b, c, 1 / math.sqrt(2)))
    assert (poly - exact).abs().max() < 1e-8
    gp = torch.autograd.grad(poly, (q, k, v), d)
    ge = torch.autograd.grad(exact, (q, k, v), d)
    for a, b in zip(gp, ge):
        assert (a - b).norm() / b.norm() < 1e-7


def test_inference_mode_then_training_matches_exact_attention():
    """A call under torch.inference_mode followed by one with autograd at the same size (the
    feature buffers kept per thread must not be shared between the two): both match exact."""
    q, k, v = rand_qkv((2, 2, 16, 2), 16, 3, seed=12)
    ref = explicit_attention(q, k, v, 0.5)
    with torch.inference_mode():
        a = attention(q, k, v, mode="poly", scale=0.5, eps=1e-10)
    vg = v.clone().requires_grad_()
    b = attention(q, k, vg, mode="poly", scale=0.5, eps=1e-10)
    (gv,) = torch.autograd.grad(b.sum(), (vg,))
    (ge,) = torch.autograd.grad(explicit_attention(q, k, vg, 0.5).sum(), (vg,))
    assert (a - ref).abs().max() < 1e-8 and (b - ref).abs().max() < 1e-8
    assert torch.allclose(gv, ge, atol=1e-8)


def test_partial_gradients_and_no_grad():
    q, k, v = rand_qkv((1, 1, 20, 4), 20, 4, seed=1)
    v.requires_grad_()
    out = attention(q, k, v, mode="poly", eps=1e-9)
    (gv,) = torch.autograd.grad(out.sum(), (v,))
    (ge,) = torch.autograd.grad(explicit_attention(q, k, v, 0.5).sum(), (v,))
    assert torch.allclose(gv, ge, atol=1e-8)
    with torch.no_grad():
        assert not attention(q, k, v, mode="poly").requires_grad


# --------------------------------------------------------------------------- modes and statistics
