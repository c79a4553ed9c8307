"""A long-sequence ground truth: a mixture of K stationary Gaussian processes over the sequence.

The latent h in R^{d0} (d0 = L x token size; the model reads d consecutive coordinates as a token)
is a circular sequence of d0 coordinates. A component label k, shared by the whole sequence, is
drawn with probability pi_k; given k,

    h ~ N(m_k 1, C_k),    C_k = F^H diag(lam_k) F,

with F the unitary DFT of length d0: C_k is circulant (stationary: Cov(h_i, h_j) depends on
i - j mod d0 only) and diagonal in the Fourier basis. Each component has its own mean level m_k and
spectrum lam_k (a squared-exponential kernel of length scale ell_k coordinates plus a white
"nugget"). Under the OU process each component stays Gaussian and circulant,

    h_t | k ~ N(beta(t) m_k 1, F^H diag(beta(t)^2 lam_k + sigma(t)) F),

so log densities, the component posterior and the noised score are closed form by FFT at cost
O(K d0 log d0) per point (:meth:`StationaryMixture.latent_score`); sampling is by FFT too. Nothing
d0 x d0 is formed (:meth:`StationaryMixture.dense_covariance` exists for tests at small d0).

Why attention is needed: the posterior over k is a softmax over sums across *all* frequencies of
the whole sequence, and the Bayes denoiser given k is a component-specific Wiener filter. A token
on its own sees d coordinates and cannot tell the components apart; pooling statistics over every
token (the mean level, the power at high and low frequencies) identifies k almost surely at
thousands of tokens. Unlike :mod:`latentdit.data.long`, nothing depends on the position, so no
position-specific pattern has to be memorised.

The data live in R^D with D = d0 and B = I (``encoder.init = "identity"``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from latentdit.data.chunked import ChunkedMixture
from latentdit.schedule import beta, sigma


def frequency_multiplicity(dim: int) -> torch.Tensor:
    """How often each rfft frequency 0..dim//2 occurs in the full DFT of length ``dim``: 1 for the
    mean (and the Nyquist frequency when dim is even), 2 for the others (f and dim - f)."""
    mult = torch.full((dim // 2 + 1,), 2.0, dtype=torch.float64)
    mult[0] = 1.0
    if dim % 2 == 0:
        mult[-1] = 1.0
    return mult


def se_spectrum(dim: int, length_scale: float, variance: float, nugget: float) -> torch.Tensor:
    """Eigenvalues (rfft frequencies, (dim//2 + 1,)) of a circulant covariance whose diagonal is
    ``variance``: a fraction ``nugget`` of white noise plus a squared-exponential kernel of length
    scale ``length_scale`` coordinates, lam(w) proportional to exp(-(w ell)^2 / 2), w = 2 pi f / dim.

    The mean of the eigenvalues over the full DFT is the diagonal of the covariance, so the smooth
    part is normalised to mean ``variance (1 - nugget)``."""
    w = 2 * math.pi * torch.arange(dim // 2 + 1, dtype=torch.float64) / dim
    smooth = torch.exp(-0.5 * (w * length_scale) ** 2)
    mult = frequency_multiplicity(dim)
    smooth = smooth * dim / (mult * smooth).sum()
    return variance * (nugget + (1 - nugget) * smooth)


@dataclass
class StationaryMixture(ChunkedMixture):
    """The law of the module docstring. All tensors float64 on CPU; inputs are cast."""

    weights: torch.Tensor  # (K,)
    levels: torch.Tensor  # (K,): m_k, the mean of every coordinate
    spectra: torch.Tensor  # (K, d0 // 2 + 1): lam_k at the rfft frequencies, > 0
    dim: int  # d0

    @classmethod
    def make(cls, dim: int, components: int = 4, seed: int = 0, *, levels: tuple[float, float] = (-0.2, 0.8),
             length_scales: tuple[float, float] = (0.5, 2.0), nugget: float = 0.1) -> "StationaryMixture":
        """K components on a grid: mean level m_k = levels[k % 2] (alternating), length scales
        geometric between ``length_scales`` over ceil(K / 2) values (component k takes the
        (k // 2)-th), variance 1 - m_k^2, so every coordinate has second moment 1. Weights
        softmax(0.3 z) from ``seed`` (mildly unequal).

        The default levels differ in sign and size, so the mixture has a mean (about 0.3) that the
        preconditioning alone (F = 0) does not know: at t near T the exact score is almost that of
        N(beta E h0, I), and a symmetric law would make F = 0 exact there up to noise."""
        if dim < 2:
            raise ValueError(f"dim must be >= 2, got {dim}")
        if components < 1:
            raise ValueError(f"components must be >= 1, got {components}")
        if max(abs(m) for m in levels) >= 1 or not 0 <= nugget <= 1 or min(length_scales) <= 0:
            raise ValueError(f"need |levels| < 1, 0 <= nugget <= 1 and positive length scales, got "
                             f"levels={levels}, nugget={nugget}, length_scales={length_scales}")
        g = torch.Generator().manual_seed(seed)
        weights = torch.softmax(0.3 * torch.randn(components, generator=g, dtype=torch.float64), 0)
        n_scales = (components + 1) // 2
        lo, hi = length_scales
        ells = [lo * (hi / lo) ** (j / max(n_scales - 1, 1)) for j in range(n_scales)]
        m = torch.tensor([levels[k % 2] for k in range(components)], dtype=torch.float64)
        spectra = torch.stack([se_spectrum(dim, ells[k // 2], 1.0 - float(m[k]) ** 2, nugget)
                               for k in range(components)])
        return cls(weights, m, spectra, dim)

    @property
    def latent_dim(self) -> int:
        return self.dim

    ambient_dim = latent_dim  # B = I

    @property
    def components(self) -> int:
        return self.weights.shape[0]

    def second_moment(self) -> float:
        """Mean over coordinates of E[h_i^2] = sum_k pi_k (m_k^2 + mean of lam_k over the full DFT)."""
        mult = frequency_multiplicity(self.dim)
        var = (self.spectra * mult).sum(1) / self.dim
        return float((self.weights * (self.levels ** 2 + var)).sum())

    def dense_covariance(self, k: int) -> torch.Tensor:
        """C_k as a d0 x d0 matrix (tests, small d0): C[i, j] = c[(i - j) mod d0] with the
        autocovariance c = the inverse DFT of lam_k."""
        c = torch.fft.irfft(self.spectra[k], n=self.dim)  # (1/d0) sum_f lam_f e^{2 pi i f j / d0}
        idx = (torch.arange(self.dim)[:, None] - torch.arange(self.dim)[None, :]) % self.dim
        return c[idx]

    # ------------------------------------------------------------------ sampling

    def sample_latent(self, n: int, t: float = 0.0, *, generator: torch.Generator | None = None,
                      return_labels: bool = False):
        """n draws of h_t (t = 0: the data): h = m_k + F^H (sqrt(lam_k) F z), z ~ N(0, I)."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        zf = torch.fft.rfft(z, norm="ortho") * self.spectra[k].sqrt()
        h = self.levels[k, None] + torch.fft.irfft(zf, n=self.dim, norm="ortho")
        if t > 0:
            tt = torch.tensor(float(t), dtype=torch.float64)
            h = beta(tt) * h + sigma(tt).sqrt() * torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return (h, k) if return_labels else h

    sample = sample_latent  # D = d0, B = I

    # ------------------------------------------------------------------ law at time t

    def _terms(self, h: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log pi_k + log N_k(h_t), F (h - beta m_k 1) / (beta^2 lam_k + sigma)) for a chunk of
        rows: (n, K) and (n, K, frequencies), the latter complex (rfft coefficients)."""
        b, s = beta(t)[:, None, None], sigma(t)[:, None, None]
        lam = b * b * self.spectra[None] + s  # (n, K, F)
        r = torch.fft.rfft(h, norm="ortho")[:, None, :].expand(-1, self.components, -1).clone()
        r[:, :, 0] -= b[:, :, 0] * self.levels[None] * math.sqrt(self.dim)  # the mean lives at f = 0
        prec_r = r / lam
        mult = frequency_multiplicity(self.dim)
        quad = (mult * (r.real ** 2 + r.imag ** 2) / lam).sum(-1)
        logdet = (mult * torch.log(lam)).sum(-1)
        logn = -0.5 * (quad + logdet + self.dim * math.log(2 * math.pi))
        return logn + torch.log(self.weights)[None], prec_r

    def _chunk_width(self) -> int:
        return self.spectra.shape[1]

    def latent_score(self, h: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """grad log p_t(h) = -sum_k r_k(h) F^H diag(1 / (beta^2 lam_k + sigma)) F (h - beta m_k 1)."""
        out = []
        for logw, prec_r in self._chunks(h, t):
            mix = (torch.softmax(logw, dim=1)[:, :, None] * prec_r).sum(1)  # (n, F)
            out.append(-torch.fft.irfft(mix, n=self.dim, norm="ortho"))
        return torch.cat(out)

