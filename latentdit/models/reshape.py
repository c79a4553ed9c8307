"""The reshape layer R of Definition 3.1 and its inverse R^{-1}.

2-D patching: the latent h in R^{d0} is read as an i x i grid (d0 = i^2, row-major) and cut into
p x p patches, giving L = (i/p)^2 tokens of size d = p^2 (so d0 = d L).
1-D patching: tokens are d = p consecutive coordinates, L = d0 / p; a prefix of the latent in whole
tokens (a window of a video clip, frame-major) maps to the prefix of the tokens.
Autoencoder latents (c, h, w) are cut into c x p x p patch tokens by
:func:`latentdit.firststage.stage.latent_patchify`; video latents (F, c, h, w) into c x pt x p x p
spatio-temporal tokens by :func:`latentdit.firststage.video.video_patchify`.

The paper writes tokens as columns (X in R^{d x L}); this code uses rows, X of shape (N, L, d).
"""

from __future__ import annotations

import math

import torch

from latentdit.errors import ConfigError


def resolve_patching(d0: int, patch: int, mode: str = "auto") -> str:
    """Pick '2d' or '1d' for a latent of size d0, or raise a ConfigError that says what fits."""
    i = math.isqrt(d0)
    square = i * i == d0
    fits_2d = square and patch > 0 and i % patch == 0
    fits_1d = patch > 0 and d0 % patch == 0
    if mode == "2d" and not fits_2d:
        why = (f"d0={d0} is not a square" if not square else f"the grid side {i} is not divisible by patch {patch}")
        raise ConfigError(f"cannot cut d0={d0} into {patch}x{patch} patches: {why}; "
                          f"choose encoder.latent_dim = (k*{patch})^2 or set model.patching='1d'")
    if mode == "1d" and not fits_1d:
        raise ConfigError(f"cannot cut d0={d0} into 1-D tokens of size {patch}: {d0} is not divisible by "
                          f"{patch}; choose model.patch among the divisors of {d0}")
    if mode in ("2d", "1d"):
        return mode
    if mode != "auto":
        raise ConfigError(f"model.patching={mode!r} is not one of ['auto', '2d', '1d']")
    if fits_2d:
        return "2d"
    if fits_1d:
        return "1d"
    raise ConfigError(f"latent dimension d0={d0} fits neither 2-D patches of side {patch} nor 1-D tokens "
                      f"of size {patch}; choose model.patch dividing {d0}")


class Reshape:
    """R: (N, d0) -> (N, L, d) and R^{-1}: (N, L, d) -> (N, d0), a fixed permutation (Def. 3.1)."""

    def __init__(self, d0: int, patch: int, mode: str = "auto"):
        self.mode = resolve_patching(d0, patch, mode)
        self.d0, self.patch = d0, patch
        if self.mode == "2d":
            self.side = math.isqrt(d0)
            self.grid = self.side // patch
            self.num_tokens, self.token_dim = self.grid**2, patch * patch
        else:
            self.num_tokens, self.token_dim = d0 // patch, patch

    @property
    def grid_shape(self) -> tuple[int, ...]:
        """The tokens' grid, slowest axis first: (rows, cols) of 2-D patches, (L,) of 1-D tokens."""
        return (self.grid, self.grid) if self.mode == "2d" else (self.num_tokens,)

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        n = h.shape[0]
        if self.mode == "1d":  # a prefix of the latent (a window of a clip) gives the prefix of the tokens
            if h.shape[1] > self.d0 or h.shape[1] % self.token_dim:
                raise ValueError(f"Reshape: a latent of {h.shape[1]} coordinates is not a prefix of {self.d0} "
                                 f"in whole tokens of {self.token_dim}")
            return h.reshape(n, h.shape[1] // self.token_dim, self.token_dim)
        g, p = self.grid, self.patch
        x = h.reshape(n, g, p, g, p)  # (N, grid_row, row_in_patch, grid_col, col_in_patch)
        return x.permute(0, 1, 3, 2, 4).reshape(n, g * g, p * p)

    def inverse(self, X: torch.Tensor) -> torch.Tensor:
        n = X.shape[0]
        if self.mode == "1d":
            return X.reshape(n, X.shape[1] * self.token_dim)
        g, p = self.grid, self.patch
        x = X.reshape(n, g, g, p, p).permute(0, 1, 3, 2, 4)
        return x.reshape(n, self.d0)

    def __repr__(self) -> str:
        return (f"Reshape(d0={self.d0}, mode={self.mode!r}, patch={self.patch}, "
                f"tokens={self.num_tokens}, token_dim={self.token_dim})")
