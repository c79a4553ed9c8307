"""Random-feature baseline: Performer FAVOR+ (Choromanski et al. 2021), positive orthogonal features.

exp(<a, b>) = E_w[phi(a) phi(b)] with phi(x) = exp(<w, x> - |x|^2 / 2) / sqrt(M), w ~ N(0, I),
drawn as blocks of orthogonal rows with chi-distributed norms. Unbiased but with no error
guarantee: its error decays like M^{-1/2} and grows like exp(|a|^2 + |b|^2), so it is the
contrast to the certified polynomial method. Keys are centred here too (free for softmax).
"""

from __future__ import annotations

import math

import torch


def orthogonal_gaussian(M: int, m: int, *, generator: torch.Generator | None = None,
                        dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
    """(M, m) rows: blocks of m orthonormal directions scaled by norms of N(0, I_m) vectors."""
    blocks = []
    for _ in range(math.ceil(M / m)):
        g = torch.randn(m, m, generator=generator, dtype=torch.float64)
        qmat, _ = torch.linalg.qr(g)
        blocks.append(qmat.T)
    w = torch.cat(blocks)[:M]
    norms = torch.linalg.vector_norm(torch.randn(M, m, generator=generator, dtype=torch.float64), dim=-1)
    return (w * norms[:, None]).to(dtype=dtype, device=device)


def _features(x: torch.Tensor, w: torch.Tensor, per_row: bool) -> torch.Tensor:
    proj = x @ w.T - 0.5 * (x * x).sum(-1, keepdim=True)
    # subtract a max for stability: per row for queries (cancels in the ratio), global for keys
    stab = proj.amax(-1, keepdim=True) if per_row else proj.amax(dim=(-2, -1), keepdim=True)
    return torch.exp(proj - stab.detach())


def performer_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None,
                        num_features: int = 256, seed: int = 0, center: bool = True,
                        features: torch.Tensor | None = None) -> torch.Tensor:
    """FAVOR+ estimate of softmax(scale q k^T) v; q (..., Lq, m), k (..., Lk, m), v (..., Lk, mv)."""
    m = q.shape[-1]
    s = 1.0 / math.sqrt(m) if scale is None else float(scale)
    if features is None:
        gen = torch.Generator().manual_seed(seed)
        features = orthogonal_gaussian(num_features, m, generator=gen, dtype=q.dtype, device=q.device)
    if center:
        k = k - k.mean(dim=-2, keepdim=True)
    root = math.sqrt(abs(s))
    phi_q = _features(q * (math.copysign(root, s)), features, per_row=True)  # (..., Lq, M)
    phi_k = _features(k * root, features, per_row=False)                     # (..., Lk, M)
    ones = torch.ones(*v.shape[:-1], 1, dtype=v.dtype, device=v.device)
    kv = phi_k.transpose(-2, -1) @ torch.cat([v, ones], -1)                  # (..., M, mv + 1)
    y = phi_q @ kv
    return y[..., :-1] / y[..., -1:]
