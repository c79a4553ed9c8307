"""The latent DiT score network of eq. (2.5):

    s_W(x, t) = ( W_B f(W_B^T x, t) - x ) / sigma(t),     f = R^{-1} o f_T o R.

The exact optimum is f*(h, t) = sigma(t) grad log p_t^h(h) + h = beta(t) E[h0 | h_t = h], so f is a
latent "x0-predictor", and the network's primary output is the denoiser
x0_hat(x, t) = W_B f(W_B^T x, t) / beta(t) (:meth:`LatentScoreNet.denoise`); the score is derived
from it by eq. (2.5) (:func:`latentdit.diffusion.score_from_denoised`). With ``precondition=True`` (default) f is written EDM-style around the
linear-Gaussian optimum for a latent of per-coordinate second moment v:

    f(h, t) = c_skip(t) h + c_out(t) R^{-1} f_T( R(c_in(t) h), t ),
    c_skip = beta^2 v / (beta^2 v + sigma),  c_out = beta sqrt(v sigma / (beta^2 v + sigma)),
    c_in = 1 / sqrt(beta^2 v + sigma),

which is still a function of (h, t) in the paper's class; ``precondition=False`` gives f = R^{-1} f_T R.
With ``precondition_stats="scalar"`` v is one number (the mean second moment of the latent
coordinates). With ``"diagonal"`` every coordinate i has its own mean m_i and variance v_i, and f is
written around the optimum for h0 ~ N(m, diag(v)), beta E[h0 | h_t = h] = c_skip (h - beta m) + beta m:

    f(h, t) = c_skip (h - beta m) + beta m + c_out R^{-1} f_T( R(c_in (h - beta m)), t ),

with c_skip, c_out, c_in taken coordinate by coordinate, and the ``edm`` loss weights each latent
coordinate's residual by its own 1 / c_out_i^2 (see :meth:`LatentScoreNet.loss`).
"""

from __future__ import annotations

from dataclasses import asdict

import torch
from torch import nn

from latentdit.config import ModelConfig
from latentdit.diffusion import add_noise, beta, score_from_denoised, sigma, weight
from latentdit.encoder import LinearEncoder
from latentdit.models.blocks import DiTBackbone, PaperBackbone
from latentdit.models.reshape import Reshape


def preconditioning(t: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_skip, c_out, c_in) of the module docstring for times t and latent variance v (broadcast:
    t (N,) with a scalar v gives (N,); t (N, 1) with v (d0,) gives (N, d0))."""
    b2, s = beta(t) ** 2, sigma(t)
    denom = b2 * v + s
    return b2 * v / denom, (b2 * v * s / denom).sqrt(), denom.rsqrt()


class LatentScoreNet(nn.Module):
    """s_W(x, t) of eq. (2.5): an encoder W_B, the reshape R and a transformer f_T."""

    def __init__(self, cfg: ModelConfig, ambient_dim: int, latent_dim: int, *,
                 encoder_init: torch.Tensor | None = None, learn_encoder: bool = False,
                 latent_second_moment: float = 1.0, latent_mean: torch.Tensor | None = None,
                 latent_var: torch.Tensor | None = None, generator: torch.Generator | None = None):
        """``latent_second_moment`` sets the scalar preconditioning; ``latent_mean`` and ``latent_var``
        (each (d0,)) the diagonal one (``cfg.precondition_stats``; zeros and ones when omitted)."""
        super().__init__()
        self.cfg = cfg
        self.ambient_dim, self.latent_dim = ambient_dim, latent_dim
        self.encoder = LinearEncoder(ambient_dim, latent_dim, learn=learn_encoder, init=encoder_init,
                                     generator=generator)
        self.reshape = Reshape(latent_dim, cfg.patch, cfg.patching)
        L, d = self.reshape.num_tokens, self.reshape.token_dim
        if cfg.block == "dit":
            self.backbone = DiTBackbone(L, d, cfg.hidden, cfg.depth, cfg.heads, cfg.mlp_ratio,
                                        num_classes=cfg.num_classes, activation=cfg.activation,
                                        attention_mode=cfg.attention, attention_eps=cfg.attention_eps,
                                        qk_norm=cfg.qk_norm, tau_max=cfg.tau_max,
                                        qk_dim=cfg.qk_dim)
        else:
            self.backbone = PaperBackbone(L, d, cfg.depth, cfg.paper_heads, cfg.paper_head_dim, cfg.paper_ff,
                                          num_classes=cfg.num_classes, entry_bound=cfg.paper_entry_bound,
                                          attention_mode=cfg.attention, attention_eps=cfg.attention_eps)
        if cfg.precondition_stats == "diagonal":
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
    def num_classes(self) -> int:
        return self.cfg.num_classes

    @property
    def W_B(self) -> torch.Tensor:
        return self.encoder.W_B

    def f(self, h: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The latent network f(h, t) = R^{-1} f_T(R h) (with preconditioning if enabled): (N, d0)."""
        t = _as_times(t, h)
        if not self.cfg.precondition:
            return self.reshape.inverse(self.backbone(self.reshape(h), t, y))
        c_skip, c_out, c_in = preconditioning(t[:, None], self.latent_var)
        if self.latent_mean is not None:
            m = beta(t)[:, None] * self.latent_mean
            hc = h - m
            F = self.reshape.inverse(self.backbone(self.reshape(c_in * hc), t, y))
            return torch.addcmul(torch.addcmul(m, c_skip, hc), c_out, F)
        F = self.reshape.inverse(self.backbone(self.reshape(c_in * h), t, y))
        return torch.addcmul(c_skip * h, c_out, F)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The network's output: the posterior-mean estimate x0_hat = W_B f(W_B^T x, t) / beta(t), (N, D)."""
        t = _as_times(t, x)
        W = self.W_B
        return self.encoder.decode(self.f(self.encoder.encode(x, W), t, y), W) / beta(t)[:, None]

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The score s_W(x, t) of eq. (2.5), (N, D), derived from :meth:`denoise`."""
        t = _as_times(t, x)
        return score_from_denoised(x, self.denoise(x, t, y), t)

    score = forward

    def loss(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, y: torch.Tensor | None = None,
             weighting: str = "edm") -> torch.Tensor:
        """gamma(t) || s_W(x_t, t) - (beta x0 - x_t)/sigma ||^2 / D, averaged over the batch (eq. 2.3).

        Computed in the equivalent latent form gamma/sigma^2 ||W_B f(W_B^T x_t, t) - beta x0||^2, which
        avoids the division by sigma(t) and the cancellation of x_t.
        """
        xt = add_noise(x0, t, noise)
        W = self.W_B
        f = self.f(self.encoder.encode(xt, W), t, y)
        if weighting == "edm" and self.cfg.precondition_stats == "diagonal":
            # ||W_B f - beta x0||^2 = ||f - beta W_B^T x0||^2 + beta^2 ||x0_perp||^2 (W_B orthonormal);
            # each latent coordinate weighted by its own 1/c_out_i^2, the part off the subspace by
            # the mean of those weights
            b = beta(t)[:, None]
            h0 = self.encoder.encode(x0, W)
            inv_c2 = preconditioning(t[:, None], self.latent_var)[1].pow(-2)
            latent = (inv_c2 * (f - b * h0).pow(2)).sum(dim=1)
            off = inv_c2.mean(dim=1) * (b * (x0 - self.encoder.decode(h0, W))).pow(2).sum(dim=1)
            return ((latent + off) / self.ambient_dim).mean()
        res = self.encoder.decode(f, W) - beta(t)[:, None] * x0
        c_out2 = preconditioning(t, self.latent_var)[1] ** 2 if weighting == "edm" else None
        w = weight(t, weighting, c_out2) / sigma(t) ** 2
        return (w * res.pow(2).mean(dim=1)).mean()

    def config_dict(self) -> dict:
        return {"model": asdict(self.cfg), "ambient_dim": self.ambient_dim, "latent_dim": self.latent_dim,
                "learn_encoder": self.encoder.learn}


def _as_times(t: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    return t.expand(like.shape[0]) if t.ndim == 0 else t
