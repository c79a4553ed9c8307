"""The polynomial method (Alman & Song; Sec. 4 of the paper): attention in time linear in L.

With logits ``x = R t`` and a polynomial ``P(t) = sum_d c_d t^d ~ exp(R t)`` on ``[-1, 1]``
(:mod:`latentdit.attention.criterion`), every kernel entry is

    P(<a, b>) = sum_{|gamma| <= g} c_{|gamma|} multinom(gamma) a^gamma b^gamma,

a sum over the ``r = C(m + g, g)`` symmetric monomials ``a^gamma`` of the m head coordinates. With
``phi(a) = (a^gamma)_gamma`` and ``w_gamma = c_{|gamma|} multinom(gamma)`` the attention output is

    out = D^{-1} phi(Q) diag(w) (phi(K)^T [V, 1]),    D = the last column,

linear in L. Implementation (all per batch * head, chunked over L so memory stays bounded):

- Feature maps are built by repeated outer products without gathers: monomials of degree d are
  ordered by their last variable i, and those ending in i are exactly the degree-(d-1) monomials
  ending in <= i (a prefix of the previous block) times ``a_i``; one multiply per (d, i).
- Split ``g = g1 + g2``: each monomial is written once as ``gamma = alpha + beta`` (its canonical
  pair: beta takes the ``|gamma| - g1`` largest variable indices). With ``F1 = phi_{<=g1}`` and
  ``F2 = phi_{<=g2}`` the key side is one GEMM against the row-wise Kronecker product
  ``T = F1(K)^T (F2(K) (x) [V, 1])`` (r1 x r2 (m_v + 1)), the query side
  ``Y = sum_beta F2_beta(Q) (F1(Q) (W (.) T))_beta``; W holds w_gamma on canonical pairs and 0
  elsewhere. For head size 4 and g = 8, g2 = 1 turns a rank-495 GEMM of width 5 into a rank-330
  GEMM of width 25, which costs the same per row on a CPU, and never builds the top-degree block.
- Backward (Thm 4.1 in the chained low-rank form): with G = dL/dY, ``dT = W (.) (F1(Q)^T (F2(Q) (x) G))``
  is again low rank; gradients w.r.t. the features' inputs use d/da_i a^gamma = gamma_i
  a^{gamma - e_i}, i.e. the same features with coefficients shifted by one degree (precomputed
  gather tables), so every pass is linear in L and nothing L x L or L x r (beyond a chunk) is stored.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from latentdit.attention.criterion import ExpPoly, _row_cost, best_split, rank, split_ranks

FEATURE_BUDGET_CPU = 1 << 20   # elements of the largest per-chunk temporary (4 MiB in fp32)
FEATURE_BUDGET_CUDA = 1 << 25


# --------------------------------------------------------------------------- monomial tables
def _monomials(m: int, g: int) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """Exponents (r, m) of all monomials of degree <= g in m variables in builder order, and the
    builder steps (src, count, variable, dst): rows[dst:dst+count] = rows[src:src+count] * x_var."""
    exps = [np.zeros(m, dtype=np.int64)]
    last = [-1]
    prev = [0]
    ops = []
    for _ in range(1, g + 1):
        block = []
        for i in range(m):
            cnt = sum(1 for j in prev if last[j] <= i)
            assert all(last[j] <= i for j in prev[:cnt])  # a prefix by construction
            ops.append((prev[0], cnt, i, len(exps)))
            for j in prev[:cnt]:
                e = exps[j].copy()
                e[i] += 1
                block.append(len(exps))
                exps.append(e)
                last.append(i)
        prev = block
    return np.stack(exps), ops


@dataclass(frozen=True, eq=False)  # hashed by identity: plans are cached singletons
class Plan:
    """Index tables for P(<a, b>) = sum_{alpha, beta} F1_alpha F2_beta W_{alpha beta} (cached).

    split = ("degree", g2): F1, F2 = all monomials of degree <= g - g2 and <= g2 in all m variables;
    split = ("vars", m1): F1 = monomials of degree <= g in the first m1 variables, F2 = those in
    the remaining m - m1 variables. Each monomial gamma of degree <= g has one canonical slot.
    """

    m: int
    g: int
    split: tuple[str, int]
    r1: int
    r2: int
    vars1: tuple[int, int]     # F1 is built from x[:, vars1[0]:vars1[1]]
    vars2: tuple[int, int]
    ops1: tuple
    ops2: tuple
    slot_degree: np.ndarray    # (r1, r2): |gamma| on canonical slots, -1 elsewhere
    slot_multinom: np.ndarray  # (r1, r2): multinom(gamma) on canonical slots, 0 elsewhere
    deriv_src: np.ndarray      # (r1 r2, m): slot of gamma + e_i (r1 r2 = a zero pad)
    deriv_fac: np.ndarray      # (r1 r2, m): gamma_i + 1, 0 where unused


@functools.lru_cache(maxsize=None)
def make_plan(m: int, g: int, split: tuple[str, int] = ("degree", 0)) -> Plan:
    kind, p = split
    if kind == "degree":
        g2 = min(p, g)
        e1, ops1 = _monomials(m, g - g2)
        e2, ops2 = _monomials(m, g2)
        vars1 = vars2 = (0, m)
    elif kind == "vars" and 0 < p < m:
        e1, ops1 = _monomials(p, g)
        e2, ops2 = _monomials(m - p, g)
        e1 = np.concatenate([e1, np.zeros((len(e1), m - p), dtype=np.int64)], 1)
        e2 = np.concatenate([np.zeros((len(e2), p), dtype=np.int64), e2], 1)
        vars1, vars2 = (0, p), (p, m)
    else:
        raise ValueError(f"invalid split {split!r} for head size {m}")
    r1, r2 = len(e1), len(e2)
    idx1 = {tuple(e): i for i, e in enumerate(e1)}
    idx2 = {tuple(e): i for i, e in enumerate(e2)}
    g1 = int(e1.sum(1).max())

    def canonical(gamma: tuple[int, ...]) -> int:
        if kind == "vars":
            alpha = gamma[:p] + (0,) * (m - p)
            beta = (0,) * p + gamma[p:]
        else:  # beta takes the |gamma| - g1 largest variable indices
            s = sum(gamma) - g1
            b = [0] * m
            for i in reversed(range(m)):
                if s <= 0:
                    break
                b[i] = min(gamma[i], s)
                s -= b[i]
            beta = tuple(b)
            alpha = tuple(a - bb for a, bb in zip(gamma, beta))
        return idx1[alpha] * r2 + idx2[beta]

    e_all, _ = _monomials(m, g)
    slot_degree = np.full(r1 * r2, -1, dtype=np.int64)
    slot_multinom = np.zeros(r1 * r2)
    slot_of = {}
    for gamma in map(tuple, e_all.tolist()):
        s = canonical(gamma)
        d = sum(gamma)
        slot_of[gamma] = s
        slot_degree[s] = d
        slot_multinom[s] = math.factorial(d) / math.prod(math.factorial(a) for a in gamma)
    assert len(set(slot_of.values())) == len(slot_of) == rank(m, g)
    deriv_src = np.full((r1 * r2, m), r1 * r2, dtype=np.int64)
    deriv_fac = np.zeros((r1 * r2, m))
    for gamma, s in slot_of.items():
        if sum(gamma) < g:
            for i in range(m):
                up = list(gamma)
                up[i] += 1
                deriv_src[s, i] = slot_of[tuple(up)]
                deriv_fac[s, i] = gamma[i] + 1
    return Plan(m, g, (kind, p), r1, r2, vars1, vars2, tuple(ops1), tuple(ops2),
                slot_degree.reshape(r1, r2), slot_multinom.reshape(r1, r2), deriv_src, deriv_fac)


@functools.lru_cache(maxsize=64)
def _device_tables(plan: Plan, coeffs: tuple[float, ...], device: torch.device, dtype: torch.dtype):
    """W (r1, r2) = c_{|gamma|} multinom(gamma) on canonical slots; derivative gather tables."""
    c = np.asarray(coeffs + (0.0,) * (plan.g + 1 - len(coeffs)))
    w = np.where(plan.slot_degree >= 0, c[np.clip(plan.slot_degree, 0, None)] * plan.slot_multinom, 0.0)
    W = torch.tensor(w, dtype=dtype, device=device)
    src = torch.tensor(plan.deriv_src, device=device)
    fac = torch.tensor(plan.deriv_fac, dtype=dtype, device=device)
    return W, src, fac


# --------------------------------------------------------------------------- split tuning
_TUNED_SPLITS: dict[tuple[int, int, int, str], tuple[str, int]] = {}


def candidate_splits(m: int, g: int, mv: int, top: int = 3) -> list[tuple[str, int]]:
    """The ``top`` factorisations with the lowest modelled cost, plus the unsplit one."""
    cands = [("degree", g2) for g2 in range(0, min(g, 3) + 1)] + [("vars", p) for p in range(1, m)]
    cands = [sp for sp in cands if math.prod(split_ranks(m, g, sp)) <= 16 * rank(m, g)]
    best = sorted(cands, key=lambda sp: (_row_cost(m, g, mv, sp), sp))[:top]
    return best + ([("degree", 0)] if ("degree", 0) not in best else [])


def tune_split(m: int, g: int, mv: int, *, n: int = 4, L: int = 4096, device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32, repeats: int = 3) -> tuple[str, int]:
    """Time the forward of the candidate factorisations on random data (n x L rows, interleaved
    repeats, median) and remember the fastest for (m, g, mv, device type); :func:`poly_attention`
    then uses it instead of the cost model's choice. Returns the chosen split."""
    import time
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


# --------------------------------------------------------------------------- kernels
def features(x: torch.Tensor, ops: tuple, r: int) -> torch.Tensor:
    """All monomials of degree <= g of x (n, m, Lc), as (n, r, Lc), by repeated outer products."""
    n, _, Lc = x.shape
    out = torch.empty(n, r, Lc, dtype=x.dtype, device=x.device)
    out[:, 0].fill_(1.0)
    for src, cnt, i, dst in ops:
        torch.mul(out[:, src:src + cnt], x[:, i:i + 1], out=out[:, dst:dst + cnt])
    return out


class _Features:
    """Feature maps F1, F2 of one chunk, built into buffers allocated once per pass; the per-step
    views are precomputed so the inner loop is one multiply per (degree, variable)."""

    def __init__(self, plan: Plan, n: int, Lc: int, like: torch.Tensor):
        self.x = like.new_empty(n, plan.m, Lc)
        self.F1 = like.new_empty(n, plan.r1, Lc)
        self.F2 = like.new_empty(n, plan.r2, Lc) if plan.r2 > 1 else None
        self.steps = []
        for F, ops, (lo, _) in ((self.F1, plan.ops1, plan.vars1), (self.F2, plan.ops2, plan.vars2)):
            if F is None:
                continue
            F[:, 0].fill_(1.0)
            self.steps += [(F[:, s:s + c], self.x[:, lo + i:lo + i + 1], F[:, d:d + c]) for s, c, i, d in ops]

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        self.x.copy_(x)
        for a, b, o in self.steps:
            torch.mul(a, b, out=o)
        return self.F1, self.F2


def _kron(F2: torch.Tensor | None, A: torch.Tensor) -> torch.Tensor:
    """Row-wise Kronecker product: (n, r2, Lc) and (n, c, Lc) -> (n, r2 c, Lc)."""
    if F2 is None:
        return A
    n, r2, Lc = F2.shape
    return (F2[:, :, None, :] * A[:, None, :, :]).reshape(n, r2 * A.shape[1], Lc)


def _contract(F2: torch.Tensor | None, Z: torch.Tensor, c: int) -> torch.Tensor:
    """sum_beta F2_beta Z_beta: (n, r2, Lc) and (n, r2 c, Lc) -> (n, c, Lc)."""
    if F2 is None:
        return Z
    n, r2, Lc = F2.shape
    return (Z.view(n, r2, c, Lc) * F2[:, :, None, :]).sum(1)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype in (torch.float32, torch.float64) else torch.float32


def chunk_length(n: int, L: int, width: int, device: torch.device, chunk: int | None = None) -> int:
    """Rows per chunk so that the largest temporary (n x width x rows) fits the feature budget."""
    if chunk is not None:
        return max(1, min(int(chunk), L))
    budget = FEATURE_BUDGET_CUDA if device.type == "cuda" else FEATURE_BUDGET_CPU
    step = max(1, min(L, max(64, budget // max(1, n * width))))
    chunks = -(-L // step)
    return -(-L // chunks)  # balanced chunks: padding is < one row per chunk


def _padded_T(x: torch.Tensor, step: int, ones: bool = False) -> torch.Tensor:
    """(n, L, k) -> (n, k [+1 row of ones], L padded with zeros to a multiple of step)."""
    n, L, k = x.shape
    Lp = -(-L // step) * step
    out = x.new_zeros(n, k + int(ones), Lp)
    out[:, :k, :L] = x.transpose(1, 2)
    if ones:
        out[:, k, :L] = 1.0
    return out


class PolyAttentionFunction(torch.autograd.Function):
    """out = D^{-1} P(Xq Xk^T) V with P given by its monomial coefficients and a factorisation plan.

    xq (n, Lq, m), xk (n, Lk, m), v (n, Lk, mv); the logits are R <xq_i, xk_j> with |<., .>| <= 1.
    Padded key rows have V-hat = 0 (no contribution); padded query rows are discarded.
    """

    @staticmethod
    def forward(ctx, xq, xk, v, coeffs, plan: Plan, chunk):  # noqa: D401
        n, Lq, m = xq.shape
        Lk, mv = v.shape[1], v.shape[2]
        c = mv + 1
        W, _, _ = _device_tables(plan, coeffs, xq.device, xq.dtype)
        r1, r2 = plan.r1, plan.r2
        width = max(r1, r2 * c * (m + 1))
        acc = _acc_dtype(xq.dtype)

        step = chunk_length(n, Lk, width, xq.device, chunk)
        xkT, vhT = _padded_T(xk, step), _padded_T(v, step, ones=True)
        feats = _Features(plan, n, step, xq)
        T = torch.zeros(n, r1, r2 * c, dtype=acc, device=xq.device)
        for a in range(0, xkT.shape[-1], step):
            F1, F2 = feats(xkT[:, :, a:a + step])
            T += torch.bmm(_kron(F2, vhT[:, :, a:a + step]), F1.transpose(1, 2)).transpose(1, 2)
        U = T.to(xq.dtype).view(n, r1, r2, c) * W[None, :, :, None]
        Ut = U.reshape(n, r1, r2 * c).transpose(1, 2).contiguous()  # (n, r2 c, r1)

        step = chunk_length(n, Lq, width, xq.device, chunk)
        xqT = _padded_T(xq, step)
        if feats.x.shape[-1] != step:
            feats = _Features(plan, n, step, xq)
        Y = xq.new_empty(n, c, xqT.shape[-1])
        for a in range(0, xqT.shape[-1], step):
            F1, F2 = feats(xqT[:, :, a:a + step])
            Y[:, :, a:a + step] = _contract(F2, torch.bmm(Ut, F1), c)
        den = Y[:, mv, :Lq]
        out = (Y[:, :mv, :Lq] / den[:, None]).transpose(1, 2)

        ctx.plan, ctx.chunk, ctx.coeffs = plan, chunk, coeffs
        ctx.save_for_backward(xq, xk, v, U, out, den)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        xq, xk, v, U, out, den = ctx.saved_tensors
        plan, chunk = ctx.plan, ctx.chunk
        need_q, need_k, need_v = ctx.needs_input_grad[:3]
        n, Lq, m = xq.shape
        Lk, mv = v.shape[1], v.shape[2]
        c = mv + 1
        r1, r2 = plan.r1, plan.r2
        W, src, fac = _device_tables(plan, ctx.coeffs, xq.device, xq.dtype)
        width = max(r1, r2 * c * (m + 1))
        acc = _acc_dtype(xq.dtype)
        dq = dk = dv = None

        # G = dL/dY for Y = [numerator, denominator]: (n, Lq, c)
        dout = dout.to(xq.dtype)
        G = torch.cat([dout, -(dout * out).sum(-1, keepdim=True)], -1) / den[:, :, None]

        def deriv(M: torch.Tensor) -> torch.Tensor:
            """(n, r1, r2, c) coefficients on canonical slots -> (n, r2 m c, r1) of d/dx_i."""
            flat = torch.cat([M.reshape(n, r1 * r2, c), M.new_zeros(n, 1, c)], 1)
            D = flat[:, src] * fac[None, :, :, None]  # (n, r1 r2, m, c)
            return D.view(n, r1, r2 * m * c).transpose(1, 2).contiguous()

        step = chunk_length(n, Lq, width, xq.device, chunk)
        xqT, GT = _padded_T(xq, step), _padded_T(G, step)
        feats = _Features(plan, n, step, xq)
        dU = torch.zeros(n, r1, r2 * c, dtype=acc, device=xq.device) if (need_k or need_v) else None
        Dt = deriv(U) if need_q else None
        if need_q:
            dq = xq.new_empty(n, m, xqT.shape[-1])
        for a in range(0, xqT.shape[-1], step):
            F1, F2 = feats(xqT[:, :, a:a + step])
            Ga = GT[:, :, a:a + step]
            if dU is not None:
                dU += torch.bmm(_kron(F2, Ga), F1.transpose(1, 2)).transpose(1, 2)
            if need_q:
                Z = torch.bmm(Dt, F1).view(n, r2 * m, c, step)
                dq[:, :, a:a + step] = _contract(F2, (Z * Ga[:, None]).sum(2), m)
        if need_q:
            dq = dq[:, :, :Lq].transpose(1, 2)

        if need_k or need_v:
            dT = dU.to(xq.dtype).view(n, r1, r2, c) * W[None, :, :, None]
            parts = [dT.reshape(n, r1, r2 * c).transpose(1, 2)]
            if need_k:
                parts.append(deriv(dT))
            Mt = torch.cat(parts, 1).contiguous()  # (n, r2 c [+ r2 m c], r1)
            step = chunk_length(n, Lk, width, xq.device, chunk)
            xkT, vhT = _padded_T(xk, step), _padded_T(v, step, ones=True)
            if feats.x.shape[-1] != step:
                feats = _Features(plan, n, step, xq)
            if need_v:
                dv = xq.new_empty(n, mv, xkT.shape[-1])
            if need_k:
                dk = xq.new_empty(n, m, xkT.shape[-1])
            for a in range(0, xkT.shape[-1], step):
                F1, F2 = feats(xkT[:, :, a:a + step])
                Z = torch.bmm(Mt, F1)
                if need_v:
                    dv[:, :, a:a + step] = _contract(F2, Z[:, :r2 * c], c)[:, :mv]
                if need_k:
                    Zk = Z[:, r2 * c:].view(n, r2 * m, c, step)
                    dk[:, :, a:a + step] = _contract(F2, (Zk * vhT[:, None, :, a:a + step]).sum(2), m)
            dv = None if dv is None else dv[:, :, :Lk].transpose(1, 2)
            dk = None if dk is None else dk[:, :, :Lk].transpose(1, 2)
        return dq, dk, dv, None, None, None


def poly_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, poly: ExpPoly, *,
                   scale: float, center: bool = True, norms: tuple[float, float] | None = None,
                   split: tuple[str, int] | None = None, chunk: int | None = None) -> torch.Tensor:
    """softmax(scale q k^T) v with exp replaced by ``poly`` (which must cover |logit| <= poly.R).

    q (..., Lq, m), k (..., Lk, m), v (..., Lk, mv) with broadcastable batch dimensions.
    ``center`` subtracts the mean key (softmax is invariant to it). ``norms`` = (max |q_i|,
    max |k_j (centred)|) balances the two sides so both feature inputs have norm <= 1; without it
    both are scaled by sqrt(|scale| / R). The computation runs in float32 for half inputs.
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
    xq = (q * aq).expand(*batch, Lq, m).reshape(n, Lq, m)
    xk = (k * ak).expand(*batch, Lk, m).reshape(n, Lk, m)
    vv = v.expand(*batch, Lk, mv).reshape(n, Lk, mv)
    plan = make_plan(m, poly.degree, choose_split(m, poly.degree, mv, q.device) if split is None else tuple(split))
    out = PolyAttentionFunction.apply(xq, xk, vv, poly.coeffs, plan, chunk)
    return out.reshape(*batch, Lq, mv).to(out_dtype)
