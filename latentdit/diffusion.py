"""The Ornstein-Uhlenbeck forward process and denoising score matching (Sec. 2 of the paper).

Forward SDE (w = 1): dx = -x/2 dt + dW, so given x0

    x_t = beta(t) x0 + sqrt(sigma(t)) z,   beta(t) = exp(-t/2),   sigma(t) = 1 - exp(-t).

Notation trap: ``sigma(t)`` is a *variance*, not a standard deviation.
"""

from __future__ import annotations

from typing import Protocol

import torch

from latentdit.schedule import (OU, Denoiser, OUSchedule, ScoreFn, beta, denoised_from_score, log_snr,  # noqa: F401
                                score_from_denoised, sigma, t_from_log_snr)

WEIGHTINGS = ("none", "sigma", "sigma2", "edm")


def add_noise(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t = beta(t) x0 + sqrt(sigma(t)) z  (the OU transition, Sec. 2). ``t`` has shape (N,)."""
    b = beta(t)[:, None]
    s = sigma(t)[:, None]
    return b * x0 + s.sqrt() * noise


def dsm_target(x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Conditional score grad log p_t(x_t | x0) = (beta(t) x0 - x_t) / sigma(t) (Sec. 2, eq. 2.3)."""
    return (beta(t)[:, None] * x0 - xt) / sigma(t)[:, None]


def draw_noise(n: int, dim: int, *, generator: torch.Generator | None = None, device=None,
               basis: torch.Tensor | None = None) -> torch.Tensor:
    """The DSM noise z of x_t = beta x0 + sigma z (eq. 2.1): (n, dim) ambient normals, or with a frozen
    orthonormal basis W_B (dim, d0) its latent part z = W_B u, u ~ N(0, I_d0).

    The latent-form loss of eq. (2.5) sees the noise only through W_B^T z, which is N(0, I_d0) both
    ways, so with W_B frozen the two give the same loss in law (and the same gradient for the same
    u). The latent draw costs d0 normals per point and its stream does not depend on D, so runs that
    differ only in D see the same latent draws. Not for a learned W_B, whose gradient sees all of z.
    """
    if basis is None:
        return torch.randn((n, dim), generator=generator, device=device)
    u = torch.randn((n, basis.shape[1]), generator=generator, device=device)
    return u @ basis.to(device=u.device, dtype=u.dtype).T


TIME_KINDS = ("uniform", "log")  # the training time distributions of sample_times


def sample_times(n: int, T0: float, T: float, *, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 kind: str = "uniform") -> torch.Tensor:
    """t ~ Uniform[T0, T] (the training time distribution of eq. 2.3), or ``kind="log"``: log t
    uniform on [log T0, log T], which gives every decade of t the same share of the batch (the
    first decade [T0, 10 T0], which dominates Thm 3.2's functional, is otherwise 9 T0 / T of the draws)."""
    u = torch.rand(n, generator=generator, device=device, dtype=dtype)
    if kind == "log":
        return T0 * (T / T0) ** u
    return T0 + (T - T0) * u


def weight(t: torch.Tensor, kind: str, c_out2: torch.Tensor | None = None) -> torch.Tensor:
    """Per-time weighting gamma(t) of the score-matching loss.

    - ``none``:   gamma = 1, the paper's loss (eq. 2.3); its variance explodes as t -> T0.
    - ``sigma``:  gamma = sigma(t), the usual likelihood-style weighting.
    - ``sigma2``: gamma = sigma(t)^2, i.e. plain x0-prediction: ||W_B f - beta x0||^2.
    - ``edm``:    gamma = sigma(t)^2 / c_out(t)^2, which gives the network's own output a unit-scale
                  regression target under the preconditioning of :mod:`latentdit.models.precond`.
    """
    s = sigma(t)
    if kind == "none":
        return torch.ones_like(s)
    if kind == "sigma":
        return s
    if kind == "sigma2":
        return s * s
    if kind == "edm":
        if c_out2 is None:
            raise ValueError("weighting 'edm' needs the preconditioning factor c_out(t)^2")
        return s * s / c_out2
    raise ValueError(f"unknown weighting {kind!r}; choose one of {WEIGHTINGS}")


def dsm_loss_from_score(score_fn: ScoreFn, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                        weighting: str = "sigma") -> torch.Tensor:
    """E gamma(t) || s(x_t, t) - (beta x0 - x_t)/sigma ||^2 / D for any score function (eq. 2.3).

    This is the definition; :class:`DSMLoss` computes the same value in latent form.
    ``edm`` weighting needs the model's preconditioning and is not available here.
    """
    xt = add_noise(x0, t, noise)
    err = (score_fn(xt, t) - dsm_target(x0, xt, t)).pow(2).mean(dim=1)
    return (weight(t, weighting) * err).mean()


class Objective(Protocol):
    """What the Trainer minimises and its validation set evaluates: :class:`DSMLoss`, or a
    replacement with the same calls (e.g. :class:`latentdit.train.regression.OptimumRegression`)."""

    def times(self, n: int, *, generator: torch.Generator | None = None,
              device: torch.device | str = "cpu") -> torch.Tensor: ...

    def __call__(self, net, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                 y: torch.Tensor | None = None) -> torch.Tensor: ...


class DSMLoss:
    """The denoising score-matching loss of eq. (2.3) for t ~ U[T0, T], weighted by gamma(t):

        gamma(t) || s_W(x_t, t) - (beta x0 - x_t)/sigma ||^2 / D,  averaged over the batch,

    computed in the equivalent latent form gamma/sigma^2 ||W_B f(W_B^T x_t, t) - beta x0||^2 / D,
    which avoids the division by sigma(t) and the cancellation of x_t. It reads only the network's
    latent denoiser (``net(x_t, t, y, latent=True)`` -> (f, W_B), one forward, so a DDP wrapper
    works) and its preconditioner (``edm``: gamma = sigma^2 / c_out^2). With diagonal latent
    statistics each latent coordinate's residual is weighted by its own 1 / c_out_i^2 and the part
    off the subspace by the mean of those weights, since
    ||W_B f - beta x0||^2 = ||f - beta W_B^T x0||^2 + beta^2 ||x0_perp||^2 (W_B orthonormal).
    """

    def __init__(self, weighting: str = "edm", T0: float = 1e-3, T: float = 10.0, times: str = "uniform"):
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}; choose one of {WEIGHTINGS}")
        if times not in TIME_KINDS:
            raise ValueError(f"unknown training times {times!r}; choose one of {TIME_KINDS}")
        self.weighting, self.T0, self.T, self.kind = weighting, T0, T, times

    def times(self, n: int, *, generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
        """The training times, (n,): t ~ U[T0, T] (eq. 2.3) or log t uniform (``times="log"``)."""
        return sample_times(n, self.T0, self.T, generator=generator, device=device, kind=self.kind)

    def __call__(self, net, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                 y: torch.Tensor | None = None) -> torch.Tensor:
        """The loss of ``net`` on clean points x0 (N, D) at times t (N,) with DSM noise z (N, D)."""
        core = getattr(net, "module", net)  # the network inside a DDP wrapper
        f, W = net(add_noise(x0, t, noise), t, y, latent=True)
        pre, enc = core.precond.window(f.shape[1]), core.encoder  # a window of a clip: its coordinates' statistics
        if self.weighting == "edm" and pre.diagonal:
            b = beta(t)[:, None]
            h0 = enc.encode(x0, W)
            inv_c2 = pre.c_out(t).pow(-2)
            latent = (inv_c2 * (f - b * h0).pow(2)).sum(dim=1)
            off = inv_c2.mean(dim=1) * (b * (x0 - enc.decode(h0, W))).pow(2).sum(dim=1)
            return ((latent + off) / x0.shape[1]).mean()
        res = enc.decode(f, W) - beta(t)[:, None] * x0
        c_out2 = pre.c_out(t)[:, 0] ** 2 if self.weighting == "edm" else None
        w = weight(t, self.weighting, c_out2) / sigma(t) ** 2
        return (w * res.pow(2).mean(dim=1)).mean()
