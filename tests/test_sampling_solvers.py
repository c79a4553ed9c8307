"""The sampler registry, exact NFE counts, iPNDM and UniPC, and fitted grids, against closed forms.

The data law is N(0, diag(VAR)) (one coordinate off the data subspace): its denoiser is linear,
E[x0 | x_t] = beta VAR x / (beta^2 VAR + sigma), and the probability-flow ODE scales each coordinate
by the ratio of the marginal standard deviations, sqrt(beta'^2 VAR + sigma') / sqrt(beta^2 VAR + sigma).
"""

import math

import pytest
import torch

from latentdit.diffusion import OU
from latentdit.sampling import (NFE_CONVENTION, SAMPLERS, CountingCalls, get_sampler, resolve_grid, sample, spec,
                                time_grid)
from latentdit.sampling.fit import cheapest_path, fit_grid
from latentdit.sampling.multistep import AB_WEIGHTS, adams_bashforth_weights, ipndm, unipc_coefficients

VAR = torch.tensor([2.0, 0.25, 0.0], dtype=torch.float64)
T0, T = 1e-2, 10.0


def gaussian_denoiser(x, t):
    b = OU.beta(t)[:, None]
    return b * VAR * x / (b ** 2 * VAR + OU.sigma(t)[:, None])


def marginal_std(t: float) -> torch.Tensor:
    return (OU.beta(t) ** 2 * VAR + OU.sigma(t)) ** 0.5


def flow_error(fn, ts: torch.Tensor) -> float:
    """Max error of one ODE solve from ts[0] to ts[-1] against the exact Gaussian flow."""
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = fn(gaussian_denoiser, x, ts)
    t1, t0 = float(ts[0]), float(ts[-1])
    return float((out - x * marginal_std(t0) / marginal_std(t1)).abs().max())


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("steps", [1, 2, 5, 7])
def test_every_sampler_makes_exactly_the_nfe_it_reports(name, steps):
    """NFE convention: every call counts; a sampler of ``steps`` steps makes nfe_per_step * steps calls,
    one more with the final denoise, and its callback sees each step once, in order, on the grid."""
    c, seen = CountingCalls(gaussian_denoiser), []
    ts = time_grid(T0, T, steps, spec(name).grid)
    get_sampler(name)(c, torch.randn(4, 3, dtype=torch.float64), ts, callback=seen.append)
    assert c.calls == spec(name).nfe(steps) == spec(name).nfe_per_step * steps
    assert [s["i"] for s in seen] == list(range(steps))
    assert [(s["t"], s["t_next"]) for s in seen] == [(float(ts[k]), float(ts[k + 1])) for k in range(steps)]
    c2 = CountingCalls(gaussian_denoiser)
    sample(c2, (4, 3), sampler=name, steps=steps, T0=T0, T=T, dtype=torch.float64, denoise=True)
    assert c2.calls == spec(name).nfe(steps, denoise=True) == spec(name).nfe_per_step * steps + 1
    assert "every model call counts" in NFE_CONVENTION


@pytest.mark.parametrize("name,steps", [("ipndm", 40), ("ipndm_v", 40), ("unipc", 30)])
def test_new_samplers_reach_the_noised_data_law_at_T0(name, steps):
    """x_T0 ~ N(0, beta(T0)^2 VAR + sigma(T0)) per coordinate, the off-subspace one included."""
    x = sample(gaussian_denoiser, (20000, 3), sampler=name, steps=steps, T0=T0, T=T,
               generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.allclose(x.var(dim=0), marginal_std(T0) ** 2, rtol=0.05), x.var(dim=0)


def _rate(fn, make_grid, n: int) -> float:
    return math.log2(flow_error(fn, make_grid(n)) / flow_error(fn, make_grid(2 * n)))


def test_unipc3_converges_at_fourth_order():
    """UniP-3 is third order and the corrector UniC-3 adds one: error ratio ~2^4 at doubled steps."""
    rate = _rate(get_sampler("unipc"), lambda n: time_grid(0.05, 10.0, n, "logsnr"), 32)
    assert 3.2 < rate < 4.8, rate


def test_ipndm_v_converges_at_fourth_order_from_high_noise():
    """Variable-step Adams-Bashforth 4 on a grid from high noise, where the warm start's low-order
    first steps see an almost constant denoiser: rate near 4 (3.55 at 32 -> 64 steps)."""
    rate = _rate(get_sampler("ipndm_v"), lambda n: time_grid(0.05, 10.0, n, "logsnr"), 32)
    assert 3.0 < rate < 4.8, rate


@pytest.mark.parametrize("order,lo,hi", [(1, 0.8, 1.3), (2, 1.7, 2.4), (4, 1.7, 3.4)])
def test_ipndm_order_on_steps_of_equal_length(order, lo, hi):
    """Karras rho = 1 is uniform in s, where the fixed Adams-Bashforth weights are exact. Orders 1 and
    2 converge at their order; order 4 is limited to 2 by its first-order first step (local error
    O(h^2)) of the lower-order warm start, yet is more accurate than order 2."""
    grid = lambda n: time_grid(0.5, 3.0, n, "karras", rho=1.0)  # noqa: E731
    fn = lambda d, x, ts: ipndm(d, x, ts, order=order)  # noqa: E731
    rate = math.log2(flow_error(fn, grid(32)) / flow_error(fn, grid(64)))
    assert lo < rate < hi, rate
    if order == 4:
        assert flow_error(fn, grid(16)) < 0.2 * flow_error(lambda d, x, ts: ipndm(d, x, ts, order=2), grid(16))


def test_variable_adams_bashforth_weights_reduce_to_the_fixed_ones():
    for p in range(1, 5):
        nodes = [3.0 + 0.5 * j for j in range(p)]  # s falls by 0.5 a step: the newest node first
        assert adams_bashforth_weights(nodes, 3.0, 2.5) == pytest.approx(AB_WEIGHTS[p - 1], abs=1e-12)


def test_unipc_weights_are_exact_for_polynomials():
    """B(h) sum_j rho_j (D_j - D_0) / r_j integrates D(lambda_0 + tau h) = tau^2 exactly against
    e^{-h(1 - tau)} h dtau: the closed form is 2 psi_3(h) / h^2 (times h)."""
    h, r = 0.7, [-1.3, -0.6, 1.0]
    for variant, bh in (("bh2", -math.expm1(-h)), ("bh1", h)):
        rho = unipc_coefficients(r, h, variant)
        approx = bh * sum(c * (rj ** 2) / rj for c, rj in zip(rho, r))
        psi3 = 0.5 * h * h - (h - (-math.expm1(-h)))
        assert approx == pytest.approx(2 * psi3 / h ** 2, rel=1e-12)


def test_cheapest_path_finds_the_equal_spacing_of_a_convex_cost():
    """With c(i, j) = (j - i)^2 the best 4 jumps over 12 fine steps are the equal ones (3 each)."""
    idx = torch.arange(13, dtype=torch.float64)
    cost = (idx[None, :] - idx[:, None]) ** 2
    cost[idx[:, None] >= idx[None, :]] = math.inf
    assert cheapest_path(cost, 4) == [0, 3, 6, 9, 12]
    with pytest.raises(ValueError, match="steps"):
        cheapest_path(cost, 13)


def test_fitted_grid_runs_from_T_to_T0_and_samples_as_an_explicit_grid():
    warm = torch.randn(64, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ts = fit_grid(gaussian_denoiser, warm, 5, T0=T0, T=T, fine_steps=40)
    assert len(ts) == 6 and float(ts[0]) == T and float(ts[-1]) == T0 and (ts[1:] < ts[:-1]).all()
    c = CountingCalls(gaussian_denoiser)
    x = sample(c, (4, 3), sampler="ipndm", steps=5, T0=T0, T=T, grid=ts.tolist(), dtype=torch.float64)
    assert c.calls == 5 and x.shape == (4, 3)
    assert torch.equal(resolve_grid("ipndm", 5, T0, T, ts.tolist()), ts)
    with pytest.raises(ValueError, match="5 steps but steps=7"):
        resolve_grid("ipndm", 7, T0, T, ts.tolist())
    with pytest.raises(ValueError, match="decrease"):
        resolve_grid("ipndm", 2, T0, T, [T, T0, 1.0])


def test_polylambda_grid_is_polynomial_in_lambda():
    """lambda_k = lambda_T0 - (lambda_T0 - lambda_T) (1 - k / n)^power; power = 1 is the logsnr grid."""
    ts = time_grid(T0, T, 8, "polylambda", power=2.0)
    lam = OU.log_snr(ts)
    u = 1 - torch.arange(9, dtype=torch.float64) / 8
    expect = OU.log_snr(torch.tensor(T0)) - (OU.log_snr(torch.tensor(T0)) - OU.log_snr(torch.tensor(T))) * u ** 2
    assert torch.allclose(lam, expect.to(lam.dtype), atol=1e-9)
    assert torch.allclose(time_grid(T0, T, 8, "polylambda", power=1.0), time_grid(T0, T, 8, "logsnr"))


def test_fit_rho_finds_the_best_karras_exponent_of_the_exact_flow():
    """The end-point error against the closed-form flow at the fitted rho is within 10% of the best of a
    scan of rho over the same bracket."""
    from latentdit.sampling.fit import fit_rho

    warm = torch.randn(64, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    rho = fit_rho(gaussian_denoiser, warm, "ipndm", 5, T0=T0, T=T, bounds=(1.0, 40.0), iters=10, fine_steps=60)
    err = lambda r: flow_error(get_sampler("ipndm"), time_grid(T0, T, 5, "karras", rho=r))  # noqa: E731
    assert 1.0 <= rho <= 40.0
    assert err(rho) <= 1.1 * min(err(r) for r in (1.0, 2.0, 3.0, 5.0, 7.0, 10.0, 15.0, 20.0, 30.0, 40.0))
