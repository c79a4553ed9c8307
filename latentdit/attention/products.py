"""The two feature products of the polynomial method's forward pass, chunked over L.

Key side ``T = sum_j phi(k_j) (x) [v_j, 1]``, query side ``Y_i = phi(q_i)^T (W (.) T)`` =
[numerator, denominator] of query i. The GEMMs run with the narrow side first (``(c, L-chunk)``
times ``(L-chunk, r)`` and ``(c, r)`` times ``(r, L-chunk)``, c = mv + 1), the faster orientation
for narrow value sizes on CPU BLAS; per chunk, ``[V, 1]`` is transposed into one cache-sized
buffer and the output is divided and transposed back while it is in cache, so no whole-L copy is
made and the output is written once, at its exact size.

**Peeling the top degree** (unsplit plans). Every monomial gamma of degree g is
``alpha + e_i`` with i its last variable and alpha a monomial of degree g - 1 whose variables are
<= i; in the builder's order (:func:`latentdit.attention.features._monomials`) the alphas of one i
are a *prefix* of the degree-(g - 1) block. Hence

    T[degree-g monomials ending in i] = F_{g-1}[:cnt_i]^T (x_i (.) [V, 1])
    Y += x_i (.) (F_{g-1}[:cnt_i]^T U[degree-g monomials ending in i])

with F only up to degree g - 1: the largest block of features (120 of 330 at head size 4 and
degree 7, 792 of 1287 at head size 8 and degree 5) is never built or stored, and the GEMMs cover
each monomial exactly once (the same products and FLOPs as the unsplit kernel, the same numbers
up to rounding). The cost is m scaled copies of a (c, step) chunk of [V, 1] per chunk, so the
kernel peels only when the top block has more rows than those copies have columns
(:func:`latentdit.attention.cost.peels`; not at head size 4 with value size 32).
"""

from __future__ import annotations

import functools
from typing import Callable

import torch

from latentdit.attention.cost import peels
from latentdit.attention.features import FeatureBuilder, Plan, contract_rows, kron_rows, make_plan

ACC_GROUP = 16  # chunks summed in the working dtype before folding into the float64 accumulator


@functools.lru_cache(maxsize=None)
def peeled(plan: Plan, c: int) -> tuple[Plan, tuple] | None:
    """(the plan of degree g - 1 whose features are built, the degree-g builder steps (src, count,
    variable, dst)) for an unsplit plan of degree >= 2 whose top block has more rows than the m
    scaled copies of [V, 1] have columns (m c: what peeling adds per token); else None (built in full).
    """
    if plan.split != ("degree", 0) or plan.g < 2:
        return None
    if not peels(plan.m, plan.g, c):
        return None
    low = make_plan(plan.m, plan.g - 1)
    top = tuple(op for op in plan.ops1 if op[3] >= low.r1)
    ends = [low.r1] + [dst + cnt for _, cnt, _, dst in top]
    assert plan.ops1[:len(low.ops1)] == low.ops1 and [op[3] for op in top] == ends[:-1] and ends[-1] == plan.r1
    return low, top


def as_4d(x: torch.Tensor) -> torch.Tensor:
    """(n, L, k) -> the view (1, n, L, k); (B1, B2, L, k) (any strides) as it is."""
    return x if x.dim() == 4 else x.unsqueeze(0)


def rows_out(like: torch.Tensor, batch: tuple[int, int], L: int, k: int, heads_last: bool) -> torch.Tensor:
    """An output (B1, B2, L, k); with ``heads_last`` stored as (B1, L, B2, k), the layout in which the
    attention block merges heads, so that merging them is a view rather than a copy."""
    B1, B2 = batch
    if heads_last:
        return like.new_empty(B1, L, B2, k).permute(0, 2, 1, 3)
    return like.new_empty(B1, B2, L, k)


class ValueCols:
    """``cols(a)`` = [V, 1]^T for rows a .. a + step, (n, mv + 1, step), in one reused buffer; rows past
    L are 0 (no contribution). V is (n, L, mv) or (B1, B2, L, mv) with n = B1 B2, in any strides:
    the chunk's transposing copy reads it where it lies."""

    def __init__(self, v: torch.Tensor, step: int):
        self.v4, self.batched = as_4d(v), v.dim() == 4
        B1, B2, self.L, mv = self.v4.shape
        self.step = step
        self.buf = v.new_empty(B1 * B2, mv + 1, step)
        self.buf4 = self.buf.view(B1, B2, mv + 1, step)

    def __call__(self, a: int) -> torch.Tensor:
        b, buf = min(self.L, a + self.step) - a, self.buf
        self.buf4[:, :, :-1, :b] = self.v4[:, :, a:a + b].transpose(-1, -2)
        buf[:, -1, :b] = 1.0
        if b < self.step:
            buf[:, :, b:] = 0.0
        return buf


def key_products(feats: FeatureBuilder, xT: torch.Tensor, cols: Callable[[int], torch.Tensor], step: int,
                 c: int, acc: torch.dtype, peel: tuple[Plan, tuple] | None = None,
                 per_chunk: Callable[[torch.Tensor, int], None] | None = None) -> torch.Tensor:
    """T^T = sum_j (F2(x_j) (x) A_j) F1(x_j)^T as (n, r2 c, r1), r1 the rank of the full plan, ``cols(a)``
    the (n, c, step) columns A of chunk a (:class:`ValueCols`): GEMMs per chunk accumulated in place
    (baddbmm) in the working dtype over ``ACC_GROUP`` chunks and across groups in ``acc``.
    ``per_chunk(F1, a)`` runs after each chunk's GEMMs, on the same features and columns."""
    n, _, Lp = xT.shape
    like = feats.x  # dtype and device
    r2 = 1 if feats.F2 is None else feats.F2.shape[1]
    top = [] if peel is None else feats.peel_views(peel[1])
    scaled = like.new_empty(len(top), n, c, step) if top else None
    sizes = [feats.F1.shape[1]] + [rows.shape[1] for rows, _, _ in top]
    # one contiguous accumulator per GEMM (baddbmm_ into a strided slice loops over the batch)
    group = [like.new_zeros(n, r2 * c, size) for size in sizes]
    total = None
    for k, a in enumerate(range(0, Lp, step)):
        F1, F2 = feats(xT[:, :, a:a + step])
        A = cols(a)
        group[0].baddbmm_(kron_rows(F2, A), F1.transpose(1, 2))
        for j, (_, FT, xrow) in enumerate(top):
            group[j + 1].baddbmm_(torch.mul(A, xrow, out=scaled[j]), FT)
        if per_chunk is not None:
            per_chunk(F1, a)
        if (k + 1) % ACC_GROUP == 0 and a + step < Lp:
            part = torch.cat(group, dim=2).to(acc)
            total = part if total is None else total.add_(part)
            for acc_j in group:
                acc_j.zero_()
    out = torch.cat(group, dim=2) if len(group) > 1 else group[0]
    return out if total is None else total.add_(out).to(like.dtype)


def column_products(feats: FeatureBuilder, F1: torch.Tensor, F2: torch.Tensor | None, Ut: torch.Tensor,
                    top: list, Y: torch.Tensor, part: torch.Tensor | None) -> torch.Tensor:
    """Y (n, c, step) = sum_beta F2_beta (Ut F1)_beta for one chunk, with the peeled top degree
    (``top``: (Ut slice, F1 rows, variable row) per step) added as x_i (.) (Ut_i F1_i)."""
    if F2 is None:
        torch.bmm(Ut[:, :, :F1.shape[1]], F1, out=Y)
    else:
        Y.copy_(contract_rows(F2, torch.bmm(Ut, F1), Y.shape[1]))
    for Ui, rows, xrow in top:
        torch.bmm(Ui, rows, out=part)
        Y.addcmul_(part, xrow)
    return Y


def peeled_columns(feats: FeatureBuilder, peel: tuple[Plan, tuple] | None, Mt: torch.Tensor) -> list:
    """(Mt columns of the step's monomials, F1 rows, variable row) for each peeled step."""
    if peel is None:
        return []
    return [(Mt[:, :, dst:dst + cnt], rows, xrow)
            for (rows, _, xrow), (_, cnt, _, dst) in zip(feats.peel_views(peel[1]), peel[1])]


def query_products(feats: FeatureBuilder, xT: torch.Tensor, Ut: torch.Tensor, step: int, c: int, L: int,
                   peel: tuple[Plan, tuple] | None = None,
                   batch: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, den) of the L queries, (n, L, c - 1) and (n, L): per chunk Y = [numerator, denominator]^T
    (:func:`column_products`) into one (n, c, step) buffer, divided and transposed while in cache.
    With ``batch`` = (B1, B2) (n = B1 B2) out is (B1, B2, L, c - 1) stored heads-last (:func:`rows_out`)."""
    n, _, Lp = xT.shape
    Y = Ut.new_empty(n, c, step)
    part = None if peel is None else Ut.new_empty(n, c, step)
    out4 = rows_out(Ut, batch or (1, n), L, c - 1, batch is not None)
    den = Ut.new_empty(n, L)
    Y4 = Y.view(*(batch or (1, n)), c, step)
    top = peeled_columns(feats, peel, Ut)
    for a in range(0, Lp, step):
        F1, F2 = feats(xT[:, :, a:a + step])
        column_products(feats, F1, F2, Ut, top, Y, part)
        b = min(L, a + step) - a
        torch.div(Y4[:, :, :-1, :b], Y4[:, :, -1:, :b], out=out4[:, :, a:a + b].transpose(-1, -2))
        den[:, a:a + b] = Y[:, -1, :b]
    return (out4 if batch is not None else out4[0]), den
