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
from latentdit.attention.products import key_products, peeled


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


def _gradient_rows(dout: torch.Tensor, out: torch.Tensor, den: torch.Tensor, Lp: int) -> torch.Tensor:
    """G = dL/d[numerator, denominator] as (n, Lp, mv + 1), padded rows 0."""
    n, L, mv = dout.shape
    G = dout.new_zeros(n, Lp, mv + 1)
    torch.div(dout, den[:, :, None], out=G[:, :L, :mv])
    G[:, :L, mv] = -(dout * out).sum(-1) / den
    return G


def poly_backward(plan: Plan, W: torch.Tensor, tensors: tuple, dout: torch.Tensor, needs: tuple,
                  steps: tuple[int, int], acc: torch.dtype, xT: tuple) -> tuple:
    """(dq, dk, dv) for an unsplit plan; ``tensors`` = (xq, xk, v, vh, U, out, den) as saved by the
    forward, ``steps`` its chunk lengths (queries, keys), ``xT`` the padded transposed inputs."""
    xq, xk, v, vh, U, out, den = tensors
    need_q, need_k, need_v = needs
    n, Lq, m = xq.shape
    Lk, mv, c = v.shape[1], v.shape[2], v.shape[2] + 1
    peel = peeled(plan, c)
    built = plan if peel is None else peel[0]
    r_low = rank(m, plan.g - 1)  # plan.g >= 1
    sq, sk = steps
    xqT, xkT = xT
    G = _gradient_rows(dout.to(xq.dtype), out, den, xqT.shape[-1])
    dq = xq.new_empty(n, xqT.shape[-1], m) if need_q else None
    Dq = _deriv_coeffs(U, plan, r_low) if need_q else None

    def dq_chunk(F1: torch.Tensor, a: int) -> None:
        Z = torch.bmm(F1[:, :r_low].transpose(1, 2), Dq)
        dq[:, a:a + sq] = _contract(Z, G[:, a:a + sq], m)

    feats = FeatureBuilder.get(built, n, sq, xq)
    dk = dv = None
    if need_k or need_v:
        dU = key_products(feats, xqT, G, sq, acc, peel, dq_chunk if need_q else None)
        dT = dU.mul_(W.view(1, plan.r1, 1))
        dv, dk = _key_pass(plan, built, peel, dT, vh, xkT, sk, r_low, need_k, xq)
        dv = dv[:, :Lk, :mv] if need_v else None
        dk = dk[:, :Lk] if need_k else None
    elif need_q:
        for a in range(0, xqT.shape[-1], sq):
            F1, _ = feats(xqT[:, :, a:a + sq])
            dq_chunk(F1, a)
    return (None if dq is None else dq[:, :Lq]), dk, dv


def _key_pass(plan: Plan, built: Plan, peel, dT: torch.Tensor, vh: torch.Tensor, xkT: torch.Tensor, step: int,
              r_low: int, need_k: bool, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """dvh (n, Lp, c) and dk (n, Lp, m) over the padded keys: per chunk the GEMM of the built features
    against dT (plus its peeled top degree) and that of the degree <= g - 1 features against Dk."""
    n, Lp, c = vh.shape
    m = plan.m
    Dk = _deriv_coeffs(dT, plan, r_low) if need_k else None
    feats = FeatureBuilder.get(built, n, step, like)
    dvh = vh.new_empty(n, Lp, c)
    dk = vh.new_empty(n, Lp, m) if need_k else None
    Y, part = vh.new_empty(n, step, c), vh.new_empty(n, step, c)
    for a in range(0, Lp, step):
        F1, _ = feats(xkT[:, :, a:a + step])
        torch.bmm(F1.transpose(1, 2), dT[:, :built.r1], out=Y)
        for src, cnt, i, dst in () if peel is None else peel[1]:
            torch.bmm(F1[:, src:src + cnt].transpose(1, 2), dT[:, dst:dst + cnt], out=part)
            Y.addcmul_(part, xkT[:, i, a:a + step, None])
        dvh[:, a:a + step] = Y
        if need_k:
            Z = torch.bmm(F1[:, :r_low].transpose(1, 2), Dk)
            dk[:, a:a + step] = _contract(Z, vh[:, a:a + step], m)
    return dvh, dk
