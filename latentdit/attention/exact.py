"""Exact attention computed directly (explicit logits, softmax, chunked over queries).

The reference for tests and benchmark errors: no SDPA, no approximation, any dtype (use float64).
Memory is O(chunk * Lk) per batch element.
"""

from __future__ import annotations

import math

import torch


def _flat(q, k, v):
    batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    n = math.prod(batch) if len(batch) else 1
    return (batch, q.expand(*batch, *q.shape[-2:]).reshape(n, *q.shape[-2:]),
            k.expand(*batch, *k.shape[-2:]).reshape(n, *k.shape[-2:]),
            v.expand(*batch, *v.shape[-2:]).reshape(n, *v.shape[-2:]))


@torch.no_grad()
def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
                        chunk: int = 1024) -> torch.Tensor:
    """softmax(scale q k^T) v by explicit logits; scale=None means 1/sqrt(m)."""
    s = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    batch, q2, k2, v2 = _flat(q, k, v)
    out = q2.new_empty(q2.shape[0], q2.shape[1], v2.shape[-1])
    for a in range(0, q2.shape[1], chunk):
        logits = s * torch.bmm(q2[:, a:a + chunk], k2.transpose(1, 2))
        out[:, a:a + chunk] = torch.bmm(torch.softmax(logits, dim=-1), v2)
    return out.reshape(*batch, q.shape[-2], v.shape[-1])


@torch.no_grad()
def reference_attention_grads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dout: torch.Tensor,
                              scale: float | None = None, chunk: int = 512
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dq, dk, dv) of sum(out * dout) for out = softmax(scale q k^T) v, by the closed form
    dS = P (.) (dP - rowsum(dout (.) out)), dP = dout v^T, chunked over queries."""
    s = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    batch, q2, k2, v2 = _flat(q, k, v)
    n, Lq, _ = q2.shape
    d2 = dout.expand(*batch, Lq, v.shape[-1]).reshape(n, Lq, v.shape[-1])
    dq = torch.empty_like(q2)
    dk = torch.zeros_like(k2)
    dv = torch.zeros_like(v2)
    for a in range(0, Lq, chunk):
        qa, da = q2[:, a:a + chunk], d2[:, a:a + chunk]
        P = torch.softmax(s * torch.bmm(qa, k2.transpose(1, 2)), dim=-1)
        out = torch.bmm(P, v2)
        dv += torch.bmm(P.transpose(1, 2), da)
        dP = torch.bmm(da, v2.transpose(1, 2))
        dS = P * (dP - (da * out).sum(-1, keepdim=True)) * s
        dq[:, a:a + chunk] = torch.bmm(dS, k2)
        dk += torch.bmm(dS.transpose(1, 2), qa)
    shape = batch
    return (dq.reshape(*shape, *q.shape[-2:]), dk.reshape(*shape, *k.shape[-2:]),
            dv.reshape(*shape, *v.shape[-2:]))
