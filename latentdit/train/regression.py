"""Thm 3.1's objective: regress the latent network on the closed-form optimum f* (no DSM label noise).

For a ground truth with a closed-form latent score (:mod:`latentdit.data.gmm`), the optimum of
eq. (2.5) is f*(h, t) = sigma(t) grad log p_t^h(h) + h = beta(t) E[h0 | h_t = h]. With W_B = B,
sigma(t) (s_W - grad log p_t) = W_B (f - f*) on the subspace, so

    ||f(h_t, t) - f*(h_t, t)||^2 = sigma(t)^2 ||s_W(x_t, t) - grad log p_t(x_t)||^2,

the quantity Thm 3.1 bounds by (eps sqrt(d0))^2 at every t. :class:`OptimumRegression` is its
average over t ~ U[T0, T] and x_t ~ p_t, divided by d0; its minimum over a network class is that
class's approximation error, with no estimation error and no label noise. For an encoder W that is
not B, the target is the optimum in W's coordinates, W^T B f*(B^T x_t, t) (the best f when span W =
span B). Pass it as ``loss`` to :func:`latentdit.train.train` in place of the run's
:class:`latentdit.diffusion.DSMLoss`: it has the same calls (``times``, ``loss(net, x0, t, noise, y)``)
and reads the same latent denoiser ``net(x_t, t, y, latent=True)``, so a DDP wrapper works.
"""

from __future__ import annotations

import torch

from latentdit.diffusion import add_noise, sample_times, sigma


def optimal_f(law, h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """f*(h, t) = sigma(t) grad log p_t^h(h) + h (float64), for any law with ``latent_score``."""
    t = torch.as_tensor(t, dtype=torch.float64).expand(h.shape[0])
    return sigma(t)[:, None] * law.latent_score(h.double(), t) + h.double()


class OptimumRegression:
    """``loss(net, x0, t, noise, y)`` = E ||f(W^T x_t, t) - W^T B f*(B^T x_t, t)||^2 / d0, t ~ U[T0, T]
    (unweighted in t); ``law`` has ``B`` and ``latent_score`` (:mod:`latentdit.data.gmm`)."""

    def __init__(self, law, T0: float = 1e-3, T: float = 10.0):
        self.law, self.T0, self.T = law, T0, T

    def times(self, n: int, *, generator: torch.Generator | None = None,
              device: torch.device | str = "cpu") -> torch.Tensor:
        """t ~ U[T0, T], (n,)."""
        return sample_times(n, self.T0, self.T, generator=generator, device=device)

    def __call__(self, net, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                 y: torch.Tensor | None = None) -> torch.Tensor:
        xt = add_noise(x0, t, noise)
        f, W = net(xt, t, y, latent=True)
        with torch.no_grad():
            B = self.law.B.to(xt.device)
            target = (optimal_f(self.law, xt.double() @ B, t.double()) @ B.T) @ W.detach().double()
        return (f - target.to(f.dtype)).pow(2).mean(dim=1).mean()
