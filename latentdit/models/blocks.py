"""Transformer backbones f_T acting on the token matrix X (N, L, d).

Two blocks behind ``ModelConfig.block``:

- ``paper``: the class T^{r,m,l} of Sec. 3 exactly: residual multi-head attention with r heads of
  size m and *no* 1/sqrt(m) temperature and no LayerNorm, a residual ReLU feed-forward of width l, a
  positional encoding E added once, and (our choice, the paper leaves t open) an additive time
  embedding before every block.
- ``dit``: the practical DiT block: tokens embedded to a hidden width, LayerNorm with adaLN-Zero
  scale/shift/gate from the time (and label) embedding, fused qkv, scaled_dot_product_attention
  with the 1/sqrt(head_dim) scale, optional QK-normalisation with a capped learnable temperature so
  that |logit| <= tau^2 <= tau_max^2 by construction (the bounded-entry regime of Sec. 4).
  ``qk_dim`` sets the query/key size per head apart from the value size hidden / heads (the
  paper's W_Q, W_K in R^{m x d} with a small m), which keeps the polynomial method's rank
  C(m + g, g) small.

:func:`attention_summary` reports, for a built backbone, which kernel each block's attention runs
with and the certificate the criterion gives it at the model's sequence length.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from latentdit.attention import attention, attention_stats, certify


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of the time input c_noise(t) (:mod:`latentdit.models.precond`) followed by a
    2-layer MLP: (N,) -> (N, width)."""

    def __init__(self, width: int, freq_dim: int = 128, max_period: float = 1e4):
        super().__init__()
        self.freq_dim, self.max_period = freq_dim, max_period
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        c = c_noise.to(self.mlp[0].weight.dtype)
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(self.max_period) * torch.arange(half, device=c.device, dtype=c.dtype) / half)
        args = c[:, None] * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


class LabelEmbedder(nn.Module):
    """Class labels -> (N, width); index ``num_classes`` is the null class used for guidance."""

    def __init__(self, num_classes: int, width: int):
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, width)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.table(y)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (1 + scale) + shift with per-sample (N, hidden) scale/shift broadcast over tokens: one fused op."""
    return torch.addcmul(shift[:, None], x, 1 + scale[:, None])


def gated_residual(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x + gate y with a per-sample (N, hidden) gate broadcast over tokens: one fused op."""
    return torch.addcmul(x, gate[:, None], y)


class DiTBlock(nn.Module):
    """LayerNorm + adaLN-Zero conditioned attention and MLP on (N, L, hidden)."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float, *, activation: str = "gelu",
                 attention_mode: str = "exact", attention_eps: float = 1e-3, qk_norm: bool = False,
                 tau_max: float = 1.7, qk_dim: int | None = None):
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.qk_dim = self.head_dim if not qk_dim else int(qk_dim)  # per-head query/key size m
        self.attention_mode, self.attention_eps = attention_mode, attention_eps
        self.qk_norm, self.tau_max = qk_norm, tau_max
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(hidden, 2 * heads * self.qk_dim + hidden)  # fused [q | k | v]
        self.proj = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        width = int(hidden * mlp_ratio)
        gelu = nn.GELU(approximate="tanh" if activation == "gelu_tanh" else "none")
        self.mlp = nn.Sequential(nn.Linear(hidden, width), gelu, nn.Linear(width, hidden))
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))
        if qk_norm:
            # tau = tau_max * sigmoid(raw) <= tau_max; start where tau^2 = 1/sqrt(head_dim)-like scale
            self.tau_raw = nn.Parameter(torch.zeros(heads))

    def temperature(self) -> torch.Tensor:
        """Per-head tau with |logit| <= tau^2 (only with qk_norm)."""
        return self.tau_max * torch.sigmoid(self.tau_raw)

    def logit_bound(self) -> float | None:
        """A bound on |logit| known before running (QK-norm), else None."""
        return float(self.temperature().max().detach()) ** 2 if self.qk_norm else None

    def qk_normalized(self, qk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """QK-norm: (N, L, 2 heads m) -> q, k = tau x / |x| per head, each (N, heads, L, m).

        They are formed in one transposed copy, (N, 2 heads, m, L), so that the norm and the scaling
        run along L rather than over rows of m = 2-4 entries, and the polynomial kernel, which
        reads its inputs as (m, L) rows, takes them without another copy."""
        n, L, _ = qk.shape
        h, m = self.heads, self.qk_dim
        t = qk.transpose(1, 2).reshape(n, 2 * h, m, L)
        tau = self.temperature().repeat(2)[None, :, None, None]
        t = t * (tau * t.square().sum(2, keepdim=True).clamp_min(1e-24).rsqrt())  # |x| >= 1e-12 as before
        q, k = t.split(h, dim=1)  # split, not two slices: its backward is one cat, not two zero-filled copies
        return q.transpose(-1, -2), k.transpose(-1, -2)

    def attn(self, x: torch.Tensor) -> torch.Tensor:
        n, L, w = x.shape
        h, m = self.heads, self.qk_dim
        qk, v = self.qkv(x).split([2 * h * m, w], dim=-1)  # fused [q | k | v]
        v = v.unflatten(-1, (h, self.head_dim)).transpose(1, 2)  # (N, heads, L, head_dim)
        scale = None
        bound = None
        if self.qk_norm:
            q, k = self.qk_normalized(qk)
            scale = 1.0
            if self.attention_mode in ("poly", "auto"):
                bound = self.logit_bound()
        else:
            q, k = (z.unflatten(-1, (h, m)).transpose(1, 2) for z in qk.chunk(2, dim=-1))
        o = attention(q, k, v, mode=self.attention_mode, scale=scale, eps=self.attention_eps,
                      logit_bound=bound, qk_sphere=self.qk_norm)
        return self.proj(o.transpose(1, 2).reshape(n, L, w))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN(c).chunk(6, dim=-1)
        if self.attention_mode != "none":  # "none": no attention, every token processed on its own
            x = gated_residual(x, gate1, self.attn(modulate(self.norm1(x), shift1, scale1)))
        return gated_residual(x, gate2, self.mlp(modulate(self.norm2(x), shift2, scale2)))


def sincos_table(grid: tuple[int, ...], width: int) -> torch.Tensor:
    """Fixed positional features (1, prod(grid), width) of the tokens of a row-major grid.

    The width is split between the axes (the first takes the remainder, one zero column if ``width``
    is odd); axis a with n_a positions and w_a columns contributes sin(i omega_k) and cos(i omega_k),
    omega_k = 10000^(-2k / w_a), k < w_a / 2, at its index i: DiT's 2-D table for (rows, cols), the
    same with a frame axis for video.
    """
    if not grid or any(n < 1 for n in grid) or width < 2 * len(grid):
        raise ValueError(f"sincos_table: grid {tuple(grid)} and width {width} need positive sizes and "
                         "2 columns per axis")
    base = (width // len(grid)) // 2 * 2
    widths = [width - base * (len(grid) - 1)] + [base] * (len(grid) - 1)
    widths[0] -= widths[0] % 2
    axes = []
    for n, w in zip(grid, widths):
        omega = 10000.0 ** (-torch.arange(w // 2, dtype=torch.float64) * 2 / w)
        phase = torch.arange(n, dtype=torch.float64)[:, None] * omega  # (n, w / 2)
        axes.append(torch.cat([phase.sin(), phase.cos()], dim=1))
    index = torch.cartesian_prod(*(torch.arange(n) for n in grid)).reshape(-1, len(grid))  # row-major
    table = torch.cat([a[index[:, i]] for i, a in enumerate(axes)], dim=1)
    table = torch.nn.functional.pad(table, (0, width - table.shape[1]))
    return table.float()[None]


class DiTBackbone(nn.Module):
    """Token embedding -> K DiT blocks -> adaLN final layer: (N, L, d) -> (N, L, d).

    ``pos_grid``: fixed sin-cos positions of that token grid (:func:`sincos_table`); None: a learned table.
    """

    def __init__(self, num_tokens: int, token_dim: int, hidden: int, depth: int, heads: int,
                 mlp_ratio: float, num_classes: int = 0, pos_grid: tuple[int, ...] | None = None,
                 **attn_kwargs):
        super().__init__()
        self.num_tokens = num_tokens
        self.embed = nn.Linear(token_dim, hidden)
        if pos_grid is None:
            self.pos = nn.Parameter(torch.zeros(1, num_tokens, hidden))
        else:
            if math.prod(pos_grid) != num_tokens:
                raise ValueError(f"DiTBackbone: the token grid {tuple(pos_grid)} does not hold {num_tokens} tokens")
            self.register_buffer("pos", sincos_table(tuple(pos_grid), hidden), persistent=False)
        self.t_embed = TimestepEmbedder(hidden)
        self.y_embed = LabelEmbedder(num_classes, hidden) if num_classes > 0 else None
        self.blocks = nn.ModuleList(DiTBlock(hidden, heads, mlp_ratio, **attn_kwargs) for _ in range(depth))
        self.final_norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.final_adaLN = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
        self.out = nn.Linear(hidden, token_dim)
        self.initialize()

    def initialize(self) -> None:
        """DiT's initialisation: Xavier linears, small positional table, zeroed adaLN and output."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias) if m.bias is not None else None
        if isinstance(self.pos, nn.Parameter):
            nn.init.normal_(self.pos, std=0.02)
        nn.init.normal_(self.t_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embed.mlp[2].weight, std=0.02)
        if self.y_embed is not None:
            nn.init.normal_(self.y_embed.table.weight, std=0.02)
        for blk in self.blocks:
            nn.init.zeros_(blk.adaLN[-1].weight)
            nn.init.zeros_(blk.adaLN[-1].bias)
        nn.init.zeros_(self.final_adaLN[-1].weight)
        nn.init.zeros_(self.final_adaLN[-1].bias)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, X: torch.Tensor, c_noise: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """F(X, c_noise(t), y): tokens (N, L, d) -> (N, L, d)."""
        L = X.shape[1]
        if L > self.num_tokens:
            raise ValueError(f"DiTBackbone: {L} tokens, more than the {self.num_tokens} it was built for")
        x = self.embed(X) + self.pos[:, :L]  # (N, L, hidden); fewer tokens: a prefix (a window of a clip)
        c = self.t_embed(c_noise)  # (N, hidden)
        if self.y_embed is not None and y is not None:
            c = c + self.y_embed(y)
        for blk in self.blocks:
            x = blk(x, c)
        shift, scale = self.final_adaLN(c).chunk(2, dim=-1)
        return self.out(modulate(self.final_norm(x), shift, scale))


class PaperAttention(nn.Module):
    """Attn(X) = X + sum_i W_O^i W_V^i X softmax((W_K^i X)^T (W_Q^i X)) (Sec. 3, column form).

    In row form with heads stacked: X + softmax(Q K^T) V W_O^T, scale 1 (no 1/sqrt(m)).
    ``entry_bound`` B_e (Def. 3.2) clips the entries of W_K X and W_Q X smoothly to (-B_e, B_e), so
    |logit| <= m B_e^2 holds by construction.
    """

    def __init__(self, d: int, r: int, m: int, *, entry_bound: float | None = None,
                 attention_mode: str = "exact", attention_eps: float = 1e-3):
        super().__init__()
        self.r, self.m, self.entry_bound = r, m, entry_bound
        self.attention_mode, self.attention_eps = attention_mode, attention_eps
        self.W_Q = nn.Linear(d, r * m, bias=False)
        self.W_K = nn.Linear(d, r * m, bias=False)
        self.W_V = nn.Linear(d, r * m, bias=False)
        self.W_O = nn.Linear(r * m, d, bias=False)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        n, L, _ = X.shape

        def heads(z: torch.Tensor) -> torch.Tensor:
            return z.reshape(n, L, self.r, self.m).transpose(1, 2)  # (N, r, L, m)

        q, k, v = heads(self.W_Q(X)), heads(self.W_K(X)), heads(self.W_V(X))
        bound = None
        if self.entry_bound is not None:
            b = self.entry_bound
            q, k = b * torch.tanh(q / b), b * torch.tanh(k / b)
            bound = self.m * b * b
        o = attention(q, k, v, mode=self.attention_mode, scale=1.0, eps=self.attention_eps,
                      logit_bound=bound)
        return X + self.W_O(o.transpose(1, 2).reshape(n, L, self.r * self.m))


class PaperFeedForward(nn.Module):
    """FF(Y) = Y + W_2 ReLU(W_1 Y + b_1 1^T) + b_2 1^T with W_1 in R^{l x d} (Sec. 3)."""

    def __init__(self, d: int, l: int):
        super().__init__()
        self.W_1, self.W_2 = nn.Linear(d, l), nn.Linear(l, d)

    def forward(self, Y: torch.Tensor) -> torch.Tensor:
        return Y + self.W_2(torch.relu(self.W_1(Y)))


class PaperBackbone(nn.Module):
    """f_T(X) = FF_K o Attn_K o ... o FF_1 o Attn_1 (X + E), with an additive time embedding per block."""

    def __init__(self, num_tokens: int, token_dim: int, depth: int, r: int, m: int, l: int,
                 num_classes: int = 0, entry_bound: float | None = None, **attn_kwargs):
        super().__init__()
        self.num_tokens, self.token_dim = num_tokens, token_dim
        self.E = nn.Parameter(0.02 * torch.randn(1, num_tokens, token_dim))
        width = 64
        self.t_embed = TimestepEmbedder(width)
        self.y_embed = LabelEmbedder(num_classes, width) if num_classes > 0 else None
        self.t_proj = nn.ModuleList(nn.Linear(width, num_tokens * token_dim) for _ in range(depth))
        self.attn = nn.ModuleList(PaperAttention(token_dim, r, m, entry_bound=entry_bound, **attn_kwargs)
                                  for _ in range(depth))
        self.ff = nn.ModuleList(PaperFeedForward(token_dim, l) for _ in range(depth))
        for p in self.t_proj:
            nn.init.zeros_(p.weight)
            nn.init.zeros_(p.bias)

    def forward(self, X: torch.Tensor, c_noise: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        c = self.t_embed(c_noise)
        if self.y_embed is not None and y is not None:
            c = c + self.y_embed(y)
        X = X + self.E
        for proj, attn, ff in zip(self.t_proj, self.attn, self.ff):
            X = X + proj(c).reshape(-1, self.num_tokens, self.token_dim)
            X = ff(attn(X))
        return X


# ------------------------------------------------------------------------------ what runs where


def _block_attention(blk: nn.Module) -> dict:
    """Sizes, mode and the logit bound known by construction of one attention layer."""
    if isinstance(blk, DiTBlock):
        bound = blk.logit_bound()
        return {"block": "dit", "mode": blk.attention_mode, "eps": blk.attention_eps, "heads": blk.heads,
                "qk_dim": blk.qk_dim, "v_dim": blk.head_dim, "qk_norm": blk.qk_norm,
                "scale": 1.0 if blk.qk_norm else blk.qk_dim ** -0.5, "logit_bound": bound,
                "logit_bound_cap": blk.tau_max ** 2 if blk.qk_norm else None}
    bound = blk.m * blk.entry_bound ** 2 if blk.entry_bound is not None else None
    return {"block": "paper", "mode": blk.attention_mode, "eps": blk.attention_eps, "heads": blk.r,
            "qk_dim": blk.m, "v_dim": blk.m, "entry_bound": blk.entry_bound, "scale": 1.0,
            "logit_bound": bound}


def attention_summary(backbone: nn.Module, *, batch: int = 1) -> dict:
    """A JSON-able record of the attention inside ``backbone`` (a DiT or paper backbone).

    ``layers``: per attention layer its mode, sizes, the bound on |logit| that holds by construction
    (QK-norm: the current tau^2, never above ``logit_bound_cap`` = tau_max^2; paper block: m B_e^2;
    None when it depends on the data) and the
    criterion's certificate at the backbone's sequence length for ``batch`` samples; ``planned``:
    the kernel each layer runs ("poly", "exact" or "relu_linear"; "auto" resolved by the
    certificate, "data-dependent" when no bound is known, "raises" for "poly" without a
    certificate); ``fallback_reasons``: why those layers do not plan poly; ``runtime``: the process-wide counts of :func:`latentdit.attention.attention_stats`.
    """
    L = backbone.num_tokens
    layers, planned, reasons = [], {}, {}
    for blk in backbone.modules():
        if not isinstance(blk, (DiTBlock, PaperAttention)):
            continue
        rec = _block_attention(blk)
        rec["certificate"] = None
        kernel = rec["mode"]
        if rec["mode"] in ("poly", "auto"):
            if rec["logit_bound"] is None:
                kernel = "data-dependent"
            else:
                q = torch.empty(batch, rec["heads"], L, rec["qk_dim"], device="meta")
                cert = certify(q, q, rec["scale"], rec["eps"], logit_bound=rec["logit_bound"],
                               v_dim=rec["v_dim"], sphere=bool(rec.get("qk_norm")))
                rec["certificate"] = cert.as_dict()
                ok = cert.ok if rec["mode"] == "auto" else cert.certified
                kernel = "poly" if ok else ("exact" if rec["mode"] == "auto" else "raises")
                if not ok:
                    reasons[cert.code] = cert.reason
        rec["planned"] = kernel
        planned[kernel] = planned.get(kernel, 0) + 1
        layers.append(rec)
    return {"num_tokens": L, "layers": layers, "planned": planned, "fallback_reasons": reasons,
            "runtime": attention_stats().as_dict()}
