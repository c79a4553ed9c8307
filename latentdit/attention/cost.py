"""The cost model of the polynomial method: feature-map ranks, factorisations of the kernel and
predicted forward times, used to decide whether the polynomial method pays off at a given size.

Fitted to measurements on a 2-core AVX2 CPU (torch 2.13, fp32, one thread; see docs/attention.md).
Only ratios matter for the decision. Exact SDPA costs about EXACT_S_PER_PAIR per (query, key, head);
the polynomial method costs, per row of L and per side, r1 feature entries to build plus a GEMM
of r1 rows whose per-row cost stays flat up to width ~25 and then grows like width^0.8.
"""

from __future__ import annotations

import functools
import math

MAX_RANK = 1 << 15  # larger feature maps are never faster than exact attention at feasible L
EXACT_S_PER_PAIR = 2.8e-9
EXACT_S_PER_PAIR_DIM = 0.08e-9     # times (m + m_v)
POLY_S_PER_FEATURE = 0.7e-9        # building one feature entry
POLY_S_PER_GEMM_ROW = 1.8e-9       # one feature entry through a GEMM of width <= 25
POLY_S_PER_KRON = 2.0e-9           # one entry of the row-wise Kronecker product F2 (x) [V, 1] of a split
POLY_S_PER_CALL = 3.0e-4           # fixed cost of a polynomial call (criterion, launches)


def rank(m: int, g: int) -> int:
    """Number of monomials of degree <= g in m variables: C(m + g, g)."""
    return math.comb(m + g, g)


def sphere_rank(m: int, g: int) -> int:
    """Monomials of degree <= g in m variables with the last exponent <= 1: C(m + g - 1, g) +
    C(m + g - 2, g - 1), the features on a sphere (:mod:`latentdit.attention.sphere`)."""
    return rank(m - 1, g) + rank(m - 1, g - 1) if g >= 1 else 1


def split_ranks(m: int, g: int, split: tuple[str, int]) -> tuple[int, int]:
    """(r1, r2) of the two factors of a plan (see latentdit.attention.features.Plan); ("sphere", 0):
    the reduced features of inputs on spheres, unsplit."""
    kind, p = split
    if kind == "sphere":
        return sphere_rank(m, g), 1
    if kind == "degree":
        return rank(m, g - min(p, g)), rank(m, min(p, g))
    return rank(p, g), rank(m - p, g)


def peels(m: int, g: int, c: int) -> bool:
    """Whether the unsplit kernel peels its top degree (:mod:`latentdit.attention.products`): when the
    degree-g block has more rows than the m scaled copies of [V, 1] (width c) have columns."""
    return g >= 2 and rank(m, g) - rank(m, g - 1) > m * c


def _row_cost(m: int, g: int, mv: int, split: tuple[str, int]) -> float:
    """Modelled seconds per row of L per side (keys or queries) and per head.

    A split (r2 > 1) also builds and contracts the row-wise Kronecker product of r2 (mv + 1)
    entries (elementwise, memory bound): at m = 2, mv = 8, g = 7 it makes ("degree", 1) 1.7x slower
    than the unsplit plan in the forward pass and 2.4x in training, at L = 64 and at L = 4096.
    The unsplit plan, when it peels, builds only the degree <= g - 1 features and m scaled copies
    of [V, 1]."""
    r1, r2 = split_ranks(m, g, split)
    width = r2 * (mv + 1)
    kron = r2 * (mv + 2) * POLY_S_PER_FEATURE + (r2 * (mv + 1) * POLY_S_PER_KRON if r2 > 1 else 0.0)
    built = r1
    if split == ("degree", 0) and peels(m, g, mv + 1):
        built, kron = rank(m, g - 1), kron + m * (mv + 1) * POLY_S_PER_KRON
    return r1 * POLY_S_PER_GEMM_ROW * max(1.0, width / 25.0) ** 0.8 + built * POLY_S_PER_FEATURE + kron


@functools.lru_cache(maxsize=None)
def _ranked_splits(m: int, g: int, mv: int) -> tuple[tuple[str, int], ...]:
    """The factorisations of the degree-g kernel whose slot table stays within 16 times the rank,
    cheapest modelled cost first: ("degree", g2) splits g = g1 + g2, ("vars", m1) separates the
    first m1 head coordinates from the rest."""
    cands = [("degree", g2) for g2 in range(0, min(g, 3) + 1)] + [("vars", p) for p in range(1, m)]
    cands = [sp for sp in cands if math.prod(split_ranks(m, g, sp)) <= 16 * rank(m, g)]
    return tuple(sorted(cands, key=lambda sp: (_row_cost(m, g, mv, sp), sp)))  # cached: once per size


def best_split(m: int, g: int, mv: int) -> tuple[str, int]:
    """The factorisation of the degree-g kernel with the lowest modelled cost (see _ranked_splits)."""
    return _ranked_splits(m, g, mv)[0]


def candidate_splits(m: int, g: int, mv: int, top: int = 3) -> list[tuple[str, int]]:
    """The ``top`` factorisations with the lowest modelled cost, plus the unsplit one."""
    best = list(_ranked_splits(m, g, mv)[:top])
    return best + ([("degree", 0)] if ("degree", 0) not in best else [])


def predicted_times(n: int, Lq: int, Lk: int, m: int, mv: int, g: int | None,
                    sphere: bool = False) -> tuple[float, float]:
    """(exact, poly) modelled forward times in seconds for n = batch * heads. ``sphere``: q and k rows
    of one norm per head (QK-norm), so the unsplit, unpeeled kernel runs on the sphere's features."""
    exact = n * Lq * Lk * (EXACT_S_PER_PAIR + EXACT_S_PER_PAIR_DIM * (m + mv))
    if g is None:
        return exact, float("inf")
    split = best_split(m, g, mv)
    if sphere and split == ("degree", 0) and g >= 2 and not peels(m, g, mv + 1) and sphere_rank(m, g) < rank(m, g):
        split = ("sphere", 0)
    poly = n * (Lq + Lk) * _row_cost(m, g, mv, split) + POLY_S_PER_CALL
    return exact, poly


def product_flops(n: int, L: int, m: int, mv: int, g: int, split: tuple[str, int] = ("degree", 0)) -> int:
    """FLOPs of one feature product over L tokens (the key side or the query side): a GEMM of the
    r1 x r2 (mv + 1) slot table against L rows, 2 n L r1 r2 (mv + 1). Unsplit this is
    2 n L C(m + g, g) (mv + 1), the minimum of the method; a split adds its zero slots."""
    r1, r2 = split_ranks(m, g, split)
    return 2 * n * L * r1 * r2 * (mv + 1)


def forward_flops(n: int, Lq: int, Lk: int, m: int, mv: int, g: int, split: tuple[str, int] = ("degree", 0)) -> int:
    """GEMM FLOPs of the forward pass: the key-side and the query-side products."""
    return product_flops(n, Lk, m, mv, g, split) + product_flops(n, Lq, m, mv, g, split)


def backward_flops(n: int, Lq: int, Lk: int, m: int, mv: int, g: int, split: tuple[str, int] = ("degree", 0)) -> int:
    """GEMM FLOPs of the backward pass (:class:`latentdit.attention.kernels.PolyAttentionFunction`):
    on the queries the key-side gradient and the m derivative products, on the keys the value
    gradient and the m derivative products. Unsplit (and on the sphere) the derivative products
    read only the degree <= g - 1 features (:mod:`latentdit.attention.backward`):
    2 n L (mv + 1) (r + m r_{g-1}) per side; a split plan's m + 1 products are all of its full width."""
    kind = split[0]
    if kind in ("degree", "sphere") and (kind == "sphere" or split[1] == 0) and g >= 1:
        low = sphere_rank(m, g - 1) if kind == "sphere" else rank(m, g - 1)
        r = split_ranks(m, g, split)[0]
        return 2 * n * (Lq + Lk) * (mv + 1) * (r + m * low)
    return (m + 1) * (product_flops(n, Lq, m, mv, g, split) + product_flops(n, Lk, m, mv, g, split))
