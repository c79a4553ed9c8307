"""Features on a sphere (latentdit.attention.sphere): the reduction against monomials computed
directly, the reduced kernel against the full one and against exact attention, and the layouts
the attention block relies on."""

import math

import pytest
import torch

from latentdit.attention import attention, sdpa
from latentdit.attention.features import _monomials, make_plan
from latentdit.attention.kernels import poly_attention, sphere_inputs
from latentdit.attention.polynomials import choose_exp_poly
from latentdit.attention.sphere import common_radius, reduction_matrix, sphere_plan
from latentdit.models.blocks import DiTBlock


def _monomial_values(x: torch.Tensor, exps) -> torch.Tensor:
    return torch.stack([torch.prod(x ** torch.as_tensor(e), -1) for e in exps], -1)


@pytest.mark.parametrize("m,g", [(4, 7), (2, 5), (3, 4), (8, 3), (1, 3)])
def test_reduction_reproduces_every_monomial_on_the_sphere(m, g):
    """x^gamma = sum_delta R(rho^2)[gamma, delta] x^delta for |x| = rho, with the monomials evaluated
    directly (closed form), and the reduced count C(m+g-1, g) + C(m+g-2, g-1)."""
    plan = sphere_plan(m, g)
    full, _ = _monomials(m, g)
    red = plan.exps
    assert plan.r_red == len(red) == len({tuple(e) for e in red.tolist()})
    assert plan.r_red == math.comb(m + g - 1, g) + (math.comb(m + g - 2, g - 1) if m > 1 else 1)
    assert (red[:, -1] <= 1).all() and (red.sum(1) <= g).all()
    assert red[:plan.r_low].sum(1).max() == (min(g - 1, 1) if m == 1 else g - 1)
    assert plan.r_low == (red.sum(1) <= g - 1).sum()
    rho = torch.tensor([0.3, 0.8, 1.0], dtype=torch.float64)
    x = torch.nn.functional.normalize(torch.randn(3, 7, m, dtype=torch.float64), dim=-1) * rho[:, None, None]
    R = reduction_matrix(plan, rho ** 2)
    want = _monomial_values(x, full)
    got = torch.einsum("nab,nlb->nla", R, _monomial_values(x, red))
    assert torch.allclose(got, want, atol=1e-13, rtol=0)
    off = torch.nn.functional.normalize(torch.randn(3, 7, m, dtype=torch.float64), dim=-1) * 1.3
    if m > 1 and g >= 2:  # off the sphere the identity must fail: the reduction uses |x| = rho
        assert not torch.allclose(torch.einsum("nab,nlb->nla", R, _monomial_values(off, red)),
                                  _monomial_values(off, full), atol=1e-6)


def _qk(shape, tau, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.functional.normalize(torch.randn(*shape, generator=g, dtype=dtype), dim=-1) * tau
            for _ in range(2)]


@pytest.mark.parametrize("m,mv,R", [(4, 32, 2.8), (2, 8, 2.0), (4, 16, 1.0)])
def test_sphere_kernel_is_the_full_kernel_with_fewer_features(m, mv, R):
    """Outputs and all gradients (a radial one through tau included) equal the full-feature kernel's
    to rounding, and the output is within the certified eps of exact softmax attention."""
    eps = 1e-3
    poly = choose_exp_poly(R, eps)
    tau = torch.tensor([1.0, 1.2, 0.7], dtype=torch.float64).sqrt()
    g = torch.Generator().manual_seed(1)
    raw = [torch.randn(2, 3, 120, m, generator=g, dtype=torch.float64) for _ in range(2)]
    v0 = torch.randn(2, 3, 120, mv, generator=g, dtype=torch.float64)
    w = torch.randn(2, 3, 120, mv, generator=g, dtype=torch.float64)
    got = {}
    for sphere in (False, True):
        t = tau.clone().requires_grad_()
        v = v0.clone().requires_grad_()
        q, k = (torch.nn.functional.normalize(z, dim=-1) * t[:, None, None] for z in raw)
        out = poly_attention(q, k, v, poly, scale=R, center=False, sphere=sphere)
        (out * w).sum().backward()
        got[sphere] = (out.detach(), v.grad, t.grad)
    for a, b in zip(got[False], got[True]):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    q, k = (torch.nn.functional.normalize(z, dim=-1) * tau[:, None, None] for z in raw)
    exact = sdpa(q, k, v0, scale=R)
    spread = (v0.amax(-2, keepdim=True) - v0.amin(-2, keepdim=True))
    assert ((got[True][0] - exact).abs() <= eps / (1 - eps) * spread).all()
    plan = make_plan(m, poly.degree)
    assert sphere_inputs(plan, q.reshape(6, 120, m), k.reshape(6, 120, m), mv + 1) is not None


def test_rows_of_differing_norms_take_the_full_features():
    q, k = _qk((4, 50, 4), 1.0)
    k2 = k.clone()
    k2[1, 3] *= 1.01
    plan = make_plan(4, 7)
    assert common_radius(q) is not None and common_radius(k2) is None
    assert sphere_inputs(plan, q, k2, 9) is None
    poly = choose_exp_poly(1.0, 1e-3)
    v = torch.randn(4, 50, 8, dtype=torch.float64)
    a = poly_attention(q, k2, v, poly, scale=1.0, center=False, sphere=True)
    b = poly_attention(q, k2, v, poly, scale=1.0, center=False, sphere=False)
    assert torch.equal(a, b)


def test_batched_output_merges_heads_without_a_copy():
    """(batch, heads) inputs: the output is stored heads-last, so the block's head merge is a view."""
    q, k = _qk((2, 4, 64, 4), 1.2, dtype=torch.float32)
    v = torch.randn(2, 64, 4, 8).transpose(1, 2)  # a strided view, as the block's fused projection gives
    out = attention(q, k, v, mode="poly", scale=1.0, logit_bound=1.44, qk_sphere=True)
    merged = out.transpose(1, 2).reshape(2, 64, 32)
    assert merged.data_ptr() == out.data_ptr() and merged._base is not None
    exact = sdpa(q, k, v, scale=1.0)
    assert (out - exact).abs().max() < 1e-3 * (v.max() - v.min())


def test_block_qk_norm_is_tau_times_the_unit_vector():
    """q, k from the block's transposed QK-norm equal tau x / |x| per head (closed form)."""
    blk = DiTBlock(32, 4, 2.0, qk_norm=True, qk_dim=2, attention_mode="poly")
    with torch.no_grad():
        blk.tau_raw.copy_(torch.tensor([0.0, 1.0, -1.0, 2.0]))
    qk = torch.randn(3, 10, 2 * 4 * 2)
    q, k = blk.qk_normalized(qk)
    tau = blk.temperature()
    raw = qk.view(3, 10, 2, 4, 2)
    for got, part in ((q, raw[:, :, 0]), (k, raw[:, :, 1])):
        want = part / part.norm(dim=-1, keepdim=True) * tau[None, None, :, None]
        assert torch.allclose(got, want.transpose(1, 2), atol=1e-6)


def test_auto_prices_the_sphere_features_for_qk_norm():
    """An implementation check of the cost model (not evidence): with QK-norm the criterion prices
    204 features instead of 330 at head size 4 and degree 7, so it predicts a larger speed-up."""
    from latentdit.attention import certify

    q = torch.empty(4, 4, 4096, 4, device="meta")
    plain = certify(q, q, 1.0, 1e-3, logit_bound=2.8, v_dim=32)
    on_sphere = certify(q, q, 1.0, 1e-3, logit_bound=2.8, v_dim=32, sphere=True)
    assert plain.degree == on_sphere.degree == 7 and plain.rank == on_sphere.rank == 330
    assert on_sphere.predicted_speedup > 1.3 * plain.predicted_speedup


def test_rows_near_the_sphere_are_moved_onto_it_within_the_logit_bound():
    """Rows whose squared norms spread by s <= SPHERE_RTOL take the sphere's features after being
    scaled onto the exact sphere: every logit moves by at most R s / 2, so each output coordinate
    moves by at most about R s times the values' range (closed form), far inside eps."""
    from latentdit.attention.sphere import SPHERE_RTOL

    R, s = 2.8, 0.8 * SPHERE_RTOL
    poly = choose_exp_poly(R, 1e-3)
    g = torch.Generator().manual_seed(3)
    q, k = (torch.nn.functional.normalize(torch.randn(2, 3, 200, 4, generator=g, dtype=torch.float64), dim=-1)
            * torch.sqrt(1 + s * torch.rand(2, 3, 200, 1, generator=g, dtype=torch.float64)) for _ in range(2))
    v = torch.randn(2, 3, 200, 32, generator=g, dtype=torch.float64)
    assert sphere_inputs(make_plan(4, poly.degree), q.reshape(6, 200, 4), k.reshape(6, 200, 4), 33) is not None
    a = poly_attention(q, k, v, poly, scale=R, center=False, sphere=True)
    b = poly_attention(q, k, v, poly, scale=R, center=False, sphere=False)
    spread = v.amax(-2, keepdim=True) - v.amin(-2, keepdim=True)
    assert ((a - b).abs() <= 2 * R * s * spread).all()
    moved = []  # the rows scaled onto the sphere of their mean squared norm (closed form)
    for x in (q, k):
        sq = x.square().sum(-1, keepdim=True)
        moved.append(x * (sq.mean(-2, keepdim=True) / sq).sqrt())
    exact_move = poly_attention(*moved, v, poly, scale=R, center=False, sphere=False)
    assert ((a - exact_move).abs() <= 1e-11 * spread).all()  # the reduction is exact on the sphere
    assert ((b - exact_move).abs() > 1e-11 * spread).any()  # and these rows were off it
