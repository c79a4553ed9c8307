"""The reshape layer R of Definition 3.1 and its inverse R^{-1}.

2-D patching: the latent h in R^{d0} is read as an i x i grid (d0 = i^2, row-major) and cut into
p x p patches, giving L = (i/p)^2 tokens of size d = p^2 (so d0 = d L).
1-D patching: tokens are d = p consecutive coordinates, L = d0 / p.
Autoencoder latents (c, h, w): :func:`latent_patchify` cuts them into c x p x p patch tokens; video
latents (F, c, h, w): :func:`video_patchify` cuts them into c x pt x p x p spatio-temporal tokens.

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

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        n = h.shape[0]
        if self.mode == "1d":
            return h.reshape(n, self.num_tokens, self.token_dim)
        g, p = self.grid, self.patch
        x = h.reshape(n, g, p, g, p)  # (N, grid_row, row_in_patch, grid_col, col_in_patch)
        return x.permute(0, 1, 3, 2, 4).reshape(n, g * g, p * p)

    def inverse(self, X: torch.Tensor) -> torch.Tensor:
        n = X.shape[0]
        if self.mode == "1d":
            return X.reshape(n, self.d0)
        g, p = self.grid, self.patch
        x = X.reshape(n, g, g, p, p).permute(0, 1, 3, 2, 4)
        return x.reshape(n, self.d0)

    def __repr__(self) -> str:
        return (f"Reshape(d0={self.d0}, mode={self.mode!r}, patch={self.patch}, "
                f"tokens={self.num_tokens}, token_dim={self.token_dim})")


def latent_patchify(z: torch.Tensor, patch: int) -> torch.Tensor:
    """Cut a latent (N, c, h, w) into p x p patches over (h, w): tokens (N, (h/p)(w/p), c p p).

    Token k = (row, col) of the patch grid, row-major; inside a token the order is (channel, i, j).
    Flattened row by row, the tokens give the autoencoder latent's vector layout, on which the 1-D
    reshape R with token size c p p is exactly this patching (see :func:`latentdit.build.build_model`).
    """
    n, c, h, w = z.shape
    if patch < 1 or h % patch or w % patch:
        raise ValueError(f"latent_patchify: patch={patch} must divide the latent's sides h={h} and w={w}")
    p = patch
    x = z.reshape(n, c, h // p, p, w // p, p)  # (N, c, grid_row, i, grid_col, j)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(n, (h // p) * (w // p), c * p * p)


def latent_unpatchify(X: torch.Tensor, shape: tuple[int, int, int], patch: int) -> torch.Tensor:
    """Inverse of :func:`latent_patchify`: tokens (N, L, c p p) -> latent (N, c, h, w), ``shape`` = (c, h, w)."""
    c, h, w = shape
    p = patch
    if patch < 1 or h % p or w % p or X.shape[1:] != (h // p * (w // p), c * p * p):
        raise ValueError(f"latent_unpatchify: tokens of shape {tuple(X.shape)} do not fit shape={shape} "
                         f"in patches of {patch}")
    x = X.reshape(X.shape[0], h // p, w // p, c, p, p).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(X.shape[0], c, h, w)


def video_patchify(z: torch.Tensor, patch_t: int, patch: int) -> torch.Tensor:
    """Cut a video latent (N, F, c, h, w) into pt x p x p patches over (frames, rows, cols): tokens
    (N, (F/pt)(h/p)(w/p), c pt p p).

    Token k = (frame block, row, col) of the patch grid, row-major (the frame block slowest, the column
    fastest); inside a token the order is (channel, frame, i, j). With pt = 1 each frame's tokens are
    :func:`latent_patchify` of that frame, frame after frame. Flattened token by token, this is the
    vector layout on which the 1-D reshape R with token size c pt p p is exactly this patching.
    """
    n, F, c, h, w = z.shape
    pt, p = patch_t, patch
    if pt < 1 or p < 1 or F % pt or h % p or w % p:
        raise ValueError(f"video_patchify: patch_t={patch_t} must divide the frames F={F} and patch={patch} "
                         f"the latent's sides h={h}, w={w}")
    x = z.reshape(n, F // pt, pt, c, h // p, p, w // p, p)  # (N, T, k, c, R, i, C, j)
    x = x.permute(0, 1, 4, 6, 3, 2, 5, 7)  # (N, T, R, C, c, k, i, j)
    return x.reshape(n, (F // pt) * (h // p) * (w // p), c * pt * p * p)


def video_unpatchify(X: torch.Tensor, shape: tuple[int, int, int, int], patch_t: int, patch: int) -> torch.Tensor:
    """Inverse of :func:`video_patchify`: tokens (N, L, c pt p p) -> (N, F, c, h, w), ``shape`` = (F, c, h, w)."""
    F, c, h, w = shape
    pt, p = patch_t, patch
    if pt < 1 or p < 1 or F % pt or h % p or w % p or X.shape[1:] != ((F // pt) * (h // p) * (w // p), c * pt * p * p):
        raise ValueError(f"video_unpatchify: tokens of shape {tuple(X.shape)} do not fit shape={shape} in "
                         f"patches of {patch_t} x {patch} x {patch}")
    x = X.reshape(X.shape[0], F // pt, h // p, w // p, c, pt, p, p)  # (N, T, R, C, c, k, i, j)
    x = x.permute(0, 1, 5, 4, 2, 6, 3, 7)  # (N, T, k, c, R, i, C, j)
    return x.reshape(X.shape[0], F, c, h, w)
