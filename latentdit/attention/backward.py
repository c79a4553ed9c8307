"""Backward pass of the unsplit polynomial kernel (Thm 4.1 in the chained low-rank form), tokens in rows.

Forward: ``T = sum_j phi(k_j) vh_j^T`` (vh = [v, 1]), ``U = w (.) T``, ``Y_i = phi(q_i)^T U`` =
[numerator, denominator], ``out_i = num_i / den_i``. With ``G_i = dL/dY_i`` (the row-scaling form:
``dout_i / den_i`` and ``-<dout_i, out_i> / den_i``):

    dU = sum_i phi(q_i) G_i^T,            dq_i = sum_alpha q_i^alpha Dq[alpha] G_i,
    dT = w (.) dU,   dvh_j = dT^T phi(k_j), dk_j = sum_alpha k_j^alpha Dk[alpha] vh_j,

with ``D[alpha, l] = (alpha_l + 1) U[alpha + e_l]`` (from d/da_l a^gamma = gamma_l a^(gamma - e_l)):
the derivatives need the features of degree <= g - 1 only, a prefix of phi (330 -> 210 rows at head
size 4 and degree 7, 1287 -> 495 at head size 8 and degree 5). ``dU`` and ``dvh`` are the forward's
two products with (G, dT) in place of (vh, U), so the top degree is peeled the same way
(:mod:`latentdit.attention.products`), and each pass builds its features once per chunk.
"""

from __future__ import annotations

import torch

from latentdit.attention.cost import rank
from latentdit.attention.features import FeatureBuilder, Plan
from latentdit.attention.products import ValueRows, key_products, peeled


def _deriv_coeffs(M: torch.Tensor, plan: Plan, r_low: int) -> torch.Tensor:
    """(n, r, c) coefficients per monomial -> D (n, r_low, m c), D[alpha, l] = (alpha_l + 1) M[alpha + e_l]."""
    n, _, c = M.shape
    src = torch.as_tensor(plan.deriv_src[:r_low].reshape(-1), device=M.device)
    fac = torch.as_tensor(plan.deriv_fac[:r_low], dtype=M.dtype, device=M.device)
    D = M.index_select(1, src).view(n, r_low, plan.m, c)
    return D.mul_(fac[None, :, :, None]).view(n, r_low, plan.m * c)


def _contract(Z: torch.Tensor, B: torch.Tensor, m: int) -> torch.Tensor:
    """(n, step, m c) and (n, step, c) -> (n, step, m): sum_c Z[., l, c] B[., c]."""
    n, step, c = B.shape
    return torch.einsum("nslc,nsc->nsl", Z.view(n, step, m, c), B)


class GradientRows:
    """G = dL/d[numerator, denominator] = [dout / den, -<dout, out> / den] chunk by chunk in one reused
    (n, step, mv + 1) buffer (the row-scaling form of Thm 4.1); rows past L are 0."""

    def __init__(self, dout: torch.Tensor, out: torch.Tensor, den: torch.Tensor, step: int):
        self.dout, self.out, self.den, self.step, self.L = dout, out, den, step, dout.shape[1]
        self.buf = dout.new_empty(dout.shape[0], step, dout.shape[2] + 1)

    def __call__(self, a: int) -> torch.Tensor:
        b, buf = min(self.L, a + self.step) - a, self.buf
        d, den = self.dout[:, a:a + b], self.den[:, a:a + b, None]
        torch.div(d, den, out=buf[:, :b, :-1])
        torch.div(-(d * self.out[:, a:a + b]).sum(-1, keepdim=True), den, out=buf[:, :b, -1:])
        if b < self.step:
            buf[:, b:] = 0.0
        return buf


def poly_backward(plan: Plan, W: torch.Tensor, tensors: tuple, dout: torch.Tensor, needs: tuple,
                  steps: tuple[int, int], acc: torch.dtype, xT: tuple) -> tuple:
    """(dq, dk, dv) for an unsplit plan of degree >= 1; ``tensors`` = (xq, xk, v, U, out, den) as saved
    by the forward, ``steps`` its chunk lengths (queries, keys), ``xT`` the padded transposed inputs."""
    xq, xk, v, U, out, den = tensors
    need_q, need_k, need_v = needs
    n, Lq, m = xq.shape
    Lk, mv, c = v.shape[1], v.shape[2], v.shape[2] + 1
    peel = peeled(plan, c)
    built = plan if peel is None else peel[0]
    r_low = rank(m, plan.g - 1)
    sq, sk = steps
    xqT, xkT = xT
    G = GradientRows(dout.to(xq.dtype), out, den, sq)
    dq = xq.new_empty(n, Lq, m) if need_q else None
    Dq = _deriv_coeffs(U, plan, r_low) if need_q else None

    def dq_chunk(F1: torch.Tensor, a: int) -> None:  # G.buf holds chunk a
        b = min(Lq, a + sq) - a
        Z = torch.bmm(F1[:, :r_low].transpose(1, 2), Dq)
        dq[:, a:a + b] = _contract(Z, G.buf, m)[:, :b]

    feats = FeatureBuilder.get(built, n, sq, xq)
    dk = dv = None
    if need_k or need_v:
        dU = key_products(feats, xqT, G, sq, c, acc, peel, dq_chunk if need_q else None)
        dT = dU.mul_(W.view(1, plan.r1, 1))
        dv, dk = _key_pass(plan, built, peel, dT, ValueRows(v, sk), xkT, r_low, (need_k, need_v), Lk)
    elif need_q:
        for a in range(0, xqT.shape[-1], sq):
            F1, _ = feats(xqT[:, :, a:a + sq])
            G(a)
            dq_chunk(F1, a)
    return dq, dk, dv


def _key_pass(plan: Plan, built: Plan, peel, dT: torch.Tensor, vh: ValueRows, xkT: torch.Tensor,
              r_low: int, needs: tuple[bool, bool], L: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """dv (n, L, mv) and dk (n, L, m): per chunk the GEMM of the built features against dT (plus its
    peeled top degree) and that of the degree <= g - 1 features against Dk."""
    need_k, need_v = needs
    n, step, c = vh.buf.shape
    m = plan.m
    Dk = _deriv_coeffs(dT, plan, r_low) if need_k else None
    feats = FeatureBuilder.get(built, n, step, vh.buf)
    dv = vh.buf.new_empty(n, L, c - 1) if need_v else None
    dk = vh.buf.new_empty(n, L, m) if need_k else None
    Y, part = vh.buf.new_empty(n, step, c), vh.buf.new_empty(n, step, c)
    top = [] if peel is None else [(FT, dT[:, dst:dst + cnt], col) for (_, FT, col), (_, cnt, _, dst)
                                   in zip(feats.peel_views(peel[1]), peel[1])]
    F_low, dT_built = feats.F1[:, :r_low].transpose(1, 2), dT[:, :built.r1]
    for a in range(0, xkT.shape[-1], step):
        b = min(L, a + step) - a
        F1, _ = feats(xkT[:, :, a:a + step])
        if need_v:
            torch.bmm(F1.transpose(1, 2), dT_built, out=Y)
            for FT, Ti, col in top:
                torch.bmm(FT, Ti, out=part)
                Y.addcmul_(part, col)
            dv[:, a:a + b] = Y[:, :b, :-1]
        if need_k:
            Z = torch.bmm(F_low, Dk)
            dk[:, a:a + b] = _contract(Z, vh(a), m)[:, :b]
    return dv, dk
