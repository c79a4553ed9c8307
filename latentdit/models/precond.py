"""EDM-style preconditioning of the latent network f around the linear-Gaussian optimum.

For a latent of per-coordinate mean m and second moment (or variance) v, the optimum of
eq. (2.5)'s f for h0 ~ N(m, diag(v)) is beta E[h0 | h_t = h] = c_skip (h - beta m) + beta m with

    c_skip = beta^2 v / (beta^2 v + sigma),  c_out = beta sqrt(v sigma / (beta^2 v + sigma)),
    c_in = 1 / sqrt(beta^2 v + sigma),

so the network is written f = c_skip (h - beta m) + beta m + c_out F(c_in (h - beta m), c_noise(t)).
c_out is also the scale of the optimum's residual, which the ``edm`` loss weighting divides out.
The time the backbone sees is c_noise(t) = 100 (log t + 8): log t spans about [-7, 2.3] for t in
[1e-3, 10], scaled to the usual [0, 1000]-ish range of sinusoidal embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from latentdit.schedule import beta, sigma


def preconditioning(t: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_skip, c_out, c_in) of the module docstring for times t and latent variance v (broadcast:
    t (N,) with a scalar v gives (N,); t (N, 1) with v (d0,) gives (N, d0))."""
    b2, s = beta(t) ** 2, sigma(t)
    denom = b2 * v + s
    return b2 * v / denom, (b2 * v * s / denom).sqrt(), denom.rsqrt()


def c_noise(t: torch.Tensor) -> torch.Tensor:
    """The backbone's time input c_noise(t) = 100 (log t + 8) (module docstring)."""
    return 100.0 * (torch.log(t) + 8.0)


@dataclass(frozen=True)
class Preconditioner:
    """c_skip, c_out, c_in and c_noise of a latent with variance ``var`` (a scalar, or (d0,) with a
    per-coordinate ``mean``); ``enabled=False`` is f = F (c_skip = 0, c_out = c_in = 1, no shift)."""

    var: torch.Tensor
    mean: torch.Tensor | None = None
    enabled: bool = True

    @property
    def diagonal(self) -> bool:
        return self.mean is not None

    def window(self, d: int) -> "Preconditioner":
        """The preconditioning of the first ``d`` latent coordinates (a window of a clip latent)."""
        if self.mean is None or d == self.mean.shape[0]:
            return self
        return Preconditioner(self.var[:d], self.mean[:d], self.enabled)

    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c_skip, c_out, c_in) at times t (N,): (N, 1) for a scalar latent, (N, d0) for a diagonal one."""
        return preconditioning(t[:, None], self.var)

    def c_skip(self, t: torch.Tensor) -> torch.Tensor:
        return self.coefficients(t)[0]

    def c_out(self, t: torch.Tensor) -> torch.Tensor:
        return self.coefficients(t)[1]

    def c_in(self, t: torch.Tensor) -> torch.Tensor:
        return self.coefficients(t)[2]

    def c_noise(self, t: torch.Tensor) -> torch.Tensor:
        return c_noise(t)

    def shift(self, t: torch.Tensor) -> torch.Tensor | None:
        """beta(t) m, (N, d0), the optimum's mean at time t (None for a scalar latent)."""
        return None if self.mean is None else beta(t)[:, None] * self.mean

    def apply(self, F, h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """f(h, t) = c_skip (h - beta m) + beta m + c_out F(c_in (h - beta m), c_noise(t)), (N, d0)."""
        tn = c_noise(t)
        if not self.enabled:
            return F(h, tn)
        c_skip, c_out, c_in = self.coefficients(t)
        m = self.shift(t)
        if m is not None:
            hc = h - m
            return torch.addcmul(torch.addcmul(m, c_skip, hc), c_out, F(c_in * hc, tn))
        return torch.addcmul(c_skip * h, c_out, F(c_in * h, tn))
