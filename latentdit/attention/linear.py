"""ReLU linear attention (the efficient-DiT baseline): no softmax, no certificate.

    out_i = sum_j (phi(q_i) . phi(k_j)) v_j / (sum_j phi(q_i) . phi(k_j) + delta),   phi = ReLU,

computed as phi(Q) (phi(K)^T V) / (phi(Q) phi(K)^T 1 + delta): time and memory linear in L. The
temperature of softmax attention has no meaning here (the kernel is homogeneous in q and in k),
so no scale is taken. It is a different operator from softmax attention, not an approximation of
it; a model trained with it is compared on quality, never on error against exact attention.
"""

from __future__ import annotations

import torch

__all__ = ["relu_linear_attention", "relu_linear_reference"]


def relu_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                          delta: float = 1e-6) -> torch.Tensor:
    """q (..., Lq, m), k (..., Lk, m), v (..., Lk, mv) -> (..., Lq, mv), linear in L.

    ``delta`` > 0 keeps the normaliser positive when a query meets only zero features.
    """
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must have the same head size, got {q.shape[-1]} and {k.shape[-1]}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k and v must have the same length, got {k.shape[-2]} and {v.shape[-2]}")
    if not delta > 0:
        raise ValueError(f"delta must be positive, got {delta}")
    fq, fk = torch.relu(q), torch.relu(k)
    kv = fk.transpose(-1, -2) @ v                       # (..., m, mv)
    z = fk.sum(dim=-2, keepdim=True).transpose(-1, -2)  # (..., m, 1)
    return (fq @ kv) / (fq @ z + delta)


def relu_linear_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                          delta: float = 1e-6) -> torch.Tensor:
    """The same operator through the explicit (Lq x Lk) kernel matrix: O(L^2), for tests."""
    a = torch.relu(q) @ torch.relu(k).transpose(-1, -2)  # (..., Lq, Lk)
    return (a @ v) / (a.sum(dim=-1, keepdim=True) + delta)
