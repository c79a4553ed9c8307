"""Backward pass of the unsplit polynomial kernel (Thm 4.1 in the chained low-rank form).

Forward: ``T = sum_j phi(k_j) vh_j^T`` (vh = [v, 1]), ``U = w (.) T``, ``Y_i = phi(q_i)^T U`` =
[numerator, denominator], ``out_i = num_i / den_i``. With ``G_i = dL/dY_i`` (the row-scaling form:
``dout_i / den_i`` and ``-<dout_i, out_i> / den_i``):

    dU = sum_i phi(q_i) G_i^T,            dq_i = sum_alpha q_i^alpha Dq[alpha] G_i,
    dT = w (.) dU,   dvh_j = dT^T phi(k_j), dk_j = sum_alpha k_j^alpha Dk[alpha] vh_j,

with ``D[alpha, l] = (alpha_l + 1) U[alpha + e_l]`` (from d/da_l a^gamma = gamma_l a^(gamma - e_l)):
the derivatives need the features of degree <= g - 1 only, a prefix of phi (330 -> 210 rows at head
size 4 and degree 7, 1287 -> 495 at head size 8 and degree 5). ``dU`` and ``dvh`` are the forward's
two products with (G, dT) in place of (vh, U), so the top degree is peeled the same way
(:mod:`latentdit.attention.products`), and each pass builds its features once per chunk. Like the
forward, every GEMM runs with the narrow side first (coefficients transposed: (c or m c, r)).
"""

from __future__ import annotations

import torch

from latentdit.attention.cost import rank
from latentdit.attention.features import FeatureBuilder, Plan
from latentdit.attention.products import (ValueCols, as_4d, column_products, key_products, peeled, peeled_columns,
                                          rows_out)
from latentdit.attention.sphere import expand_cols, reduce_cols


def _deriv_coeffs(Mt: torch.Tensor, plan: Plan, r_low: int) -> torch.Tensor:
    """(n, c, r) coefficients per monomial -> D^T (n, m c, r_low), D[alpha, l] = (alpha_l + 1) M[alpha + e_l]."""
    n, c, _ = Mt.shape
    src = torch.as_tensor(plan.deriv_src[:r_low].reshape(-1), device=Mt.device)
    fac = torch.as_tensor(plan.deriv_fac[:r_low], dtype=Mt.dtype, device=Mt.device)
    D = Mt.index_select(2, src).view(n, c, r_low, plan.m).mul_(fac)
    return D.permute(0, 3, 1, 2).reshape(n, plan.m * c, r_low)


def _contract(Z: torch.Tensor, B: torch.Tensor, m: int, b: int) -> torch.Tensor:
    """(n, m c, step) and (n, c, step) -> (n, b, m): sum_c Z[l, c, s] B[c, s] for the first b columns.
    Z is a temporary and is overwritten: the product is taken in place and summed along the rows
    of c, both vectorised along the chunk (no permuted copy of Z)."""
    n, c, step = B.shape
    return Z.view(n, m, c, step).mul_(B[:, None]).sum(2)[..., :b].transpose(1, 2)


class GradientCols:
    """G^T = dL/d[numerator, denominator]^T = [dout / den, -<dout, out> / den]^T chunk by chunk in one
    reused (n, mv + 1, step) buffer (the row-scaling form of Thm 4.1); columns past L are 0. dout and
    out are (n, L, mv) or (B1, B2, L, mv) in any strides (read where they lie)."""

    def __init__(self, dout: torch.Tensor, out: torch.Tensor, den: torch.Tensor, step: int):
        self.d4, self.o4 = as_4d(dout), as_4d(out)
        B1, B2, self.L, mv = self.d4.shape
        self.den4, self.step = den.view(B1, B2, 1, self.L), step
        self.buf = dout.new_empty(B1 * B2, mv + 1, step)
        self.buf4 = self.buf.view(B1, B2, mv + 1, step)

    def __call__(self, a: int) -> torch.Tensor:
        b, buf = min(self.L, a + self.step) - a, self.buf
        d, den = self.d4[:, :, a:a + b], self.den4[..., a:a + b]
        torch.div(d.transpose(-1, -2), den, out=self.buf4[:, :, :-1, :b])
        torch.div(-(d * self.o4[:, :, a:a + b]).sum(-1)[:, :, None], den, out=self.buf4[:, :, -1:, :b])
        if b < self.step:
            buf[:, :, b:] = 0.0
        return buf


def poly_backward(plan: Plan, W: torch.Tensor, tensors: tuple, dout: torch.Tensor, needs: tuple,
                  steps: tuple[int, int], acc: torch.dtype, xT: tuple, sphere: tuple | None = None) -> tuple:
    """(dq, dk, dv) for an unsplit plan of degree >= 1; ``tensors`` = (xq, xk, v, Ut, out, den) as saved
    by the forward, ``steps`` its chunk lengths (queries, keys), ``xT`` the padded transposed inputs.
    ``sphere`` = (reduced plan, R_q, R_k) as in the forward: every product over L runs on the reduced
    features, with the coefficients (formed on the full monomials) reduced by R and the key-side
    sums expanded by R (:mod:`latentdit.attention.sphere`)."""
    xq, xk, v, Ut, out, den = tensors
    need_q, need_k, need_v = needs
    n, Lq, m = xq.shape
    Lk, mv, c = v.shape[-2], v.shape[-1], v.shape[-1] + 1
    sp = None if sphere is None else sphere[0]
    peel = (sp, sp.top) if sp is not None else peeled(plan, c)
    built = plan if peel is None else peel[0]
    r_full_low = rank(m, plan.g - 1)
    r_low = r_full_low if sp is None else sp.r_low
    sq, sk = steps
    xqT, xkT = xT
    G = GradientCols(dout.to(xq.dtype), out, den, sq)
    dq = xq.new_empty(n, Lq, m) if need_q else None
    DqT = _deriv_coeffs(Ut, plan, r_full_low) if need_q else None
    if need_q and sp is not None:
        DqT = reduce_cols(DqT, sphere[1], r_low)
    feats = FeatureBuilder.get(built, n, sq, xq)

    def dq_chunk(F1: torch.Tensor, a: int) -> None:  # G.buf holds chunk a
        b = min(Lq, a + sq) - a
        dq[:, a:a + b] = _contract(torch.bmm(DqT, F1[:, :r_low]), G.buf, m, b)

    dk = dv = None
    if need_k or need_v:
        dUt = key_products(feats, xqT, G, sq, c, acc, peel, dq_chunk if need_q else None)
        if sphere is None:
            dTt = dUt.mul_(W.view(1, 1, plan.r1))
            DkT = _deriv_coeffs(dTt, plan, r_full_low) if need_k else None
        else:
            dTt = expand_cols(dUt, sphere[1]).mul_(W.view(1, 1, plan.r1).to(sphere[1].dtype)).to(dUt.dtype)
            DkT = reduce_cols(_deriv_coeffs(dTt, plan, r_full_low), sphere[2], r_low) if need_k else None
            dTt = reduce_cols(dTt, sphere[2])
        dv, dk = _key_pass(m, built, peel, dTt, DkT, ValueCols(v, sk), xkT, r_low, (need_k, need_v), Lk)
    elif need_q:
        for a in range(0, xqT.shape[-1], sq):
            F1, _ = feats(xqT[:, :, a:a + sq])
            G(a)
            dq_chunk(F1, a)
    return dq, dk, dv


def _key_pass(m: int, built: Plan, peel, dTt: torch.Tensor, DkT: torch.Tensor | None, vc: ValueCols,
              xkT: torch.Tensor, r_low: int, needs: tuple[bool, bool],
              L: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """dv (n, L, mv) and dk (n, L, m): per chunk dT^T against the built features (plus its peeled
    steps) and the derivative coefficients Dk^T against the degree <= g - 1 features (a prefix of
    ``r_low`` built rows)."""
    need_k, need_v = needs
    n, c, step = vc.buf.shape
    batch, heads_last = tuple(vc.v4.shape[:2]), vc.batched  # a 4D V: dv heads-last, like out
    feats = FeatureBuilder.get(built, n, step, vc.buf)
    dv = rows_out(vc.buf, batch, L, c - 1, heads_last) if need_v else None
    dk = vc.buf.new_empty(n, L, m) if need_k else None
    Y, part = vc.buf.new_empty(n, c, step), vc.buf.new_empty(n, c, step)
    Y4 = Y.view(*batch, c, step)
    top = peeled_columns(feats, peel, dTt)
    for a in range(0, xkT.shape[-1], step):
        b = min(L, a + step) - a
        F1, _ = feats(xkT[:, :, a:a + step])
        if need_v:
            column_products(feats, F1, None, dTt, top, Y, part)
            dv[:, :, a:a + b] = Y4[:, :, :-1, :b].transpose(-1, -2)
        if need_k:
            dk[:, a:a + b] = _contract(torch.bmm(DkT, F1[:, :r_low]), vc(a), m, b)
    return (dv if heads_last or dv is None else dv[0]), dk
