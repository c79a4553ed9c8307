"""The efficiency criterion of Sec. 4 (Prop. 4.1-4.2): polynomial approximations of exp with
certified relative error, the degree they need, and when the polynomial method pays off.

Scale convention. Everything here is about logits ``x = scale * <q, k>``. With the certified bound
``R >= max |x|`` the logits are rewritten as ``x = R t`` with ``t in [-1, 1]`` and exp is replaced by
a polynomial ``P(t) ~ exp(R t)`` of degree ``g``. Expanding ``P(<a, b>)`` in monomials of the
head coordinates gives feature maps of rank ``C(m + g, g)`` (symmetric monomials), see
:mod:`latentdit.attention.poly`.

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
from dataclasses import asdict, dataclass

import numpy as np
from numpy.polynomial import chebyshev as npcheb
from scipy.optimize import linprog
from scipy.special import iv

import torch

POLY_KINDS = ("chebyshev", "taylor")
MAX_DEGREE = 24
MAX_RANK = 1 << 15  # larger feature maps are never faster than exact attention at feasible L
R_GRID = 64  # the bound R is rounded up to a grid of step ~1 / R_GRID (relative above 1), see quantize_bound


# --------------------------------------------------------------------------- exp polynomials
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


# --------------------------------------------------------------------------- cost model
# Fitted to measurements on a 2-core AVX2 CPU (torch 2.13, fp32, one thread; see docs/attention.md).
# Only ratios matter for the decision. Exact SDPA costs about EXACT_S_PER_PAIR per (query, key, head);
# the polynomial method costs, per row of L and per side, r1 feature entries to build plus a GEMM
# of r1 rows whose per-row cost stays flat up to width ~25 and then grows like width^0.8.
EXACT_S_PER_PAIR = 2.8e-9
EXACT_S_PER_PAIR_DIM = 0.08e-9     # times (m + m_v)
POLY_S_PER_FEATURE = 0.7e-9        # building one feature entry
POLY_S_PER_GEMM_ROW = 1.8e-9       # one feature entry through a GEMM of width <= 25
POLY_S_PER_CALL = 3.0e-4           # fixed cost of a polynomial call (criterion, launches)


def rank(m: int, g: int) -> int:
    """Number of monomials of degree <= g in m variables: C(m + g, g)."""
    return math.comb(m + g, g)


def split_ranks(m: int, g: int, split: tuple[str, int]) -> tuple[int, int]:
    """(r1, r2) of the two factors of a plan (see latentdit.attention.poly.Plan)."""
    kind, p = split
    if kind == "degree":
        return rank(m, g - min(p, g)), rank(m, min(p, g))
    return rank(p, g), rank(m - p, g)


def _row_cost(m: int, g: int, mv: int, split: tuple[str, int]) -> float:
    """Modelled seconds per row of L per side (keys or queries) and per head."""
    r1, r2 = split_ranks(m, g, split)
    width = r2 * (mv + 1)
    return r1 * (POLY_S_PER_GEMM_ROW * max(1.0, width / 25.0) ** 0.8 + POLY_S_PER_FEATURE) \
        + r2 * (mv + 2) * POLY_S_PER_FEATURE


def best_split(m: int, g: int, mv: int) -> tuple[str, int]:
    """The factorisation of the degree-g kernel with the lowest modelled cost: ("degree", g2) splits
    g = g1 + g2, ("vars", m1) separates the first m1 head coordinates from the rest."""
    cands = [("degree", g2) for g2 in range(0, min(g, 3) + 1)] + [("vars", p) for p in range(1, m)]
    cands = [sp for sp in cands if math.prod(split_ranks(m, g, sp)) <= 16 * rank(m, g)]
    return min(cands, key=lambda sp: (_row_cost(m, g, mv, sp), sp))


def predicted_times(n: int, Lq: int, Lk: int, m: int, mv: int, g: int | None) -> tuple[float, float]:
    """(exact, poly) modelled forward times in seconds for n = batch * heads."""
    exact = n * Lq * Lk * (EXACT_S_PER_PAIR + EXACT_S_PER_PAIR_DIM * (m + mv))
    if g is None:
        return exact, float("inf")
    poly = n * (Lq + Lk) * _row_cost(m, g, mv, best_split(m, g, mv)) + POLY_S_PER_CALL
    return exact, poly


# --------------------------------------------------------------------------- certificate
@dataclass(frozen=True)
class Certificate:
    """Outcome of the criterion for one attention call.

    R: certified bound on max |logit| (after key centering when the data were inspected);
    R_used: R rounded up to the polynomial cache grid; entry_bound: max |entry| of the balanced
    query/key vectors whose inner products are the logits (None when not inspected);
    entry_ratio: entry_bound / sqrt(log L) (Prop. 4.1 wants o(1)); degree, rank: the certified
    polynomial and C(m + g, g); error_bound: its certified relative error; predicted_speedup:
    modelled exact / poly time; ok: the polynomial method is certified *and* predicted faster;
    certified: a degree <= max_degree certifies eps with rank <= MAX_RANK; reason: why not ok
    ('' when ok); code: the reason's kind ("", "no_degree", "rank_too_large", "not_faster").
    """

    ok: bool
    certified: bool
    reason: str
    code: str
    R: float
    R_used: float
    entry_bound: float | None
    sqrt_log_L: float
    entry_ratio: float | None
    degree: int | None
    rank: int | None
    error_bound: float | None
    predicted_speedup: float
    kind: str
    eps: float
    head_dim: int
    Lq: int
    Lk: int
    centered: bool
    norms: tuple[float, float] | None = None  # (max |q_i|, max |k_j - mean k|) when inspected

    def as_dict(self) -> dict:
        return asdict(self)


def default_scale(m: int, scale: float | None) -> float:
    """SDPA's convention: scale=None means 1/sqrt(m)."""
    return 1.0 / math.sqrt(m) if scale is None else float(scale)


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


@torch.no_grad()
def data_logit_bound(q: torch.Tensor, k: torch.Tensor, scale: float) -> tuple[float, float, float, float, float]:
    """Certified bound on max |scale <q_i, k_j - mean k>| from row norms (Cauchy-Schwarz), no L x L
    matrix. Returns (R, max |q_i|, max |k_j - mean k|, max |q entry|, max |k - mean k entry|) with a
    single host synchronisation."""
    q = _upcast(q)
    kc = _upcast(k)
    kc = kc - kc.mean(dim=-2, keepdim=True)
    stats = torch.stack([torch.linalg.vector_norm(q, dim=-1).amax(), torch.linalg.vector_norm(kc, dim=-1).amax(),
                         q.abs().amax(), kc.abs().amax()])
    qa, ka, qi, ki = stats.double().tolist()
    return abs(scale) * qa * ka, qa, ka, qi, ki


def certify(q: torch.Tensor, k: torch.Tensor, scale: float | None = None, eps: float = 1e-3, *,
            logit_bound: float | None = None, v_dim: int | None = None, kind: str = "chebyshev",
            max_degree: int = MAX_DEGREE) -> Certificate:
    """The criterion: a certified logit bound, the degree that guarantees ``eps`` and whether the
    polynomial method is predicted faster than exact attention at this size.

    With ``logit_bound`` the data are not inspected (no synchronisation) and keys are not centred
    (a bound on raw logits can double after centring); otherwise R comes from row norms after
    subtracting the mean key.
    """
    m = q.shape[-1]
    Lq, Lk = q.shape[-2], k.shape[-2]
    mv = m if v_dim is None else v_dim
    n = max(1, math.prod(torch.broadcast_shapes(q.shape[:-2], k.shape[:-2])))
    s = default_scale(m, scale)
    if logit_bound is not None:
        R = float(logit_bound)
        entry = None
        norms = None
        centered = False
    else:
        R, qa, ka, qi, ki = data_logit_bound(q, k, s)
        norms = (qa, ka)
        # balanced vectors q' = q sqrt|s| gamma, k' = k~ sqrt|s| / gamma with max |q'| = max |k'| = sqrt(R)
        gamma = math.sqrt(ka / qa) if qa > 0 and ka > 0 else 1.0
        entry = max(qi * math.sqrt(abs(s)) * gamma, ki * math.sqrt(abs(s)) / gamma)
        centered = True
    if not math.isfinite(R):
        raise ValueError(f"logit bound is not finite ({R}); q or k contains inf/nan")
    R_used = quantize_bound(R)
    sqrt_log_L = math.sqrt(math.log(max(Lq, Lk, 2)))
    poly = choose_exp_poly(R_used, float(eps), kind, max_degree)
    speedup, certified, code = 0.0, False, ""
    if poly is None:
        code = "no_degree"
        reason = (f"no {kind} polynomial of degree <= {max_degree} certifies relative error {eps:g} "
                  f"for |logit| <= {R:.3g}")
    elif rank(m, poly.degree) > MAX_RANK:
        code = "rank_too_large"
        reason = (f"rank C({m}+{poly.degree},{poly.degree}) = {rank(m, poly.degree)} exceeds the maximum "
                  f"rank {MAX_RANK}")
    else:
        certified = True
        exact_t, poly_t = predicted_times(n, Lq, Lk, m, mv, poly.degree)
        speedup = exact_t / poly_t
        reason = "" if speedup >= 1.0 else (
            f"rank C({m}+{poly.degree},{poly.degree}) = {rank(m, poly.degree)} gives no speed-up at "
            f"Lq={Lq}, Lk={Lk} (predicted {speedup:.2g}x)")
        code = "not_faster" if reason else ""
    return Certificate(
        ok=certified and not reason, certified=certified, reason=reason, code=code, R=R,
        R_used=R_used, entry_bound=entry, sqrt_log_L=sqrt_log_L,
        entry_ratio=None if entry is None else entry / sqrt_log_L,
        degree=None if poly is None else poly.degree, rank=None if poly is None else rank(m, poly.degree),
        error_bound=None if poly is None else poly.error_bound, predicted_speedup=speedup, kind=kind,
        eps=float(eps), head_dim=m, Lq=Lq, Lk=Lk, centered=centered, norms=norms)
