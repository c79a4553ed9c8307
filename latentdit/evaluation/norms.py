"""The norms that Def. 3.2 constrains, read off a trained latent score network.

Def. 3.2 bounds, per attention head i, W_OV^i = W_O^i W_V^i and W_KQ^i = (W_K^i)^T W_Q^i (d x d
in the paper's block), the feed-forward weights W_1, W_2 and the positional encoding E. This module
reports their spectral norms (the largest over layers and heads), the (2, inf) norm (largest column
norm) of each, and the feed-forward biases. For the practical DiT block the same products are
formed in its hidden width (per head, from the fused qkv and the output projection); adaLN and the
embeddings have no counterpart in Def. 3.2 and are not reported.
"""

from __future__ import annotations

import torch

from latentdit.models.blocks import DiTBackbone, PaperBackbone


def _spec(a: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(a.double(), ord=2))


def _col(a: torch.Tensor) -> float:
    """The (2, inf) norm: the largest Euclidean norm of a column."""
    return float(a.double().norm(dim=0).max())


def _heads_paper(attn) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(W_OV^i, W_KQ^i)] of a PaperAttention (row-form weights: nn.Linear stores (out, in))."""
    r, m = attn.r, attn.m
    out = []
    for i in range(r):
        s = slice(i * m, (i + 1) * m)
        out.append((attn.W_O.weight[:, s] @ attn.W_V.weight[s], attn.W_K.weight[s].T @ attn.W_Q.weight[s]))
    return out


def _heads_dit(blk) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(W_OV^i, W_KQ^i)] of a DiTBlock, with the 1/sqrt(qk size) scale folded into W_KQ."""
    w, H, m = blk.qkv.weight, blk.heads, blk.qk_dim
    hidden = blk.proj.weight.shape[0]
    v = hidden // H
    q, k, val = w[:H * m], w[H * m:2 * H * m], w[2 * H * m:]
    out = []
    for i in range(H):
        qs, vs = slice(i * m, (i + 1) * m), slice(i * v, (i + 1) * v)
        out.append((blk.proj.weight[:, vs] @ val[vs], k[qs].T @ q[qs] / m ** 0.5))
    return out


@torch.no_grad()
def def32_norms(model) -> dict:
    """Def. 3.2's norms of ``model.backbone`` (a :class:`PaperBackbone` or :class:`DiTBackbone`):
    ``norm_W_OV``, ``norm_W_KQ`` (spectral, max over layers and heads), ``norm_W_OV_2inf``,
    ``norm_W_KQ_2inf``, ``norm_W_1``, ``norm_W_2`` (spectral, max over layers), ``norm_b`` (largest
    bias norm), ``norm_E_2inf`` (positional encoding, largest token norm)."""
    bb = model.backbone
    if isinstance(bb, PaperBackbone):
        heads = [h for a in bb.attn for h in _heads_paper(a)]
        ffs = [(f.W_1.weight, f.W_2.weight, f.W_1.bias, f.W_2.bias) for f in bb.ff]
    elif isinstance(bb, DiTBackbone):
        heads = [h for b in bb.blocks for h in _heads_dit(b)]
        ffs = [(b.mlp[0].weight, b.mlp[2].weight, b.mlp[0].bias, b.mlp[2].bias) for b in bb.blocks]
    else:
        raise TypeError(f"def32_norms: unknown backbone {type(bb).__name__}")
    E = bb.E if isinstance(bb, PaperBackbone) else bb.pos
    return {"norm_W_OV": max(_spec(a) for a, _ in heads), "norm_W_KQ": max(_spec(b) for _, b in heads),
            "norm_W_OV_2inf": max(_col(a) for a, _ in heads), "norm_W_KQ_2inf": max(_col(b) for _, b in heads),
            "norm_W_1": max(_spec(f[0]) for f in ffs), "norm_W_2": max(_spec(f[1]) for f in ffs),
            "norm_b": max(max(float(f[2].norm()), float(f[3].norm())) for f in ffs),
            "norm_E_2inf": float(E.detach().double()[0].norm(dim=-1).max())}
