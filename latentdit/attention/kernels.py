"""The polynomial method (Alman & Song; Sec. 4 of the paper): attention in time linear in L.

With the feature maps ``phi`` and weights ``w`` of :mod:`latentdit.attention.features` the
attention output is

    out = D^{-1} phi(Q) diag(w) (phi(K)^T [V, 1]),    D = the last column,

linear in L. Implementation (all per batch * head, chunked over L so memory stays bounded):

- With a split ``g = g1 + g2`` the key side is one GEMM against the row-wise Kronecker product
  ``T = F1(K)^T (F2(K) (x) [V, 1])`` (r1 x r2 (m_v + 1)), the query side
  ``Y = sum_beta F2_beta(Q) (F1(Q) (W (.) T))_beta``. For head size 4 and g = 8, g2 = 1 turns a
  rank-495 GEMM of width 5 into a rank-330 GEMM of width 25, which costs the same per row on a
  CPU, and never builds the top-degree block. The factorisation comes from the cost model
  (:mod:`latentdit.attention.cost`) unless :func:`tune_split` measured a faster one.
- The unsplit plan's two products, with its top degree peeled: :mod:`latentdit.attention.products`.
- Backward (Thm 4.1 in the chained low-rank form): with G = dL/dY, ``dT = W (.) (F1(Q)^T (F2(Q) (x) G))``
  is again low rank; gradients w.r.t. the features' inputs use the derivative gather tables of the
  plan, so every pass is linear in L and nothing L x L or L x r (beyond a chunk) is stored. The
  unsplit plan has its own backward (:mod:`latentdit.attention.backward`): derivatives on the
  degree <= g - 1 prefix of the features only.
"""

from __future__ import annotations

import math
import time

import torch

from latentdit.attention.cost import best_split, candidate_splits, sphere_rank
from latentdit.attention.features import FeatureBuilder, Plan, contract_rows, device_tables, kron_rows, make_plan
from latentdit.attention.polynomials import ExpPoly
from latentdit.attention.backward import poly_backward
from latentdit.attention.products import ValueCols, key_products, peeled, query_products
from latentdit.attention.sphere import common_radius, expand_cols, reduce_cols, reduction_matrix, sphere_plan

FEATURE_BUDGET_CPU = 1 << 20   # elements of the largest per-chunk temporary (4 MiB in fp32)
FEATURE_BUDGET_CUDA = 1 << 25
CHUNK_ALIGN = 16               # chunk lengths are multiples of this (64 bytes of float32)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype in (torch.float32, torch.float64) else torch.float32


def chunk_length(n: int, L: int, width: int, device: torch.device, chunk: int | None = None) -> int:
    """Rows per chunk so that the largest temporary (n x width x rows) fits the feature budget.

    The chunks are balanced (as many as the budget needs, of nearly equal length) and their length
    is rounded up to a multiple of ``CHUNK_ALIGN``, so that every row of a chunk's buffers starts on
    a 64-byte boundary in float32: the feature multiplies and the GEMMs then run on aligned rows
    (at the DiT's call, L = 16384, 368 rows instead of 365 took 13% off the forward and 10% off
    forward + backward on an AVX-512 CPU: ``docs/bench/chunk_align.json``). Padding is
    < ``CHUNK_ALIGN`` + 1 rows per chunk, computed on zeros and discarded. An explicit ``chunk`` is
    taken as it is (at most L)."""
    if chunk is not None:
        return max(1, min(int(chunk), L))
    budget = FEATURE_BUDGET_CUDA if device.type == "cuda" else FEATURE_BUDGET_CPU
    step = max(1, min(L, max(64, budget // max(1, n * width))))
    chunks = -(-L // step)
    return -(-L // (chunks * CHUNK_ALIGN)) * CHUNK_ALIGN


def _padded_T(x: torch.Tensor, step: int, ones: bool = False) -> torch.Tensor:
    """(n, L, k) -> (n, k [+1 row of ones], L padded with zeros to a multiple of step).

    Without the ones row and without padding it is the transposed view itself: the feature builder
    copies its input into its own buffer, so a second copy would be wasted."""
    n, L, k = x.shape
    Lp = -(-L // step) * step
    if Lp == L and not ones:
        return x.transpose(1, 2)
    out = x.new_empty(n, k + int(ones), Lp)
    out[:, :k, :L] = x.transpose(1, 2)
    if ones:
        out[:, k, :L] = 1.0
    if Lp > L:
        out[:, :, L:] = 0.0
    return out


def _key_side_sum(feats: FeatureBuilder, xT: torch.Tensor, AT: torch.Tensor, step: int,
                  acc: torch.dtype) -> torch.Tensor:
    """sum over chunks of (F2 (x) A)^T F1 as (n, r2 c, r1), in ``acc`` over several chunks.

    With one chunk the float64 sum of a single term is that term, so it is returned as computed
    (the same numbers as accumulating, without the float64 round trip)."""
    total = None
    single = xT.shape[-1] <= step
    for a in range(0, xT.shape[-1], step):
        F1, F2 = feats(xT[:, :, a:a + step])
        part = torch.bmm(kron_rows(F2, AT[:, :, a:a + step]), F1.transpose(1, 2))
        if single:
            return part
        total = part.to(acc) if total is None else total.add_(part)
    return total


class PolyAttentionFunction(torch.autograd.Function):
    """out = D^{-1} P(Xq Xk^T) V with P given by its monomial coefficients and a factorisation plan.

    xq (n, Lq, m), xk (n, Lk, m), v (n, Lk, mv) or (B1, B2, Lk, mv) with n = B1 B2 in any strides
    (then out is (B1, B2, Lq, mv), stored heads-last: :func:`latentdit.attention.products.rows_out`);
    the logits are R <xq_i, xk_j> with |<., .>| <= 1.
    Padded key rows have V-hat = 0 (no contribution); padded query rows are discarded. The key-side
    products are kept in the layout the query-side GEMM and the backward read, (n, r2 c, r1), with W
    applied (as its transpose: the same products).
    """

    @staticmethod
    def forward(ctx, xq, xk, v, coeffs, plan: Plan, chunk, sphere=None):  # noqa: D401
        n, Lq, m = xq.shape
        Lk, mv = v.shape[-2], v.shape[-1]
        c = mv + 1
        Wt = device_tables(plan, coeffs, xq.device, xq.dtype)[1]
        r1, r2 = plan.r1, plan.r2
        peel = (sphere[0], sphere[0].top) if sphere is not None else peeled(plan, c)
        built = plan if peel is None else peel[0]
        width = max(built.r1, r2 * c * (m + 1))

        step = chunk_length(n, Lk, width, xq.device, chunk)
        feats = FeatureBuilder.get(built, n, step, xq)
        Tt = key_products(feats, _padded_T(xk, step), ValueCols(v, step), step, c, _acc_dtype(xq.dtype), peel)
        if sphere is None:
            Ut = Tt.view(n, r2, c, r1).mul_(Wt[None, :, None, :]).view(n, r2 * c, r1)
            Uq = Ut
        else:  # T = R_k T_red; the query side reads U through R_q (:mod:`latentdit.attention.sphere`)
            Ufull = expand_cols(Tt, sphere[2]).mul_(Wt.to(sphere[2].dtype))
            Ut, Uq = Ufull.to(xq.dtype), reduce_cols(Ufull, sphere[1]).to(xq.dtype)

        step = chunk_length(n, Lq, width, xq.device, chunk)
        if feats.x.shape[-1] != step:
            feats = FeatureBuilder.get(built, n, step, xq)
        out, den = query_products(feats, _padded_T(xq, step), Uq, step, c, Lq, peel,
                                  tuple(v.shape[:2]) if v.dim() == 4 else None)
        if any(ctx.needs_input_grad[:3]):
            ctx.plan, ctx.chunk, ctx.coeffs, ctx.sphere = plan, chunk, coeffs, sphere
            ctx.save_for_backward(xq, xk, v, Ut, out, den)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        """Gradients of the factorised attention: one numerical kernel, kept as one function because
        its gradient pieces share chunk buffers (the feature builder, the padded transposed inputs, G
        and the accumulated dU flow from the query pass into the key pass)."""
        xq, xk, v, Ut, out, den = ctx.saved_tensors
        plan, chunk = ctx.plan, ctx.chunk
        need_q, need_k, need_v = ctx.needs_input_grad[:3]
        n, Lq, m = xq.shape
        Lk, mv = v.shape[-2], v.shape[-1]
        c = mv + 1
        r1, r2 = plan.r1, plan.r2
        W, Wt, src, fac = device_tables(plan, ctx.coeffs, xq.device, xq.dtype)
        acc = _acc_dtype(xq.dtype)
        if plan.split == ("degree", 0) and plan.g >= 1:  # derivatives on the degree <= g - 1 prefix
            peel = (ctx.sphere[0], ctx.sphere[0].top) if ctx.sphere is not None else peeled(plan, c)
            built = plan if peel is None else peel[0]
            width = max(built.r1, c * (m + 1))
            sq, sk = chunk_length(n, Lq, width, xq.device, chunk), chunk_length(n, Lk, width, xq.device, chunk)
            grads = poly_backward(plan, W, (xq, xk, v, Ut, out, den), dout, (need_q, need_k, need_v), (sq, sk),
                                  acc, (_padded_T(xq, sq), _padded_T(xk, sk)), ctx.sphere)
            return (*grads, None, None, None, None)
        width = max(r1, r2 * c * (m + 1))
        dq = dk = dv = None
        v_shape = v.shape
        v, out, dout = v.reshape(n, Lk, mv), out.reshape(n, Lq, mv), dout.reshape(n, Lq, mv)

        def deriv(M: torch.Tensor, dst: torch.Tensor | None = None) -> torch.Tensor:
            """M (n, r1, r2, c) (any strides): coefficients on canonical slots -> dst (n, r2 m c, r1),
            the coefficients of d/dx_i (written in place when ``dst`` is given)."""
            flat = M.new_empty(n, r1 * r2 + 1, c)
            flat[:, :-1].view(n, r1, r2, c).copy_(M)
            flat[:, -1].zero_()  # the pad slot of the gather table
            if dst is None:
                dst = M.new_empty(n, r2 * m * c, r1)
            gathered = flat.index_select(1, src).view(n, r1, r2, m, c)
            torch.mul(gathered, fac[None, :, :, :, None], out=dst.view(n, r2, m, c, r1).permute(0, 4, 1, 2, 3))
            return dst

        # G = dL/dY for Y = [numerator, denominator], built transposed and padded: (n, c, Lq padded)
        dout = dout.to(xq.dtype)
        step = chunk_length(n, Lq, width, xq.device, chunk)
        Lqp = -(-Lq // step) * step
        GT = xq.new_empty(n, c, Lqp)
        torch.div(dout.transpose(1, 2), den[:, None], out=GT[:, :mv, :Lq])
        torch.div(-(dout * out).sum(-1), den, out=GT[:, mv, :Lq])
        if Lqp > Lq:
            GT[:, :, Lq:] = 0.0
        xqT = _padded_T(xq, step)
        feats = FeatureBuilder.get(plan, n, step, xq)
        dU = None
        if need_q:
            Dt = deriv(Ut.view(n, r2, c, r1).permute(0, 3, 1, 2))
            dq = xq.new_empty(n, m, Lqp)
            for a in range(0, Lqp, step):
                F1, F2 = feats(xqT[:, :, a:a + step])
                Ga = GT[:, :, a:a + step]
                if need_k or need_v:
                    part = torch.bmm(kron_rows(F2, Ga), F1.transpose(1, 2))
                    dU = part if Lqp == step else (part.to(acc) if dU is None else dU.add_(part))
                Z = torch.bmm(Dt, F1).view(n, r2 * m, c, step)
                dq[:, :, a:a + step] = contract_rows(F2, Z.mul_(Ga[:, None]).sum(2), m)
            dq = dq[:, :, :Lq].transpose(1, 2)
        elif need_k or need_v:
            dU = _key_side_sum(feats, xqT, GT, step, acc)

        if need_k or need_v:
            Mt = xq.new_empty(n, r2 * c * (1 + m * need_k), r1)  # [dT^T ; d/dx coefficients of dT]
            dTt = Mt[:, :r2 * c].view(n, r2, c, r1)
            torch.mul(dU.to(xq.dtype).view(n, r2, c, r1), Wt[None, :, None, :], out=dTt)
            if need_k:
                deriv(dTt.permute(0, 3, 1, 2), Mt[:, r2 * c:])
            step = chunk_length(n, Lk, width, xq.device, chunk)
            xkT, vhT = _padded_T(xk, step), _padded_T(v, step, ones=True)
            if feats.x.shape[-1] != step:
                feats = FeatureBuilder.get(plan, n, step, xq)
            if need_v:
                dv = xq.new_empty(n, mv, xkT.shape[-1])
            if need_k:
                dk = xq.new_empty(n, m, xkT.shape[-1])
            for a in range(0, xkT.shape[-1], step):
                F1, F2 = feats(xkT[:, :, a:a + step])
                Z = torch.bmm(Mt, F1)
                if need_v:
                    dv[:, :, a:a + step] = contract_rows(F2, Z[:, :r2 * c], c)[:, :mv]
                if need_k:
                    Zk = Z[:, r2 * c:].view(n, r2 * m, c, step)
                    dk[:, :, a:a + step] = contract_rows(F2, Zk.mul_(vhT[:, None, :, a:a + step]).sum(2), m)
            dv = None if dv is None else dv[:, :, :Lk].transpose(1, 2).reshape(v_shape)
            dk = None if dk is None else dk[:, :, :Lk].transpose(1, 2)
        return dq, dk, dv, None, None, None, None


def poly_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, poly: ExpPoly, *,
                   scale: float, center: bool = True, norms: tuple[float, float] | None = None,
                   split: tuple[str, int] | None = None, chunk: int | None = None,
                   sphere: bool = False) -> torch.Tensor:
    """softmax(scale q k^T) v with exp replaced by ``poly`` (which must cover |logit| <= poly.R).

    q (..., Lq, m), k (..., Lk, m), v (..., Lk, mv) with broadcastable batch dimensions.
    ``center`` subtracts the mean key (softmax is invariant to it). ``norms`` = (max |q_i|,
    max |k_j (centred)|) balances the two sides so both feature inputs have norm <= 1; without it
    both are scaled by sqrt(|scale| / R). The computation runs in float32 for half inputs.
    ``sphere``: look for one norm per head among the queries and among the keys (QK-norm) and, when
    found, evaluate the same polynomial with the fewer features of :mod:`latentdit.attention.sphere`
    (one host synchronisation; rows of differing norms take the full features).
    """
    m = q.shape[-1]
    mv = v.shape[-1]
    batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    Lq, Lk = q.shape[-2], k.shape[-2]
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k and v must have the same length, got {k.shape[-2]} and {v.shape[-2]}")
    if Lk == 0:
        raise ValueError("attention over an empty key set is undefined")
    out_dtype = q.dtype
    work = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    q, k, v = q.to(work), k.to(work), v.to(work)
    if center:
        k = k - k.mean(dim=-2, keepdim=True)
    R = poly.R
    if R > 0:
        gamma = 1.0
        if norms is not None and norms[0] > 0 and norms[1] > 0:
            gamma = math.sqrt(norms[1] / norms[0])
        aq = scale / math.sqrt(abs(scale) * R) * gamma
        ak = math.sqrt(abs(scale) / R) / gamma
    else:
        aq = ak = 0.0
    n = math.prod(batch) if len(batch) else 1
    if n == 0 or Lq == 0:
        return (v.new_zeros(*batch, Lq, mv) + 0 * (q.sum() + k.sum() + v.sum())).to(out_dtype)
    xq = q.expand(*batch, Lq, m).reshape(n, Lq, m)  # scaled by aq, ak below, in one multiply each
    xk = k.expand(*batch, Lk, m).reshape(n, Lk, m)
    vv = v.expand(*batch, Lk, mv)  # (B1, B2) batches (batch, heads) are read where they lie, no copy
    vv = vv if len(batch) == 2 else vv.reshape(n, Lk, mv)
    plan = make_plan(m, poly.degree, choose_split(m, poly.degree, mv, q.device) if split is None else tuple(split))
    on_sphere = sphere_inputs(plan, xq, xk, mv + 1, (aq, ak)) if sphere else None
    if on_sphere is not None:  # rows moved onto the exact sphere: by at most SPHERE_RTOL / 2 (relative)
        xq, xk = xq * (aq * on_sphere[3]), xk * (ak * on_sphere[4])
    else:
        xq, xk = xq * aq, xk * ak
    out = PolyAttentionFunction.apply(xq, xk, vv, poly.coeffs, plan, chunk, on_sphere and on_sphere[:3])
    return out.reshape(*batch, Lq, mv).to(out_dtype)


def sphere_applies(plan: Plan, c: int) -> bool:
    """Whether inputs on spheres would take the reduced features: an unsplit, unpeeled plan of degree
    >= 2 whose sphere has fewer features."""
    return (plan.split == ("degree", 0) and plan.g >= 2 and peeled(plan, c) is None
            and sphere_rank(plan.m, plan.g) < plan.r1)


def executed_split(m: int, g: int, mv: int, sphere: bool = False, device: str = "cpu") -> tuple[str, int]:
    """The factorisation :func:`poly_attention` runs for this size, ("sphere", 0) when ``sphere`` and
    the inputs lie on spheres (for FLOP counts: :mod:`latentdit.attention.cost`)."""
    split = choose_split(m, g, mv, torch.device(device))
    return ("sphere", 0) if sphere and sphere_applies(make_plan(m, g, split), mv + 1) else split


def sphere_inputs(plan: Plan, xq: torch.Tensor, xk: torch.Tensor, c: int,
                  scales: tuple[float, float] = (1.0, 1.0)) -> tuple | None:
    """(reduced plan, R(rho_q^2), R(rho_k^2), fq, fk) when every batch entry's query rows share one
    norm and its key rows another (to SPHERE_RTOL), the plan is unsplit and unpeeled and the sphere
    has fewer features; else None. ``fq``, ``fk`` (n, L, 1), constants for autograd, scale each row
    onto the exact sphere of radius rho, where the reduction is exact (:func:`common_radius`). The
    kernel's inputs are ``scales`` times xq, xk: the radii are those of the scaled rows."""
    if not sphere_applies(plan, c):
        return None
    sp = sphere_plan(plan.m, plan.g)
    rq = common_radius(xq)
    rk = None if rq is None else common_radius(xk)
    if rk is None:
        return None
    aq2, ak2 = scales[0] ** 2, scales[1] ** 2
    return sp, reduction_matrix(sp, rq[0] * aq2), reduction_matrix(sp, rk[0] * ak2), rq[1], rk[1]


# --------------------------------------------------------------------------- split tuning
_TUNED_SPLITS: dict[tuple[int, int, int, str], tuple[str, int]] = {}


def tune_split(m: int, g: int, mv: int, *, n: int = 4, L: int = 4096, device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32, repeats: int = 3) -> tuple[str, int]:
    """Time the forward of the candidate factorisations on random data (n x L rows, interleaved
    repeats, median) and remember the fastest for (m, g, mv, device type); :func:`poly_attention`
    then uses it instead of the cost model's choice. Returns the chosen split."""
    device = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(2, n, L, m, generator=gen), dim=-1).to(device, dtype)
    v = torch.randn(n, L, mv, generator=gen).to(device, dtype)
    coeffs = tuple(1.0 / math.factorial(d) for d in range(g + 1))
    cands = candidate_splits(m, g, mv)
    times: dict = {sp: [] for sp in cands}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.no_grad():
        for rep in range(repeats + 1):
            for sp in cands:
                sync()
                t0 = time.perf_counter()
                PolyAttentionFunction.apply(x[0], x[1], v, coeffs, make_plan(m, g, sp), None)
                sync()
                if rep:  # the first round warms up
                    times[sp].append(time.perf_counter() - t0)
    best = min(cands, key=lambda sp: sorted(times[sp])[len(times[sp]) // 2])
    _TUNED_SPLITS[(m, g, mv, device.type)] = best
    return best


def choose_split(m: int, g: int, mv: int, device: torch.device) -> tuple[str, int]:
    """The tuned factorisation if :func:`tune_split` ran for this case, else the cost model's."""
    return _TUNED_SPLITS.get((m, g, mv, device.type)) or best_split(m, g, mv)
