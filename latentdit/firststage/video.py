"""The video first stage: the image autoencoder applied frame by frame, in spatio-temporal tokens.

Why per frame. The first stage is the trained conv autoencoder of the image pipeline
(:mod:`latentdit.firststage.stage`), applied to every frame on its own: the same weights, the same
unit-variance latent scale (``s = 1 / std`` over the training frames' latents). It compresses space
only (f x f per frame) and leaves all temporal structure, the identity of the digit across frames
and its motion, to the DiT, whose full spatio-temporal attention must carry it. A spatio-temporal
autoencoder with temporal compression (LTX-Video, CogVideoX) would shorten the sequence and take
part of that work off the DiT; it is future work here.

Layout of a clip (F frames of H x W pixels in [0, 1], the data rows (N, F H W)):

    frames (N F, 1, S, S) -> per-frame latents (N, F, c, h, w), scaled -> video_patchify with
    pt x p x p patches -> tokens (N, L, c pt p p), L = (F/pt)(h/p)(w/p) -> rows (N, L c pt p p)

so the DiT's 1-D reshape R with token size c pt p p cuts exactly the spatio-temporal patches
(:func:`video_patchify`), token order (frame block, row, col).

:func:`load_first_stage` reads either kind of saved stage (an export's ``autoencoder.json``).
Training the stage on a run's clips is :func:`latentdit.train.firststage.prepare_video_first_stage`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from latentdit.errors import CheckpointError, ConfigError
from latentdit.firststage.stage import STAGE_CONFIG, FirstStage

VIDEO_KEY = "video"  # the key of autoencoder.json that marks a per-frame video stage


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


class VideoFirstStage:
    """A trained image :class:`FirstStage` applied per frame: clip rows (N, F H W) <-> latent rows."""

    def __init__(self, frame_stage: FirstStage, frames: int, patch_t: int = 1):
        self.frame_stage, self.frames, self.patch_t = frame_stage, int(frames), int(patch_t)
        c, h, w = frame_stage.latent_shape
        self.patch = self.layout_patch = frame_stage.layout_patch
        if self.frames % self.patch_t or h % self.patch:
            raise ConfigError(f"video first stage: patch_t={patch_t} must divide frames={frames} and "
                              f"model.patch={self.patch} the latent side {h}")
        self.latent_shape = (self.frames, c, h, w)
        self.token_dim = c * self.patch_t * self.patch * self.patch
        self.num_tokens = (self.frames // self.patch_t) * (h // self.patch) * (w // self.patch)
        self.train_seconds = frame_stage.train_seconds

    @property
    def video_shape(self) -> tuple[int, int, int]:
        """(F, H, W) of a clip."""
        H, W = self.frame_stage.image_shape[:2]
        return (self.frames, H, W)

    @property
    def latent_dim(self) -> int:
        return self.num_tokens * self.token_dim

    @property
    def token_grid(self) -> tuple[int, int, int]:
        """(frame blocks, rows, cols) of the spatio-temporal patches: the tokens' grid, slowest first."""
        F, _, h, w = self.latent_shape
        return (F // self.patch_t, h // self.patch, w // self.patch)

    @property
    def scale(self) -> float:
        return self.frame_stage.scale

    def encode_clips(self, clips: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Clips (N, F, H, W) in [0, 1] -> latent rows (N, L token_dim)."""
        out = []
        for i in range(0, len(clips), batch_size):
            c = clips[i:i + batch_size]
            n, F = c.shape[:2]
            frames = self.frame_stage.images_from_rows(c.reshape(n * F, -1))  # (n F, 1, S, S)
            z = self.frame_stage.encode_images(frames).reshape(n, F, *self.latent_shape[1:])
            out.append(video_patchify(z, self.patch_t, self.patch).reshape(n, -1))
        return torch.cat(out)

    def decode_clips(self, v: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Latent rows (N, L token_dim) -> clips (N, F, H, W) in [0, 1]."""
        if v.ndim != 2 or v.shape[1] != self.latent_dim:
            raise ValueError(f"VideoFirstStage: rows of shape {tuple(v.shape)}, expected (N, {self.latent_dim})")
        F, H, W = self.video_shape
        out = []
        for i in range(0, len(v), batch_size):
            X = v[i:i + batch_size].detach().cpu().float()
            n = X.shape[0]
            z = video_unpatchify(X.reshape(n, self.num_tokens, self.token_dim), self.latent_shape, self.patch_t,
                                 self.patch)
            img = self.frame_stage.decode_images(z.reshape(n * F, *self.latent_shape[1:]))
            out.append(self.frame_stage.rows_from_images(img).reshape(n, F, H, W))
        return torch.cat(out)

    def encode_vectors(self, x: torch.Tensor) -> torch.Tensor:
        """Data rows (N, F H W) (pixels, identity normalisation) -> latent rows."""
        return self.encode_clips(x.detach().cpu().reshape(x.shape[0], *self.video_shape))

    def decode_vectors(self, v: torch.Tensor) -> torch.Tensor:
        """Latent rows -> data rows (N, F H W)."""
        return self.decode_clips(v).reshape(v.shape[0], -1)

    def record(self) -> dict:
        return {**self.frame_stage.record(), VIDEO_KEY: {"frames": self.frames, "patch_t": self.patch_t}}

    def save(self, folder: str | Path, extra: dict | None = None) -> None:
        """The frame stage's files, its ``autoencoder.json`` marked with the video layout."""
        self.frame_stage.save(folder, {VIDEO_KEY: {"frames": self.frames, "patch_t": self.patch_t}, **(extra or {})})

    @classmethod
    def load(cls, folder: str | Path) -> "VideoFirstStage":
        rec = json.loads((Path(folder) / STAGE_CONFIG).read_text())
        return cls(FirstStage.load(folder), rec[VIDEO_KEY]["frames"], rec[VIDEO_KEY]["patch_t"])


def load_first_stage(folder: str | Path) -> FirstStage | VideoFirstStage:
    """The stage saved in ``folder``: a :class:`VideoFirstStage` when its record says so, else a :class:`FirstStage`."""
    try:
        rec = json.loads((Path(folder) / STAGE_CONFIG).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{str(folder)!r} holds no readable autoencoder ({STAGE_CONFIG}): {e}") from e
    return VideoFirstStage.load(folder) if isinstance(rec, dict) and VIDEO_KEY in rec else FirstStage.load(folder)
