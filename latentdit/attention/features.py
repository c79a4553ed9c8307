"""Monomial feature maps of the polynomial method: the factorisation plans, their index tables and
the feature builders.

With logits ``x = R t`` and a polynomial ``P(t) = sum_d c_d t^d ~ exp(R t)`` on ``[-1, 1]``
(:mod:`latentdit.attention.polynomials`), every kernel entry is

    P(<a, b>) = sum_{|gamma| <= g} c_{|gamma|} multinom(gamma) a^gamma b^gamma,

a sum over the ``r = C(m + g, g)`` symmetric monomials ``a^gamma`` of the m head coordinates, with
``phi(a) = (a^gamma)_gamma`` and weights ``w_gamma = c_{|gamma|} multinom(gamma)``.

- Feature maps are built by repeated outer products without gathers: monomials of degree d are
  ordered by their last variable i, and those ending in i are exactly the degree-(d-1) monomials
  ending in <= i (a prefix of the previous block) times ``a_i``; one multiply per (d, i).
- Split ``g = g1 + g2``: each monomial is written once as ``gamma = alpha + beta`` (its canonical
  pair: beta takes the ``|gamma| - g1`` largest variable indices), so that with ``F1 = phi_{<=g1}``
  and ``F2 = phi_{<=g2}`` the kernel is ``sum_{alpha, beta} F1_alpha F2_beta W_{alpha beta}``;
  W holds w_gamma on canonical pairs and 0 elsewhere (:class:`Plan`, :func:`make_plan`).
- Derivatives use d/da_i a^gamma = gamma_i a^{gamma - e_i}, i.e. the same features with
  coefficients shifted by one degree (precomputed gather tables in the plan).
"""

from __future__ import annotations

import functools
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from latentdit.attention.cost import rank


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
def device_tables(plan: Plan, coeffs: tuple[float, ...], device: torch.device, dtype: torch.dtype):
    """(W, W^T, src, fac) on ``device``, built once per (plan, polynomial, device, dtype).

    W (r1, r2) = c_{|gamma|} multinom(gamma) on canonical slots and W^T (r2, r1) contiguous; the
    derivative gather table as a flat index (r1 r2 m,) into the slots plus one zero pad slot, and
    its factors (r1, r2, m)."""
    c = np.asarray(coeffs + (0.0,) * (plan.g + 1 - len(coeffs)))
    w = np.where(plan.slot_degree >= 0, c[np.clip(plan.slot_degree, 0, None)] * plan.slot_multinom, 0.0)
    W = torch.tensor(w, dtype=dtype, device=device)
    src = torch.tensor(plan.deriv_src.reshape(-1), device=device)
    fac = torch.tensor(plan.deriv_fac, dtype=dtype, device=device).view(plan.r1, plan.r2, plan.m)
    return W, W.t().contiguous(), src, fac


def features(x: torch.Tensor, ops: tuple, r: int) -> torch.Tensor:
    """All monomials of degree <= g of x (n, m, Lc), as (n, r, Lc), by repeated outer products."""
    n, _, Lc = x.shape
    out = torch.empty(n, r, Lc, dtype=x.dtype, device=x.device)
    out[:, 0].fill_(1.0)
    for src, cnt, i, dst in ops:
        torch.mul(out[:, src:src + cnt], x[:, i:i + 1], out=out[:, dst:dst + cnt])
    return out


class FeatureBuilder:
    """Feature maps F1, F2 of one chunk, built into buffers; the per-step views are precomputed so
    the inner loop is one multiply per (degree, variable).

    :meth:`get` returns a builder kept per thread for (plan, n, Lc, dtype, device) when its buffers
    are small (at most CACHE_MAX_ELEMENTS): at short L building the views costs about as much as
    the features themselves, at long L it is negligible and large buffers are not held. The
    returned F1, F2 are overwritten by the next call, so a pass must use them before building
    the next chunk.
    """

    _cache = threading.local()
    CACHE_SIZE = 8
    CACHE_MAX_ELEMENTS = 1 << 21

    @classmethod
    def get(cls, plan: Plan, n: int, Lc: int, like: torch.Tensor) -> "FeatureBuilder":
        if n * (plan.m + plan.r1 + plan.r2) * Lc > cls.CACHE_MAX_ELEMENTS:
            return cls(plan, n, Lc, like)
        key = (plan, n, Lc, like.dtype, like.device, torch.is_inference_mode_enabled())  # inference tensors stay apart
        cache = getattr(cls._cache, "builders", None)
        if cache is None:
            cache = cls._cache.builders = OrderedDict()
        fb = cache.get(key)
        if fb is None:
            fb = cache[key] = cls(plan, n, Lc, like)
            while len(cache) > cls.CACHE_SIZE:
                cache.popitem(last=False)
        else:
            cache.move_to_end(key)
        return fb

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

    def peel_views(self, top: tuple) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """For peeled builder steps (src, count, variable, dst): the views (F1 rows src:src+count,
        their transpose, the variable's row (n, 1, Lc) of the current chunk), made once."""
        views = self.__dict__.setdefault("_peel_views", {})
        if top not in views:
            views[top] = [(self.F1[:, s:s + c], self.F1[:, s:s + c].transpose(1, 2), self.x[:, i:i + 1])
                          for s, c, i, _ in top]
        return views[top]

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        self.x.copy_(x)
        for a, b, o in self.steps:
            torch.mul(a, b, out=o)
        return self.F1, self.F2


def kron_rows(F2: torch.Tensor | None, A: torch.Tensor) -> torch.Tensor:
    """Row-wise Kronecker product: (n, r2, Lc) and (n, c, Lc) -> (n, r2 c, Lc)."""
    if F2 is None:
        return A
    n, r2, Lc = F2.shape
    return (F2[:, :, None, :] * A[:, None, :, :]).reshape(n, r2 * A.shape[1], Lc)


def contract_rows(F2: torch.Tensor | None, Z: torch.Tensor, c: int) -> torch.Tensor:
    """sum_beta F2_beta Z_beta: (n, r2, Lc) and (n, r2 c, Lc) -> (n, c, Lc). Z is a temporary and
    is overwritten (the product is taken in place: no second buffer of Z's size)."""
    if F2 is None:
        return Z
    n, r2, Lc = F2.shape
    return Z.view(n, r2, c, Lc).mul_(F2[:, :, None, :]).sum(1)
