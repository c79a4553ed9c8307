"""The latent DiT score network of eq. (2.5):

    s_W(x, t) = ( W_B f(W_B^T x, t) - x ) / sigma(t),     f = R^{-1} o f_T o R.

The exact optimum is f*(h, t) = sigma(t) grad log p_t^h(h) + h = beta(t) E[h0 | h_t = h], so f is a
latent "x0-predictor", and the network's primary output is the denoiser
x0_hat(x, t) = W_B f(W_B^T x, t) / beta(t) (:meth:`LatentScoreNet.denoise`); the score is derived
from it by eq. (2.5) (:func:`latentdit.schedule.score_from_denoised`). With ``precondition=True``
(default) f is written EDM-style around the linear-Gaussian optimum of the latent
(:mod:`latentdit.models.precond`), still a function of (h, t) in the paper's class;
``precondition=False`` gives f = R^{-1} f_T R. With ``precondition_stats="scalar"`` the latent's
statistics are one second moment; with ``"diagonal"`` each coordinate has its own mean and variance.

The network owns its configuration (:class:`latentdit.models.config.ScoreNetConfig`):
``LatentScoreNet(**asdict(net.config))`` builds the same network, and that is what an export records.
"""

from __future__ import annotations

from dataclasses import asdict

import torch
from torch import nn

from latentdit.firststage.linear import LinearEncoder
from latentdit.models.blocks import DiTBackbone, PaperBackbone
from latentdit.models.config import ScoreNetConfig
from latentdit.models.precond import Preconditioner, preconditioning  # noqa: F401 (re-exported)
from latentdit.models.reshape import Reshape
from latentdit.schedule import beta, score_from_denoised


def _backbone(c: ScoreNetConfig, reshape: Reshape) -> nn.Module:
    L, d = reshape.num_tokens, reshape.token_dim
    if c.block == "dit":
        grid = tuple(c.token_grid or reshape.grid_shape) if c.pos_embed == "sincos" else None
        return DiTBackbone(L, d, c.hidden, c.depth, c.heads, c.mlp_ratio, num_classes=c.num_classes, pos_grid=grid,
                           activation=c.activation, attention_mode=c.attention, attention_eps=c.attention_eps,
                           qk_norm=c.qk_norm, tau_max=c.tau_max, qk_dim=c.qk_dim)
    return PaperBackbone(L, d, c.depth, c.paper_heads, c.paper_head_dim, c.paper_ff, num_classes=c.num_classes,
                         entry_bound=c.paper_entry_bound, attention_mode=c.attention, attention_eps=c.attention_eps)


class LatentScoreNet(nn.Module):
    """s_W(x, t) of eq. (2.5): an encoder W_B, the reshape R and a transformer f_T.

    Keyword arguments are those of :class:`ScoreNetConfig` (``ambient_dim``, ``latent_dim``, the
    architecture, ``learn_encoder``, ``identity_encoder``). The rest initialise the weights and are
    not part of the configuration: ``encoder_init`` (a D x d0 W_B; random when omitted),
    ``latent_second_moment`` (the scalar preconditioning's statistic), ``latent_mean`` and
    ``latent_var`` (each (d0,), the diagonal one's; zeros and ones when omitted), ``generator``.
    """

    def __init__(self, ambient_dim: int, latent_dim: int, *, encoder_init: torch.Tensor | None = None,
                 latent_second_moment: float = 1.0, latent_mean: torch.Tensor | None = None,
                 latent_var: torch.Tensor | None = None, generator: torch.Generator | None = None, **config):
        super().__init__()
        self.config = c = ScoreNetConfig.from_dict({**config, "ambient_dim": ambient_dim, "latent_dim": latent_dim})
        self.ambient_dim, self.latent_dim = ambient_dim, latent_dim
        init = "identity" if c.identity_encoder else encoder_init
        self.encoder = LinearEncoder(ambient_dim, latent_dim, learn=c.learn_encoder, init=init, generator=generator)
        self.reshape = Reshape(latent_dim, c.patch, c.patching)
        self.backbone = _backbone(c, self.reshape)
        if c.precondition_stats == "diagonal":
            mean = torch.zeros(latent_dim) if latent_mean is None else torch.as_tensor(latent_mean)
            var = torch.ones(latent_dim) if latent_var is None else torch.as_tensor(latent_var)
            if mean.shape != (latent_dim,) or var.shape != (latent_dim,):
                raise ValueError(f"latent_mean and latent_var must have shape ({latent_dim},), "
                                 f"got {tuple(mean.shape)} and {tuple(var.shape)}")
            self.register_buffer("latent_mean", mean.float().clone())
            self.register_buffer("latent_var", var.float().clamp_min(1e-8))
        else:
            self.latent_mean = None
            self.register_buffer("latent_var", torch.tensor(float(latent_second_moment)))

    @property
    def cfg(self) -> ScoreNetConfig:
        """The network's configuration (an alias of :attr:`config`)."""
        return self.config

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def W_B(self) -> torch.Tensor:
        return self.encoder.W_B

    @property
    def precond(self) -> Preconditioner:
        """The preconditioning of f on the current latent statistics."""
        return Preconditioner(self.latent_var, self.latent_mean, self.config.precondition)

    def F(self, h: torch.Tensor, c_noise: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The raw network R^{-1} f_T(R h, c_noise, y): (N, d0)."""
        return self.reshape.inverse(self.backbone(self.reshape(h), c_noise, y))

    def f(self, h: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The latent network f(h, t) (preconditioned unless ``precondition=False``): (N, d0)."""
        return self.precond.window(h.shape[1]).apply(lambda hh, tn: self.F(hh, tn, y), h, _as_times(t, h))

    def denoise(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The network's output: the posterior-mean estimate x0_hat = W_B f(W_B^T x, t) / beta(t), (N, D)."""
        t = _as_times(t, x)
        W = self.W_B
        return self.encoder.decode(self.f(self.encoder.encode(x, W), t, y), W) / beta(t)[:, None]

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, *,
                latent: bool = False):
        """The score s_W(x, t) of eq. (2.5), (N, D), derived from :meth:`denoise`.

        ``latent=True`` returns (f(W_B^T x, t), W_B) instead, the latent denoiser that the loss
        (:class:`latentdit.diffusion.DSMLoss`) reads, so that a wrapper such as DDP sees one forward.
        """
        t = _as_times(t, x)
        if latent:
            W = self.W_B
            return self.f(self.encoder.encode(x, W), t, y), W
        return score_from_denoised(x, self.denoise(x, t, y), t)

    def score(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward(x, t, y)

    def config_dict(self) -> dict:
        """The constructor's arguments: ``LatentScoreNet(**net.config_dict())`` builds the same network."""
        return asdict(self.config)


def _as_times(t: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    return t.expand(like.shape[0]) if t.ndim == 0 else t
