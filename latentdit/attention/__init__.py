"""Attention kernels: exact (torch SDPA) and the polynomial method of Alman & Song (Sec. 4).

Public entry point: :func:`attention` with tensors shaped like ``scaled_dot_product_attention``:
q (..., L_q, m), k (..., L_k, m), v (..., L_k, m_v); it computes softmax(scale q k^T) v.

Scale convention: ``scale=None`` means 1/sqrt(m) (SDPA's); the paper's block has no temperature and
passes ``scale=1.0``. All bounds (``logit_bound``, ``Certificate.R``) are on ``|scale <q, k>|``.

Modes:

- ``"exact"``: torch SDPA.
- ``"poly"``: always the polynomial method (:mod:`latentdit.attention.kernels`) with the lowest degree
  whose certified relative error on [-R, R] is <= eps; ValueError if none up to the maximum degree.
- ``"auto"``: the polynomial method when the criterion (:func:`certify`) certifies eps *and* the
  cost model predicts it faster at this size; otherwise exact, with the reason recorded in
  :func:`attention_stats` and one warning per process (until :func:`reset_attention_stats`).

``eps`` bounds the relative error of every kernel entry exp(logit); it implies
|out_i - exact_i| <= eps / (1 - eps) * max_j |v_j - exact_i| per coordinate.
"""

from __future__ import annotations

import threading
import warnings
from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from latentdit.attention.certificate import Certificate, certify, default_scale
from latentdit.attention.exact import reference_attention, reference_attention_grads
from latentdit.attention.kernels import poly_attention, tune_split
from latentdit.attention.linear import relu_linear_attention
from latentdit.attention.performer import performer_attention
from latentdit.attention.polynomials import MAX_DEGREE, POLY_KINDS, ExpPoly, choose_exp_poly, quantize_bound

ATTENTION_MODES = ("exact", "poly", "auto")

__all__ = ["ATTENTION_MODES", "POLY_KINDS", "AttentionStats", "Certificate", "ExpPoly", "attention",
           "attention_stats", "certify", "choose_exp_poly", "performer_attention", "poly_attention",
           "reference_attention", "reference_attention_grads", "reset_attention_stats", "sdpa", "tune_split"]


@dataclass
class AttentionStats:
    """Counts of attention calls by the method that ran, and why "auto" fell back to exact."""

    exact: int = 0
    poly: int = 0
    fallback_reasons: Counter = field(default_factory=Counter)  # code -> count
    fallback_messages: dict = field(default_factory=dict)         # code -> latest full message
    last_certificate: Certificate | None = None
    warned: bool = False

    def as_dict(self) -> dict:
        return {"exact": self.exact, "poly": self.poly, "fallbacks": sum(self.fallback_reasons.values()),
                "fallback_reasons": dict(self.fallback_reasons),
                "fallback_messages": dict(self.fallback_messages),
                "last_certificate": None if self.last_certificate is None else self.last_certificate.as_dict()}


_STATS = AttentionStats()
_LOCK = threading.Lock()


def attention_stats() -> AttentionStats:
    """The process-wide statistics (a live object; use ``.as_dict()`` for a snapshot).

    Calls traced by ``torch.compile`` are not counted (the counter's lock would split the graph).
    """
    return _STATS


def reset_attention_stats() -> None:
    """Zero the counts and re-arm the single fallback warning."""
    global _STATS
    with _LOCK:
        _STATS = AttentionStats()


def _record(method: str, cert: Certificate | None = None) -> None:
    if torch.compiler.is_compiling():
        return  # a lock would break a torch.compile graph; compiled calls are not counted
    warn = False
    with _LOCK:
        if method == "poly":
            _STATS.poly += 1
        else:
            _STATS.exact += 1
        if cert is not None:
            _STATS.last_certificate = cert
        reason = "" if cert is None or method == "poly" else cert.reason
        if reason:
            _STATS.fallback_reasons[cert.code] += 1
            _STATS.fallback_messages[cert.code] = reason
            if not _STATS.warned:
                _STATS.warned = warn = True
    if warn:
        warnings.warn(f"attention(mode='auto') fell back to exact attention: {reason}. Further "
                      "fallbacks are counted in latentdit.attention.attention_stats() without warning.",
                      RuntimeWarning, stacklevel=3)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Exact attention through torch SDPA, also when the query/key size m differs from the value size.

    SDPA's fused (flash) kernels need one head size; with another it falls back to a path that
    holds the whole (L_q, L_k) matrix, about 17 GB at L = 16384 for 16 heads. Zero-padding the
    smaller of (q, k) and v to the larger size changes no logit and no output coordinate, so the
    fused kernel runs; the scale is taken from the true m.
    """
    m, mv = q.shape[-1], v.shape[-1]
    if m == mv or q.numel() == 0 or k.numel() == 0 or m != k.shape[-1]:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    scale = default_scale(m, scale)
    if m < mv:
        return F.scaled_dot_product_attention(F.pad(q, (0, mv - m)), F.pad(k, (0, mv - m)), v, scale=scale)
    return F.scaled_dot_product_attention(q, k, F.pad(v, (0, m - mv)), scale=scale)[..., :mv]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, mode: str = "exact",
              scale: float | None = None, eps: float = 1e-3,
              logit_bound: float | None = None, kind: str = "chebyshev",
              max_degree: int = MAX_DEGREE, qk_sphere: bool = False) -> torch.Tensor:
    """softmax(scale * q k^T) v with the method chosen by ``mode``.

    ``logit_bound``: a bound on |scale <q, k>| known by construction (e.g. QK-norm with temperature
    tau gives tau**2); the degree is then chosen without inspecting q, k (no host synchronisation,
    and keys are not centred). ``kind``: "chebyshev" (relative minimax, the default) or "taylor"
    (even degree). Works under autograd and on any device. ``qk_sphere``: the caller normalises q and
    k per row (QK-norm); the polynomial method then checks for one norm per head and uses the
    reduced features of :mod:`latentdit.attention.sphere` (the same polynomial, fewer features; one
    host synchronisation).

    ``mode="relu_linear"`` runs a different operator, ReLU linear attention
    (:mod:`latentdit.attention.linear`, the efficient-DiT baseline): ``scale``, ``eps`` and the
    bound do not apply, and the call is not counted in :func:`attention_stats`. ``mode="none"``
    returns zeros (no token sees another; the attention-free baseline).
    """
    if mode == "relu_linear":
        return relu_linear_attention(q, k, v)
    if mode == "none":  # no attention (the attention-free baseline): the branch contributes nothing
        return v.new_zeros(*q.shape[:-1], v.shape[-1])
    if mode not in ATTENTION_MODES:
        raise ValueError(f"unknown attention mode {mode!r}; choose one of {ATTENTION_MODES}")
    if kind not in POLY_KINDS:
        raise ValueError(f"unknown polynomial kind {kind!r}; choose one of {POLY_KINDS}")
    if mode == "exact":
        _record("exact")
        return sdpa(q, k, v, scale)
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must have the same head size, got {q.shape[-1]} and {k.shape[-1]}")
    if logit_bound is not None:
        logit_bound = float(logit_bound)
        if not logit_bound >= 0:
            raise ValueError(f"logit_bound must be a non-negative number, got {logit_bound}")
    if q.numel() == 0 or k.numel() == 0:  # nothing to approximate: empty batch or sequence
        _record("exact")
        return sdpa(q, k, v, scale)
    s = default_scale(q.shape[-1], scale)
    cert = certify(q, k, s, eps, logit_bound=logit_bound, v_dim=v.shape[-1], kind=kind,
                   max_degree=max_degree, sphere=qk_sphere)
    if mode == "poly" and not cert.certified:
        raise ValueError(f"attention(mode='poly'): {cert.reason}. Lower the logit bound (e.g. QK-norm "
                         "with a capped temperature), raise eps or max_degree, or use mode='auto'.")
    if mode == "auto" and not cert.ok:
        _record("exact", cert)
        return sdpa(q, k, v, scale)
    poly = choose_exp_poly(cert.R_used, float(eps), kind, max_degree)
    _record("poly", cert)
    return poly_attention(q, k, v, poly, scale=s, center=cert.centered, norms=cert.norms, sphere=qk_sphere)
