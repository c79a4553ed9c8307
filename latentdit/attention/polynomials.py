"""Polynomial approximations of exp with certified relative error, and the degree they need.

Scale convention. Everything here is about logits ``x = scale * <q, k>``. With the certified bound
``R >= max |x|`` the logits are rewritten as ``x = R t`` with ``t in [-1, 1]`` and exp is replaced by
a polynomial ``P(t) ~ exp(R t)`` of degree ``g``. Expanding ``P(<a, b>)`` in monomials of the
head coordinates gives feature maps of rank ``C(m + g, g)`` (symmetric monomials), see
:mod:`latentdit.attention.features`.

Error convention. ``error_bound`` is a certified bound on ``max_{|t| <= 1} |P(t) exp(-R t) - 1|``,
the relative error of every kernel entry. It implies for every query ``i`` and output coordinate

    |out_i - exact_i| <= error_bound / (1 - error_bound) * max_j |v_j - exact_i|,

so ``eps`` is a relative error measured against the spread of the values. Since the bound is
relative and below 1, ``P > 0`` on ``[-1, 1]``: the normaliser can never vanish (the positivity
guarantee of the Chebyshev variant; even-degree Taylor is positive on the whole line).

Two polynomial families:

- ``"taylor"``: ``P(t) = sum_{d <= g} (R t)^d / d!`` with even ``g``; Lagrange remainder gives the
  closed-form relative bound ``R^{g+1} e^R / (g+1)!``.
- ``"chebyshev"``: the minimiser of the *relative* error on ``[-1, 1]`` (a weighted minimax problem
  solved as a linear programme in the Chebyshev basis). Its error is about ``e^R`` times smaller
  than the truncated Chebyshev series and ``~2^g e^R`` times smaller than Taylor, so for
  ``R = 3, eps = 1e-3`` it needs degree 8 (rank 495 at head size 4) where Taylor needs 14 (3060).
  The bound is certified independently of how the polynomial was found
  (:func:`certified_relative_error`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from numpy.polynomial import chebyshev as npcheb
from scipy.optimize import linprog
from scipy.special import iv

POLY_KINDS = ("chebyshev", "taylor")
MAX_DEGREE = 24
R_GRID = 64  # the bound R is rounded up to a grid of step ~1 / R_GRID (relative above 1), see quantize_bound


@dataclass(frozen=True)
class ExpPoly:
    """A polynomial ``P(t) = sum_d coeffs[d] t^d`` approximating ``exp(R t)`` on ``[-1, 1]``."""

    kind: str
    R: float
    degree: int
    coeffs: tuple[float, ...]
    error_bound: float  # certified max relative error on [-1, 1]


def taylor_error_bound(R: float, g: int) -> float:
    """Relative Lagrange remainder of the degree-g Taylor polynomial of exp on [-R, R].

    For x in [-R, 0] the remainder is at most |x|^{g+1}/(g+1)! and exp(x) >= e^{-R}; for x > 0 it
    is at most e^x x^{g+1}/(g+1)!. Hence the relative error is <= R^{g+1} e^R / (g+1)!.
    """
    return math.exp((g + 1) * math.log(R) + R - math.lgamma(g + 2)) if R > 0 else 0.0


def _taylor_coeffs(R: float, g: int) -> np.ndarray:
    return np.array([R ** d / math.factorial(d) for d in range(g + 1)])


def _minimax_coeffs(R: float, g: int, grid: int | None = None) -> np.ndarray:
    """Monomial coefficients (in t) of the best relative approximation of exp(R t) on [-1, 1].

    min_c max_i |sum_n c_n T_n(t_i) e^{-R t_i} - 1| over Chebyshev-Lobatto points t_i, as an LP.
    Falls back to Chebyshev interpolation if the LP solver fails.
    """
    grid = min(2000, 40 * (g + 1)) if grid is None else grid
    t = np.cos(np.pi * np.arange(grid + 1) / grid)
    A = npcheb.chebvander(t, g) * np.exp(-R * t)[:, None]
    ones = np.ones((grid + 1, 1))
    a_ub = np.vstack([np.hstack([A, -ones]), np.hstack([-A, -ones])])
    b_ub = np.concatenate([np.ones(grid + 1), -np.ones(grid + 1)])
    cost = np.zeros(g + 2)
    cost[-1] = 1.0
    res = linprog(cost, A_ub=a_ub, b_ub=b_ub, bounds=[(None, None)] * (g + 2), method="highs")
    if res.status == 0:
        cheb = res.x[:-1]
    else:  # pragma: no cover - the LP is tiny and well conditioned
        cheb = npcheb.chebinterpolate(lambda s: np.exp(R * s), g)
    return npcheb.cheb2poly(cheb)


@functools.lru_cache(maxsize=None)
def _poly_to_cheb_matrix(g: int) -> np.ndarray:
    """Columns: Chebyshev coefficients of t^k, k = 0..g."""
    cols = []
    for k in range(g + 1):
        col = npcheb.poly2cheb(np.eye(g + 1)[k])
        cols.append(np.pad(col, (0, g + 1 - len(col))))
    return np.stack(cols, axis=1)


def certified_relative_error(coeffs: np.ndarray | tuple[float, ...], R: float, pieces: int = 256) -> float:
    """Rigorous upper bound on max_{t in [-1, 1]} |P(t) exp(-R t) - 1| (up to float64 rounding,
    which is accounted for by a margin).

    [-1, 1] is cut into ``pieces`` intervals c + h s, s in [-1, 1]. On each, P(c + h s) is expanded
    in Chebyshev polynomials T_n(s) (exact algebra) and so is exp(R (c + h s)) =
    e^{Rc} (I_0(Rh) + 2 sum_{n>=1} I_n(Rh) T_n(s)) (modified Bessel functions). Since |T_n| <= 1,
    |P - exp| <= sum_{n <= g} |p_n - e^{Rc} b_n| + e^{Rc} sum_{n > g} b_n on the piece, and
    exp >= e^{R (c - h)} there.
    """
    c = np.asarray(coeffs, dtype=np.float64)
    g = len(c) - 1
    if R > 700 or not np.isfinite(c).all():  # exp(R) overflows float64: nothing can be certified
        return math.inf
    h = 1.0 / pieces
    centers = -1.0 + h * (2 * np.arange(pieces) + 1)
    # coefficients of P(center + h s) in s: sum_{d >= k} c_d C(d, k) center^{d-k} h^k
    binom = np.array([[math.comb(d, k) for d in range(g + 1)] for k in range(g + 1)], dtype=np.float64)
    shifted = np.zeros((pieces, g + 1))
    for k in range(g + 1):
        d = np.arange(k, g + 1)
        shifted[:, k] = (centers[:, None] ** (d - k)[None, :]) @ (c[k:] * binom[k, k:]) * h ** k
    cheb_p = shifted @ _poly_to_cheb_matrix(g).T  # (pieces, g+1) Chebyshev coefficients in s
    rh = R * h
    n = np.arange(g + 1)
    bessel = iv(n, rh) * np.where(n == 0, 1.0, 2.0)
    tail = float(2.0 * iv(np.arange(g + 1, g + 60), rh).sum())
    scale = np.exp(R * centers)
    abs_err = np.abs(cheb_p - scale[:, None] * bessel[None, :]).sum(axis=1) + scale * tail
    rel = abs_err / np.exp(R * (centers - h))
    margin = 64 * np.finfo(np.float64).eps * (np.abs(c).sum() + math.exp(R)) * math.exp(R)
    return float(rel.max() + margin)


def quantize_bound(R: float) -> float:
    """Round R up (never down) to the grid used for caching fitted polynomials: multiples of
    1 / R_GRID up to 1, then a geometric grid with ratio exp(1 / R_GRID) (about 180 values up to
    R = 16), so that a bound that drifts during training refits only a bounded number of times."""
    R = float(R) * (1.0 + 1e-9)
    if not R > 0:
        return 0.0
    if not math.isfinite(R):
        return R
    if R <= 1.0:
        return math.ceil(R * R_GRID) / R_GRID
    q = math.exp(math.ceil(math.log(R) * R_GRID) / R_GRID)
    return q if q >= R else math.exp((math.ceil(math.log(R) * R_GRID) + 1) / R_GRID)


@functools.lru_cache(maxsize=None)
def exp_poly(kind: str, R: float, degree: int) -> ExpPoly:
    """The ``kind`` polynomial of the given degree for exp(R t) on [-1, 1], with its certificate."""
    if kind not in POLY_KINDS:
        raise ValueError(f"unknown polynomial kind {kind!r}; choose one of {POLY_KINDS}")
    if R <= 0:
        return ExpPoly(kind, 0.0, 0, (1.0,), 0.0)
    if R > 700:
        raise ValueError(f"no polynomial can be certified for |logit| <= {R:g} (exp overflows float64)")
    if kind == "taylor":
        c = _taylor_coeffs(R, degree)
        bound = min(taylor_error_bound(R, degree), certified_relative_error(c, R))
    else:
        c = _minimax_coeffs(R, degree)
        bound = certified_relative_error(c, R)
    return ExpPoly(kind, float(R), degree, tuple(float(x) for x in c), bound)


def _log_minimax_estimate(R: float, g: int) -> float:
    """log of 2 (R/2)^{g+1} / (g+1)!, the asymptotic relative minimax error of degree g on [-R, R]
    (the size of the first neglected Chebyshev coefficient, 2 I_{g+1}(R)). Measured: the certified
    error of the fitted polynomial lies within a factor 0.1-2 of it for R <= 10."""
    return math.log(2) + (g + 1) * math.log(R / 2) - math.lgamma(g + 2)


def _degree_estimate(R: float, eps: float, max_degree: int = MAX_DEGREE) -> int:
    """Smallest g <= max_degree whose estimated relative minimax error is <= eps."""
    g = 0
    while g < max_degree and _log_minimax_estimate(R, g) > math.log(eps):
        g += 1
    return g


# beyond this factor between the estimate at the maximum degree and eps no polynomial is fitted
# (the fit would be wasted work, and exp(R) overflows float64 for R > 709)
_HOPELESS = 1e3


@functools.lru_cache(maxsize=4096)
def choose_exp_poly(R: float, eps: float, kind: str = "chebyshev", max_degree: int = MAX_DEGREE) -> ExpPoly | None:
    """The lowest-degree polynomial of ``kind`` whose certified relative error on [-R, R] is <= eps,
    or None if none up to ``max_degree`` certifies (Taylor: even degrees only, so P > 0 everywhere).

    Hopeless cases are rejected before fitting anything: Taylor when its error at t = -1, at least
    R^{g+1} e^{-R} / (g+1)!, exceeds eps at the maximum degree; Chebyshev when the asymptotic
    minimax error at the maximum degree exceeds eps by more than a factor ``_HOPELESS``.
    """
    if kind not in POLY_KINDS:
        raise ValueError(f"unknown polynomial kind {kind!r}; choose one of {POLY_KINDS}")
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps}")
    R = float(R)
    if not math.isfinite(R):
        return None
    if R <= 0:
        return exp_poly(kind, 0.0, 0)
    top = max_degree - max_degree % 2 if kind == "taylor" else max_degree
    if top < 1:
        return None
    if kind == "taylor":
        # lower bound on the Taylor error: the remainder at t = -1 is R^{g+1} e^{-xi} / (g+1)!, xi <= R
        if (top + 1) * math.log(R) - R - math.lgamma(top + 2) > math.log(eps):
            return None
        for g in range(2, top + 1, 2):
            if taylor_error_bound(R, g) * math.exp(-R) > eps:  # certainly not enough
                continue
            p = exp_poly(kind, R, g)
            if p.error_bound <= eps:
                return p
        return None
    if _log_minimax_estimate(R, top) > math.log(eps * _HOPELESS) or R > 700:
        return None
    g = max(1, _degree_estimate(R, eps, top))
    if exp_poly(kind, R, g).error_bound <= eps:  # walk down while it still certifies
        while g > 1 and exp_poly(kind, R, g - 1).error_bound <= eps:
            g -= 1
        return exp_poly(kind, R, g)
    while g < top:  # walk up until it certifies
        g += 1
        if exp_poly(kind, R, g).error_bound <= eps:
            return exp_poly(kind, R, g)
    return None
