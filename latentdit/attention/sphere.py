"""Features on a sphere: fewer monomials when every query (and every key) has one norm.

With QK-norm each row of q (and of k) of one head has the same norm rho. On the sphere
``|x|^2 = rho^2`` the last coordinate's square is ``x_m^2 = rho^2 - sum_{i<m} x_i^2``, so every
monomial of degree <= g equals, as a function on the sphere, a combination of the monomials whose
last exponent is 0 or 1:

    x^gamma = sum_p rho^(2p) sum_delta R_p[gamma, delta] x^delta     (|x| = rho, exact),

with ``R_p`` integer matrices (from x_m^(2k + e) = x_m^e (rho^2 - s)^k, s = sum_{i<m} x_i^2, by the
binomial and multinomial theorems). There are C(m + g - 1, g) + C(m + g - 2, g - 1) reduced
monomials against C(m + g, g): 204 against 330 at head size 4 and degree 7, 140 against 210 for
the degree <= 6 features of the backward.

The kernel's weights stay on the full monomials: with ``phi = R phi_red`` on the sphere,

    T = sum_j phi(k_j) vh_j^T = R_k T_red,      Y_i = phi(q_i)^T U = phi_red(q_i)^T (R_q^T U),

so the two products over L run on the reduced features and only (r x r_red) matrices of the
radius are applied to the small (r x c) products. The polynomial, its coefficients and hence the
certificate are unchanged: this is the same operator evaluated with fewer features. Gradients
are the Euclidean ones (the derivative coefficients are formed on the full monomials and then
reduced), so a temperature that scales q radially still gets its gradient.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from itertools import combinations_with_replacement

import numpy as np
import torch

from latentdit.attention.cost import rank
from latentdit.attention.features import _monomials

SPHERE_RTOL = 1e-5  # relative spread of the squared row norms within which rows count as on one sphere


@dataclass(frozen=True, eq=False)  # hashed by identity: cached singletons (feature builders key on it)
class SpherePlan:
    """The reduced features and the reduction ``R_p`` (p = 0 .. g // 2) from the full plan's monomials.

    With A the monomials of degree <= g in the first m - 1 coordinates (builder order, degree by
    degree: A[:r_b] has degree <= g - 1, A[:r_c] degree <= g - 2), the reduced monomials are

        [A[:r_b], x_m A[:r_c], A[r_b:], x_m A[r_c:r_b]].

    The first three blocks are built (``r1`` rows; the fields of
    :class:`latentdit.attention.features.FeatureBuilder`); the last is the peeled step ``top``
    (:mod:`latentdit.attention.products`): its GEMMs read A[r_c:r_b] against x_m-scaled columns.
    The degree <= g - 1 monomials, which the backward's derivatives need, are the prefix ``r_low``."""

    m: int
    g: int
    r1: int                      # built rows: |A| + r_c
    r_red: int                   # reduced monomials of degree <= g: |A| + r_b
    r_low: int                   # reduced monomials of degree <= g - 1: r_b + r_c, a prefix
    ops1: tuple
    top: tuple                   # ((r_c, r_b - r_c, m - 1, r1),) or () when empty
    exps: np.ndarray             # (r_red, m) exponents in the reduced order
    reduction: np.ndarray        # (g // 2 + 1, rank(m, g), r_red), float64
    r2: int = 1
    ops2: tuple = ()
    vars1: tuple[int, int] = (0, 0)
    vars2: tuple[int, int] = (0, 0)
    split: tuple[str, int] = ("sphere", 0)


def _powers_of_s(j: int, k: int) -> list[tuple[np.ndarray, int]]:
    """(exponents, multinomial coefficient) of the terms of (x_1^2 + ... + x_k^2)^j."""
    terms = {}
    for combo in combinations_with_replacement(range(k), j):
        e = np.bincount(np.asarray(combo, dtype=np.int64), minlength=k)
        terms[tuple(e)] = math.factorial(j) // math.prod(math.factorial(int(a)) for a in e)
    return [(2 * np.asarray(e, dtype=np.int64), c) for e, c in terms.items()]


def _layout(m: int, g: int) -> tuple[np.ndarray, tuple, tuple, int, int, int]:
    """(reduced exponents, builder steps, peeled steps, r1, r_red, r_low) of :class:`SpherePlan`."""
    A, ops = _monomials(m - 1, g) if m > 1 else (np.zeros((1, 0), dtype=np.int64), [])
    r_a, r_b, r_c = len(A), rank(m - 1, g - 1), rank(m - 1, g - 2) if g >= 2 else 0
    lift = (lambda E, e: np.pad(E, ((0, 0), (0, 1)), constant_values=e))
    exps = np.concatenate([lift(A[:r_b], 0), lift(A[:r_c], 1), lift(A[r_b:], 0), lift(A[r_c:r_b], 1)])
    low_ops = [op for op in ops if op[3] < r_b]  # A of degree <= g - 1, then x_m A[:r_c], then A's top degree
    steps = low_ops + ([(0, r_c, m - 1, r_b)] if r_c else []) + [(s, c, i, d + r_c) for s, c, i, d in ops if d >= r_b]
    top = ((r_c, r_b - r_c, m - 1, r_a + r_c),) if r_b > r_c else ()
    return exps, tuple(steps), top, r_a + r_c, r_a + r_b, r_b + r_c


@functools.lru_cache(maxsize=None)
def sphere_plan(m: int, g: int) -> SpherePlan:
    """The reduced features of degree g >= 1 in m >= 1 coordinates and their reduction."""
    if m < 1 or g < 1:
        raise ValueError(f"sphere features need head size >= 1 and degree >= 1, got {m} and {g}")
    full, _ = _monomials(m, g)
    red, steps, top, r1, r_red, r_low = _layout(m, g)
    index = {tuple(e): i for i, e in enumerate(red.tolist())}
    R = np.zeros((g // 2 + 1, len(full), len(red)))
    for a, gamma in enumerate(full):
        k, e = divmod(int(gamma[-1]), 2)
        for p in range(k + 1):  # (rho^2 - s)^k = sum_p C(k, p) rho^(2p) (-s)^(k - p)
            j = k - p
            sign = math.comb(k, p) * (-1) ** j
            for ex, mult in ([(np.zeros(m - 1, dtype=np.int64), 1)] if j == 0 else _powers_of_s(j, m - 1)):
                delta = tuple(int(u) for u in gamma[:-1] + ex) + (e,)
                R[p, a, index[delta]] += sign * mult
    assert len(full) == rank(m, g) and len(index) == r_red and red[:r_low].sum(1).max() <= g - 1
    assert r_low == r_red or red[r_low:].sum(1).min() == g
    return SpherePlan(m, g, r1, r_red, r_low, steps, top, red, R, vars1=(0, m))


def reduction_matrix(plan: SpherePlan, rho2: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """R(rho^2) = sum_p rho^(2p) R_p per batch entry: rho2 (n,) -> (n, rank(m, g), r_red)."""
    Rp = torch.as_tensor(plan.reduction, dtype=dtype, device=rho2.device)
    powers = rho2.to(dtype)[:, None] ** torch.arange(Rp.shape[0], device=rho2.device, dtype=dtype)
    return torch.einsum("np,pab->nab", powers, Rp)


@torch.no_grad()
def common_radius(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(rho^2 (n,), f (n, L, 1)) for x (n, L, m) whose rows' squared norms spread by at most
    SPHERE_RTOL (relative) within each batch entry: rho^2 their mean, in float64, and f = rho / |x_i|,
    which moves each row onto the sphere of radius rho, where the reduction is exact; None when
    some entry spreads more. One host synchronisation.

    Without the move, the reduction evaluated at a row off the sphere by a relative spread s errs by
    about 40 s (head size 4, degree 7) to 60 s (head size 2) per kernel entry; with it the inputs
    change by at most s / 2, so a logit of size R changes by at most R s / 2 (1.4e-5 at R = 2.8,
    s = 1e-5, against the certificate's eps = 1e-3; QK-norm rows in float32 spread by about 1e-6)."""
    sq = (x * x).sum(-1)  # not linalg.vector_norm: slow over a strided last dimension (m along L)
    lo, hi = sq.aminmax(dim=-1)
    if bool(((hi - lo) > SPHERE_RTOL * hi.clamp_min(1e-30)).any()):
        return None
    rho2 = sq.double().mean(-1)
    scale = (rho2.to(sq.dtype)[:, None] / sq.clamp_min(torch.finfo(sq.dtype).tiny)).sqrt_()
    return rho2, torch.where(sq > 0, scale, torch.ones_like(scale)).unsqueeze(-1)


def reduce_cols(Mt: torch.Tensor, R: torch.Tensor, r_red: int | None = None) -> torch.Tensor:
    """Coefficients on full monomials -> on reduced ones: (n, a, r) -> (n, a, r_red), Mt R[:, :r, :r_red]
    (phi^T M = phi_red^T R^T M on the sphere; the first r monomials, of degree <= some d, reduce
    to the reduced ones of degree <= d, a prefix), computed in R's dtype."""
    return torch.bmm(Mt.to(R.dtype), R[:, :Mt.shape[-1], :r_red]).to(Mt.dtype)


def expand_cols(Mt: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """Sums over reduced features -> over full ones: (n, a, r_red) -> (n, a, r), Mt R^T
    (sum_j phi(x_j) a_j^T = R sum_j phi_red(x_j) a_j^T), in R's dtype."""
    return torch.bmm(Mt.to(R.dtype), R[:, :, :Mt.shape[-1]].transpose(1, 2))
