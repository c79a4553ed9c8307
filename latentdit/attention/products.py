"""The two feature products of the polynomial method's forward pass, chunked over L.

Key side ``T = sum_j phi(k_j) (x) [v_j, 1]`` (one row per monomial), query side
``Y_i = phi(q_i)^T (W (.) T)`` = [numerator, denominator] of query i. Tokens stay in rows
((n, L, c) layouts), so neither V nor the output is transposed.

**Peeling the top degree** (unsplit plans). Every monomial gamma of degree g is
``alpha + e_i`` with i its last variable and alpha a monomial of degree g - 1 whose variables are
<= i; in the builder's order (:func:`latentdit.attention.features._monomials`) the alphas of one i
are a *prefix* of the degree-(g - 1) block. Hence

    T[degree-g monomials ending in i] = F_{g-1}[:cnt_i]^T (x_i (.) [V, 1])
    Y += x_i (.) (F_{g-1}[:cnt_i]^T U[degree-g monomials ending in i])

with F only up to degree g - 1: the largest block of features (120 of 330 at head size 4 and
degree 7, 792 of 1287 at head size 8 and degree 5) is never built or stored, and the GEMMs cover
each monomial exactly once (the same products and FLOPs as the unsplit kernel, the same numbers
up to rounding). The cost is m scaled copies of a (step, c) chunk of V per chunk.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch

from latentdit.attention.features import FeatureBuilder, Plan, make_plan

ACC_GROUP = 16  # chunks summed in the working dtype before folding into the float64 accumulator


@functools.lru_cache(maxsize=None)
def peeled(plan: Plan, c: int) -> tuple[Plan, tuple] | None:
    """(the plan of degree g - 1 whose features are built, the degree-g builder steps (src, count,
    variable, dst)) for an unsplit plan of degree >= 2 whose top block has more rows than the m
    scaled copies of [V, 1] have columns (m c: what peeling adds per token); else None (built in full).
    """
    if plan.split != ("degree", 0) or plan.g < 2:
        return None
    low = make_plan(plan.m, plan.g - 1)
    top = tuple(op for op in plan.ops1 if op[3] >= low.r1)
    if plan.r1 - low.r1 <= plan.m * c:
        return None
    ends = [low.r1] + [dst + cnt for _, cnt, _, dst in top]
    assert plan.ops1[:len(low.ops1)] == low.ops1 and [op[3] for op in top] == ends[:-1] and ends[-1] == plan.r1
    return low, top


class ValueRows:
    """V-hat = [V, 1] chunk by chunk, ``rows(a)`` = rows a .. a + step of (n, L, mv + 1) in one reused
    buffer (cache-resident; no copy of the whole V is made); rows past L are 0 (no contribution)."""

    def __init__(self, v: torch.Tensor, step: int):
        self.v, self.step, self.L = v, step, v.shape[1]
        self.buf = v.new_empty(v.shape[0], step, v.shape[2] + 1)

    def __call__(self, a: int) -> torch.Tensor:
        b, buf = min(self.L, a + self.step) - a, self.buf
        buf[:, :b, :-1] = self.v[:, a:a + b]
        buf[:, :b, -1] = 1.0
        if b < self.step:
            buf[:, b:] = 0.0
        return buf


def _key_chunk(F1: torch.Tensor, F2: torch.Tensor | None, rhs: torch.Tensor, top: list,
               kron: torch.Tensor | None, scaled: torch.Tensor | None) -> list:
    """The (left factor, right factor) GEMMs of one key chunk, in the row order of T; ``top``: the
    peeled steps' views (:meth:`FeatureBuilder.peel_views`)."""
    n, step, _ = rhs.shape
    if F2 is not None:  # the row-wise Kronecker product F2 (x) vh in (n, step, r2 c)
        rhs = torch.mul(F2.transpose(1, 2)[:, :, :, None], rhs[:, :, None, :], out=kron).view(n, step, -1)
    gemms = [(F1, rhs)]
    for j, (rows, _, col) in enumerate(top):
        gemms.append((rows, torch.mul(rhs, col, out=scaled[j])))
    return gemms


def key_products(feats: FeatureBuilder, xT: torch.Tensor, rows: Callable[[int], torch.Tensor], step: int,
                 c: int, acc: torch.dtype, peel: tuple[Plan, tuple] | None = None,
                 per_chunk: Callable[[torch.Tensor, int], None] | None = None) -> torch.Tensor:
    """T = sum_j phi(x_j) (x) rows_j as (n, r1, r2 c), r1 the rank of the full plan, ``rows(a)`` the
    (n, step, c) rows of chunk a (:class:`ValueRows`): GEMMs per chunk accumulated in place (baddbmm)
    in the working dtype over ``ACC_GROUP`` chunks and across groups in ``acc``. ``per_chunk(F1, a)``
    runs after each chunk's GEMMs, on the same features and rows (the backward's query gradient)."""
    n, _, Lp = xT.shape
    like = feats.x  # dtype and device
    kron = None if feats.F2 is None else like.new_empty(n, step, feats.F2.shape[1], c)
    scaled = None if peel is None else like.new_empty(len(peel[1]), n, step, c)
    width = c if feats.F2 is None else feats.F2.shape[1] * c
    # one contiguous accumulator per GEMM (baddbmm_ into a strided slice loops over the batch)
    sizes = [feats.F1.shape[1]] + ([] if peel is None else [op[1] for op in peel[1]])
    group = [like.new_zeros(n, size, width) for size in sizes]
    top = [] if peel is None else feats.peel_views(peel[1])
    total = None
    for k, a in enumerate(range(0, Lp, step)):
        F1, F2 = feats(xT[:, :, a:a + step])
        for acc_j, (left, right) in zip(group, _key_chunk(F1, F2, rows(a), top, kron, scaled)):
            acc_j.baddbmm_(left, right)
        if per_chunk is not None:
            per_chunk(F1, a)
        if (k + 1) % ACC_GROUP == 0 and a + step < Lp:
            part = torch.cat(group, dim=1).to(acc)
            total = part if total is None else total.add_(part)
            for acc_j in group:
                acc_j.zero_()
    out = torch.cat(group, dim=1) if len(group) > 1 else group[0]
    return out if total is None else total.add_(out).to(like.dtype)


def query_products(feats: FeatureBuilder, xT: torch.Tensor, U: torch.Tensor, step: int, c: int, L: int,
                   peel: tuple[Plan, tuple] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, den) of the L queries, (n, L, c - 1) and (n, L): per chunk Y = [numerator, denominator] =
    sum_beta F2_beta(q) (F1(q)^T U)_beta into one (n, step, c) buffer, divided while it is in cache."""
    n, _, Lp = xT.shape
    r_low = feats.F1.shape[1]
    Y = U.new_empty(n, step, c)
    part = None if peel is None else U.new_empty(n, step, c)
    out, den = U.new_empty(n, L, c - 1), U.new_empty(n, L)
    top = [] if peel is None else [(FT, U[:, dst:dst + cnt], col) for (_, FT, col), (_, cnt, _, dst)
                                   in zip(feats.peel_views(peel[1]), peel[1])]
    for a in range(0, Lp, step):
        F1, F2 = feats(xT[:, :, a:a + step])
        if F2 is None:
            torch.bmm(F1.transpose(1, 2), U[:, :r_low], out=Y)
        else:
            Z = torch.bmm(F1.transpose(1, 2), U).view(n, step, F2.shape[1], c)
            torch.sum(Z.mul_(F2.transpose(1, 2)[:, :, :, None]), dim=2, out=Y)
        for FT, Ui, col in top:
            torch.bmm(FT, Ui, out=part)
            Y.addcmul_(part, col)
        b = min(L, a + step) - a
        torch.div(Y[:, :b, :-1], Y[:, :b, -1:], out=out[:, a:a + b])
        den[:, a:a + b] = Y[:, :b, -1]
    return out, den
