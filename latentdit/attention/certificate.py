"""The efficiency criterion (Prop. 4.1-4.2): a certified bound on the logits, the polynomial degree
that guarantees ``eps`` (:mod:`latentdit.attention.polynomials`) and whether the polynomial method
is predicted faster than exact attention (:mod:`latentdit.attention.cost`), as a
:class:`Certificate`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from latentdit.attention.cost import MAX_RANK, predicted_times, rank
from latentdit.attention.polynomials import MAX_DEGREE, choose_exp_poly, quantize_bound


@dataclass(frozen=True)
class Certificate:
    """Outcome of the criterion for one attention call.

    R: certified bound on max |logit| (after key centering when the data were inspected);
    R_used: R rounded up to the polynomial cache grid; entry_bound: max |entry| of the balanced
    query/key vectors whose inner products are the logits (None when not inspected);
    entry_ratio: entry_bound / sqrt(log L) (Prop. 4.1 wants o(1)); degree, rank: the certified
    polynomial and C(m + g, g); error_bound: its certified relative error; predicted_speedup:
    modelled exact / poly time; ok: the polynomial method is certified *and* predicted faster;
    certified: a degree <= max_degree certifies eps with rank <= MAX_RANK; reason: why not ok
    ('' when ok); code: the reason's kind ("", "no_degree", "rank_too_large", "not_faster").
    """

    ok: bool
    certified: bool
    reason: str
    code: str
    R: float
    R_used: float
    entry_bound: float | None
    sqrt_log_L: float
    entry_ratio: float | None
    degree: int | None
    rank: int | None
    error_bound: float | None
    predicted_speedup: float
    kind: str
    eps: float
    head_dim: int
    Lq: int
    Lk: int
    centered: bool
    norms: tuple[float, float] | None = None  # (max |q_i|, max |k_j - mean k|) when inspected

    def as_dict(self) -> dict:
        return asdict(self)


def default_scale(m: int, scale: float | None) -> float:
    """SDPA's convention: scale=None means 1/sqrt(m)."""
    return 1.0 / math.sqrt(m) if scale is None else float(scale)


@torch.no_grad()
def data_logit_bound(q: torch.Tensor, k: torch.Tensor, scale: float) -> tuple[float, float, float, float, float]:
    """Certified bound on max |scale <q_i, k_j - mean k>| from row norms (Cauchy-Schwarz), no L x L
    matrix. Returns (R, max |q_i|, max |k_j - mean k|, max |q entry|, max |k - mean k entry|) with a
    single host synchronisation.

    The statistics are taken in float64 (O(L m) work): in float32 the rounding of the norms can put a
    bound on logits of size ~400 about 1e-5 *below* the true maximum, which is no certificate."""
    q = q.double()
    kc = k.double()
    kc = kc - kc.mean(dim=-2, keepdim=True)
    # row norms as sums of squares: linalg.vector_norm over a strided last dimension (q, k as transposed
    # views of (.., m, L) tensors) takes a slow path, about 100x slower at L = 16384
    stats = torch.stack([(q * q).sum(-1).amax().sqrt(), (kc * kc).sum(-1).amax().sqrt(),
                         q.abs().amax(), kc.abs().amax()])
    qa, ka, qi, ki = stats.double().tolist()
    return abs(scale) * qa * ka, qa, ka, qi, ki


def certify(q: torch.Tensor, k: torch.Tensor, scale: float | None = None, eps: float = 1e-3, *,
            logit_bound: float | None = None, v_dim: int | None = None, kind: str = "chebyshev",
            max_degree: int = MAX_DEGREE, sphere: bool = False) -> Certificate:
    """The criterion: a certified logit bound, the degree that guarantees ``eps`` and whether the
    polynomial method is predicted faster than exact attention at this size.

    With ``logit_bound`` the data are not inspected (no synchronisation) and keys are not centred
    (a bound on raw logits can double after centring); otherwise R comes from row norms after
    subtracting the mean key. ``sphere``: the caller normalises q and k per row (QK-norm), so the
    cost model prices the sphere's features (:mod:`latentdit.attention.sphere`).
    """
    m = q.shape[-1]
    Lq, Lk = q.shape[-2], k.shape[-2]
    mv = m if v_dim is None else v_dim
    n = max(1, math.prod(torch.broadcast_shapes(q.shape[:-2], k.shape[:-2])))
    s = default_scale(m, scale)
    if logit_bound is not None:
        R = float(logit_bound)
        entry = None
        norms = None
        centered = False
    else:
        R, qa, ka, qi, ki = data_logit_bound(q, k, s)
        norms = (qa, ka)
        # balanced vectors q' = q sqrt|s| gamma, k' = k~ sqrt|s| / gamma with max |q'| = max |k'| = sqrt(R)
        gamma = math.sqrt(ka / qa) if qa > 0 and ka > 0 else 1.0
        entry = max(qi * math.sqrt(abs(s)) * gamma, ki * math.sqrt(abs(s)) / gamma)
        centered = True
    if not math.isfinite(R):
        raise ValueError(f"logit bound is not finite ({R}); q or k contains inf/nan")
    R_used = quantize_bound(R)
    sqrt_log_L = math.sqrt(math.log(max(Lq, Lk, 2)))
    poly = choose_exp_poly(R_used, float(eps), kind, max_degree)
    speedup, certified, code = 0.0, False, ""
    if poly is None:
        code = "no_degree"
        reason = (f"no {kind} polynomial of degree <= {max_degree} certifies relative error {eps:g} "
                  f"for |logit| <= {R:.3g}")
    elif rank(m, poly.degree) > MAX_RANK:
        code = "rank_too_large"
        reason = (f"rank C({m}+{poly.degree},{poly.degree}) = {rank(m, poly.degree)} exceeds the maximum "
                  f"rank {MAX_RANK}")
    else:
        certified = True
        exact_t, poly_t = predicted_times(n, Lq, Lk, m, mv, poly.degree, sphere=sphere)
        speedup = exact_t / poly_t
        reason = "" if speedup >= 1.0 else (
            f"rank C({m}+{poly.degree},{poly.degree}) = {rank(m, poly.degree)} gives no speed-up at "
            f"Lq={Lq}, Lk={Lk} (predicted {speedup:.2g}x)")
        code = "not_faster" if reason else ""
    return Certificate(
        ok=certified and not reason, certified=certified, reason=reason, code=code, R=R,
        R_used=R_used, entry_bound=entry, sqrt_log_L=sqrt_log_L,
        entry_ratio=None if entry is None else entry / sqrt_log_L,
        degree=None if poly is None else poly.degree, rank=None if poly is None else rank(m, poly.degree),
        error_bound=None if poly is None else poly.error_bound, predicted_speedup=speedup, kind=kind,
        eps=float(eps), head_dim=m, Lq=Lq, Lk=Lk, centered=centered, norms=norms)
