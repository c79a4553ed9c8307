"""Samplers against closed forms: a Gaussian data law has a linear exact denoiser at every t."""

import math

import pytest
import torch

from latentdit.diffusion import beta, sigma
from latentdit.diffusion import OU, score_from_denoised
from latentdit.sampling import SAMPLERS, CountingCalls, get_sampler, nfe_per_step, sample, time_grid

VAR = torch.tensor([2.0, 0.25, 0.0], dtype=torch.float64)  # third coordinate: off the data subspace
T0, T = 1e-2, 10.0


def gaussian_score(x, t):
    """grad log p_t for x0 ~ N(0, diag(VAR)): -x / (beta^2 VAR + sigma)."""
    return -x / (beta(t)[:, None] ** 2 * VAR + sigma(t)[:, None])


def gaussian_denoiser(x, t):
    """E[x0 | x_t] for x0 ~ N(0, diag(VAR)): beta VAR x / (beta^2 VAR + sigma)."""
    b = beta(t)[:, None]
    return b * VAR * x / (b ** 2 * VAR + sigma(t)[:, None])


SLOW = pytest.mark.slow  # 20,000 samples over hundreds of steps: dpm2m stays in the fast loop


@pytest.mark.parametrize("name,steps", [pytest.param("em", 400, marks=SLOW), pytest.param("ei", 400, marks=SLOW),
                                        pytest.param("heun", 100, marks=SLOW), pytest.param("ddim", 80, marks=SLOW),
                                        ("dpm2m", 30), pytest.param("dpm3m", 30, marks=SLOW)])
def test_sampler_reaches_the_noised_data_law_at_T0(name, steps):
    g = torch.Generator().manual_seed(0)
    x = sample(gaussian_denoiser, (20000, 3), sampler=name, steps=steps, T0=T0, T=T, generator=g, dtype=torch.float64)
    tt = torch.tensor(T0, dtype=torch.float64)
    expect = beta(tt) ** 2 * VAR + sigma(tt)  # the law of x_{T0}
    got = x.var(dim=0)
    # sampling error of a variance with n = 20000 is ~1%; discretisation adds a little
    assert torch.allclose(got, expect, rtol=0.06), (got, expect)
    assert x.mean(dim=0).abs().max() < 0.05


@pytest.mark.slow
def test_final_denoise_gives_the_tweedie_law():
    """x_T0 ~ N(0, b^2 v + s) per coordinate; Tweedie's b v / (b^2 v + s) x_T0 has variance
    b^2 v^2 / (b^2 v + s): the off-subspace coordinate (v = 0) collapses to exactly 0."""
    T0_big = 0.3  # large enough that the two laws differ by far more than the sampling error
    g = torch.Generator().manual_seed(1)
    c = CountingCalls(gaussian_denoiser)
    x = sample(c, (20000, 3), sampler="dpm2m", steps=40, T0=T0_big, T=T, generator=g, dtype=torch.float64,
               denoise=True)
    assert c.calls == 41  # the sampler's 40 plus one for the final estimate
    tt = torch.tensor(T0_big, dtype=torch.float64)
    b2, s = beta(tt) ** 2, sigma(tt)
    expect = b2 * VAR ** 2 / (b2 * VAR + s)
    got = x.var(dim=0)
    assert torch.allclose(got[:2], expect[:2], rtol=0.06), (got, expect)
    assert got[2] < 1e-20
    assert not torch.allclose(got[:2], (b2 * VAR + s)[:2], rtol=0.2)


# network evaluations over 7 steps, by each method's definition: Heun's predictor and corrector are two
# per step; Euler-Maruyama, the exponential integrator, DDIM and the multistep solvers (which reuse the
# previous steps' evaluations) one
EXPECTED_NFE_7_STEPS = {"em": 7, "ei": 7, "heun": 14, "ddim": 7, "dpm2m": 7, "dpm3m": 7,
                        "ipndm": 7, "ipndm_v": 7, "unipc": 7}


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_counting_and_nfe(name):
    assert name in EXPECTED_NFE_7_STEPS, f"a new sampler {name!r}: add its evaluations per step here"
    c = CountingCalls(gaussian_denoiser)
    get_sampler(name)(c, torch.randn(4, 3, dtype=torch.float64), time_grid(T0, T, 7, "log"))
    assert c.calls == EXPECTED_NFE_7_STEPS[name]
    assert nfe_per_step(name) * 7 == EXPECTED_NFE_7_STEPS[name]  # the table the benchmarks report NFE with


def test_grids_are_decreasing_and_end_at_T0():
    for kind in ("uniform", "log", "logsnr", "karras"):
        ts = time_grid(T0, T, 13, kind)
        assert len(ts) == 14 and ts[0] == T and ts[-1] == T0
        assert (ts[1:] < ts[:-1]).all()
    ts = time_grid(T0, T, 4, "uniform")
    assert torch.allclose(ts[:-1] - ts[1:], torch.full((4,), (T - T0) / 4, dtype=torch.float64))


def test_bad_sampler_arguments():
    with pytest.raises(ValueError, match="name='dpm2'"):
        get_sampler("dpm2")
    with pytest.raises(ValueError, match="kind='karas'"):
        time_grid(T0, T, 5, "karas")
    with pytest.raises(ValueError, match="rho"):
        time_grid(T0, T, 5, "karras", rho=0.0)
    with pytest.raises(ValueError, match="steps"):
        time_grid(T0, T, 0)
    with pytest.raises(ValueError, match="T0"):
        time_grid(0.0, T, 5)
    with pytest.raises(ValueError, match="T0"):
        time_grid(11.0, T, 5)


def test_em_one_step_formula():
    """y_1 = y_0 + h (y_0/2 + s(y_0, T)) + sqrt(h) z (App. D.1)."""
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    ts = torch.tensor([1.0, 0.5], dtype=torch.float64)
    x = torch.randn(5, 3, dtype=torch.float64)
    out = get_sampler("em")(gaussian_denoiser, x, ts, generator=g1)
    z = torch.randn(5, 3, generator=g2, dtype=torch.float64)
    expect = x + 0.5 * (0.5 * x + gaussian_score(x, torch.full((5,), 1.0, dtype=torch.float64))) + math.sqrt(0.5) * z
    assert torch.allclose(out, expect)


def test_score_from_the_denoiser_is_the_closed_form_score():
    """Eq. (2.5) in Tweedie form, (beta x0_hat - x) / sigma, on the Gaussian law's exact denoiser."""
    x = torch.randn(50, 3, dtype=torch.float64)
    t = torch.linspace(0.01, 5.0, 50, dtype=torch.float64)
    assert torch.allclose(score_from_denoised(x, gaussian_denoiser(x, t), t), gaussian_score(x, t))


def test_karras_grid_is_uniform_in_the_rho_root_of_the_noise_ratio():
    rho = 5.0
    ts = time_grid(T0, T, 9, "karras", rho=rho)
    s = torch.exp(-OU.log_snr(ts)) ** (1 / rho)  # sqrt(sigma) / beta, to the power 1 / rho
    steps = s[:-1] - s[1:]
    assert torch.allclose(steps, steps.mean().expand(9), rtol=1e-9)


def _ode_flow_error(name: str, steps: int) -> float:
    """Max error of one ODE solve against the exact flow of a Gaussian: each coordinate is scaled by
    the ratio of the marginal standard deviations, sqrt((b'^2 v + s') / (b^2 v + s))."""
    t0, t1 = 0.05, 10.0
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = get_sampler(name)(gaussian_denoiser, x, time_grid(t0, t1, steps, "logsnr"))
    std = lambda t: (OU.beta(t) ** 2 * VAR + OU.sigma(t)).sqrt()  # noqa: E731
    return float((out - x * std(t0) / std(t1)).abs().max())


@pytest.mark.parametrize("name,order", [("ddim", 1), ("dpm2m", 2), ("dpm3m", 3)])
def test_ode_solvers_converge_at_their_order(name, order):
    """Halving the step size divides the global error by about 2^order (the final steps of dpm2m and
    dpm3m are of lower order, which costs a constant factor, not the rate)."""
    e1, e2 = _ode_flow_error(name, 32), _ode_flow_error(name, 64)
    rate = math.log2(e1 / e2)
    assert order - 0.6 < rate < order + 0.8, (e1, e2, rate)
