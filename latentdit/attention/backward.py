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
from latentdit.attention.products import ValueCols, column_products, key_products, peeled, peeled_columns


def _deriv_coeffs(Mt: torch.Tensor, plan: Plan, r_low: int) -> torch.Tensor:
    """(n, c, r) coefficients per monomial -> D^T (n, m c, r_low), D[alpha, l] = (alpha_l + 1) M[alpha + e_l]."""
    n, c, _ = Mt.shape
    src = torch.as_tensor(plan.deriv_src[:r_low].reshape(-1), device=Mt.device)
    fac = torch.as_tensor(plan.deriv_fac[:r_low], dtype=Mt.dtype, device=Mt.device)
    D = Mt.index_select(2, src).view(n, c, r_low, plan.m).mul_(fac)
    return D.permute(0, 3, 1, 2).reshape(n, plan.m * c, r_low)


def _contract(Z: torch.Tensor, B: torch.Tensor, m: int, b: int) -> torch.Tensor:
    """(n, m c, step) and (n, c, step) -> (n, b, m): sum_c Z[l, c, s] B[c, s] for the first b columns."""
    n, c, step = B.shape
    return torch.einsum("nlcs,ncs->nsl", Z.view(n, m, c, step)[..., :b], B[..., :b])


class GradientCols:
    """G^T = dL/d[numerator, denominator]^T = [dout / den, -<dout, out> / den]^T chunk by chunk in one
    reused (n, mv + 1, step) buffer (the row-scaling form of Thm 4.1); columns past L are 0."""

    def __init__(self, dout: torch.Tensor, out: torch.Tensor, den: torch.Tensor, step: int):
        self.dout, self.out, self.den, self.step, self.L = dout, out, den, step, dout.shape[1]
        self.buf = dout.new_empty(dout.shape[0], dout.shape[2] + 1, step)

    def __call__(self, a: int) -> torch.Tensor:
        b, buf = min(self.L, a + self.step) - a, self.buf
        d, den = self.dout[:, a:a + b], self.den[:, None, a:a + b]
        torch.div(d.transpose(1, 2), den, out=buf[:, :-1, :b])
        torch.div(-(d * self.out[:, a:a + b]).sum(-1)[:, None], den, out=buf[:, -1:, :b])
        if b < self.step:
            buf[:, :, b:] = 0.0
        return buf


def poly_backward(plan: Plan, W: torch.Tensor, tensors: tuple, dout: torch.Tensor, needs: tuple,
                  steps: tuple[int, int], acc: torch.dtype, xT: tuple) -> tuple:
    """(dq, dk, dv) for an unsplit plan of degree >= 1; ``tensors`` = (xq, xk, v, Ut, out, den) as saved
    by the forward, ``steps`` its chunk lengths (queries, keys), ``xT`` the padded transposed inputs."""
    xq, xk, v, Ut, out, den = tensors
    need_q, need_k, need_v = needs
    n, Lq, m = xq.shape
    Lk, mv, c = v.shape[1], v.shape[2], v.shape[2] + 1
    peel = peeled(plan, c)
    built = plan if peel is None else peel[0]
    r_low = rank(m, plan.g - 1)
    sq, sk = steps
    xqT, xkT = xT
    G = GradientCols(dout.to(xq.dtype), out, den, sq)
    dq = xq.new_empty(n, Lq, m) if need_q else None
    DqT = _deriv_coeffs(Ut, plan, r_low) if need_q else None

    def dq_chunk(F1: torch.Tensor, a: int) -> None:  # G.buf holds chunk a
        b = min(Lq, a + sq) - a
        dq[:, a:a + b] = _contract(torch.bmm(DqT, F1[:, :r_low]), G.buf, m, b)

    feats = FeatureBuilder.get(built, n, sq, xq)
    dk = dv = None
    if need_k or need_v:
        dUt = key_products(feats, xqT, G, sq, c, acc, peel, dq_chunk if need_q else None)
        dTt = dUt.mul_(W.view(1, 1, plan.r1))
        dv, dk = _key_pass(plan, built, peel, dTt, ValueCols(v, sk), xkT, r_low, (need_k, need_v), Lk)
    elif need_q:
        for a in range(0, xqT.shape[-1], sq):
            F1, _ = feats(xqT[:, :, a:a + sq])
            G(a)
            dq_chunk(F1, a)
    return dq, dk, dv


def _key_pass(plan: Plan, built: Plan, peel, dTt: torch.Tensor, vc: ValueCols, xkT: torch.Tensor,
              r_low: int, needs: tuple[bool, bool], L: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """dv (n, L, mv) and dk (n, L, m): per chunk dT^T against the built features (plus its peeled top
    degree) and the derivative coefficients Dk^T against the degree <= g - 1 features."""
    need_k, need_v = needs
    n, c, step = vc.buf.shape
    m = plan.m
    DkT = _deriv_coeffs(dTt, plan, r_low) if need_k else None
    feats = FeatureBuilder.get(built, n, step, vc.buf)
    dv = vc.buf.new_empty(n, L, c - 1) if need_v else None
    dk = vc.buf.new_empty(n, L, m) if need_k else None
    Y, part = vc.buf.new_empty(n, c, step), vc.buf.new_empty(n, c, step)
    top = peeled_columns(feats, peel, dTt)
    for a in range(0, xkT.shape[-1], step):
        b = min(L, a + step) - a
        F1, _ = feats(xkT[:, :, a:a + step])
        if need_v:
            column_products(feats, F1, None, dTt, top, Y, part)
            dv[:, a:a + b] = Y[:, :-1, :b].transpose(1, 2)
        if need_k:
            dk[:, a:a + b] = _contract(torch.bmm(DkT, F1[:, :r_low]), vc(a), m, b)
    return dv, dk
