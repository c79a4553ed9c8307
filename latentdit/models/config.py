"""The score network's own arguments.

:class:`ModelConfig` is the architecture (the run configuration's ``[model]`` section maps onto it);
:class:`ScoreNetConfig` adds what the network needs beyond it: the data and latent dimensions, the
encoder's kind. ``LatentScoreNet(**asdict(ScoreNetConfig(...)))`` builds the network, and an
export's ``config.json`` records exactly these arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields


@dataclass
class ModelConfig:
    """Score network s_W(x, t) = (W_B f(W_B^T x, t) - x) / sigma(t), eq. (2.5)."""

    block: str = "dit"  # dit (practical DiT block) | paper (the T^{r,m,l} class, Sec. 3)
    patch: int = 2  # p: patch side (2d) or token size (1d)
    patching: str = "auto"  # 2d | 1d | auto (2d when d0 is a square divisible by p, else 1d)
    # video (data.source = moving_mnist): frames per spatio-temporal patch; the clips' first stage cuts
    # its latent into c x patch_t x p x p tokens, which the network reads with 1-D patching
    patch_t: int = 1
    hidden: int = 128  # DiT block width
    depth: int = 4  # number of blocks K
    heads: int = 4  # DiT block heads
    mlp_ratio: float = 4.0
    # DiT MLP activation: gelu (exact, erf) | gelu_tanh (the tanh approximation of the original DiT,
    # about 3x slower on CPU, which costs ~5% of a training step at hidden 256 and ~10% at 64)
    activation: str = "gelu"
    # paper block T^{r,m,l}: r heads of size m, feed-forward width l
    paper_heads: int = 2
    paper_head_dim: int = 1
    paper_ff: int = 4
    paper_entry_bound: float | None = None  # Def. 3.2: bound |entries| of W_K X, W_Q X (tanh clip)
    # exact | poly | auto | relu_linear (ReLU linear attention, no certificate) | none (no attention:
    # tokens processed independently, the attention-free baseline)
    attention: str = "exact"
    # DiT block: per-head query/key size m, apart from the value size hidden / heads (0 = the same).
    # A small m with QK-norm keeps the polynomial method's rank C(m + g, g) small (Sec. 4).
    qk_dim: int = 0
    attention_eps: float = 1e-3  # target relative error of the polynomial method
    qk_norm: bool = False  # DiT block: normalise q, k and use a capped learnable temperature
    tau_max: float = 1.7  # |logit| <= tau^2 <= tau_max^2 when qk_norm is on
    precondition: bool = True  # f = c_skip h + c_out F(c_in h, t) (EDM-style; see models/score.py)
    # statistics of the latent the preconditioning is built around: scalar (one second moment for all
    # coordinates) | diagonal (each coordinate's own mean and variance; for latents whose coordinates
    # differ in scale, such as PCA coordinates of images)
    precondition_stats: str = "scalar"
    # positional encoding of the DiT block: learned (a table trained from N(0, 0.02^2)) | sincos (fixed
    # sin-cos features of each axis of the token grid, as in DiT's 2-D table: (rows, cols) of image
    # patches, (frames, rows, cols) of video patches, the index of 1-D tokens)
    pos_embed: str = "learned"
    num_classes: int = 0  # > 0 enables class conditioning (a null class is added for guidance)
    class_dropout: float = 0.1  # probability of dropping the label during training


@dataclass
class ScoreNetConfig(ModelConfig):
    """Every argument of :class:`latentdit.models.score.LatentScoreNet`: the architecture, D, d0 and
    the encoder W_B (learned or frozen; ``identity_encoder``: W_B = I, never stored)."""

    ambient_dim: int = 0  # D
    latent_dim: int = 0  # d0
    # axes of the token grid, slowest first, when the tokens are the patches of a first stage's latent
    # (rows, cols) or (frames, rows, cols); empty: the reshape's own grid (2-D patching) or the index
    token_grid: list[int] = field(default_factory=list)
    learn_encoder: bool = False
    identity_encoder: bool = False

    @classmethod
    def from_dict(cls, d: dict) -> "ScoreNetConfig":
        """The configuration of a record; unknown keys are a ``TypeError`` naming them."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise TypeError(f"unknown score network arguments {unknown}")
        if "token_grid" in d:
            d = {**d, "token_grid": [int(v) for v in d["token_grid"]]}
        return cls(**d)
