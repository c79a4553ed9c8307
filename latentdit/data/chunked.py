"""The part the long-sequence mixture laws share: per-component terms of a batch computed chunk by
chunk, so that an (N x K x width) intermediate never exceeds a fixed number of entries, and the
log density and the component posterior read off them.

A subclass gives ``_terms(h, t) -> (log w_k + log N_k(h), per-component term)`` for a chunk of rows
(float64, t of shape (n,)) and ``_chunk_width()``, the per-component width of those terms."""

from __future__ import annotations

from typing import Iterator

import torch

from latentdit.schedule import sigma


class ChunkedMixture:
    """Mixin of :class:`~latentdit.data.long.LongMixture` and
    :class:`~latentdit.data.stationary.StationaryMixture` (B = I: data and latent coincide)."""

    components: int
    chunk_elements: int = 1 << 22  # entries of one chunk's (n x K x width) terms

    def _terms(self, h: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _chunk_width(self) -> int:
        raise NotImplementedError

    def latent_score(self, h: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        raise NotImplementedError

    def _chunks(self, h: torch.Tensor, t: torch.Tensor | float) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        h = h.to(torch.float64)
        t = torch.as_tensor(t, dtype=torch.float64).expand(h.shape[0])
        rows = max(1, self.chunk_elements // max(1, self.components * self._chunk_width()))
        for i in range(0, h.shape[0], rows):
            yield self._terms(h[i:i + rows], t[i:i + rows])

    def latent_log_prob(self, h: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """log p_t(h), shape (N,)."""
        return torch.cat([torch.logsumexp(logw, dim=1) for logw, _ in self._chunks(h, t)])

    def log_prob(self, h: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """log p_t(h), shape (N,) (B = I: the data are the latent)."""
        return self.latent_log_prob(h, t)

    def responsibilities(self, h: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """P(component k | h_t = h), shape (N, K)."""
        return torch.cat([torch.softmax(logw, dim=1) for logw, _ in self._chunks(h, t)])

    def score(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """The data score (B = I): the latent score, in the input's dtype."""
        return self.latent_score(x, t).to(x.dtype)

    def score_fn(self):
        """The exact score as a sampler-ready function s(x, t)."""
        return lambda x, t: self.score(x, t)

    def optimal_f(self, h: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """f*(h, t) = sigma(t) grad log p_t(h) + h = beta(t) E[h0 | h_t = h], the optimum of eq. (2.5)."""
        t = torch.as_tensor(t, dtype=torch.float64).expand(h.shape[0])
        return sigma(t)[:, None] * self.latent_score(h, t) + h.to(torch.float64)
