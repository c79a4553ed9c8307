"""The ``[autoencoder]`` config section: the first stage of ``encoder.kind = "autoencoder"``."""

from __future__ import annotations

from dataclasses import dataclass

from latentdit.errors import ConfigError

IMAGE_SOURCES = ("mnist", "digits", "images")


@dataclass
class AutoencoderConfig:
    """A small conv autoencoder trained on the images before the DiT (``epochs`` is its budget), with
    checkpoints and exact resume in RUN/autoencoder/; see :mod:`latentdit.autoencoder`."""

    factor: int = 4  # spatial downsampling f (1, 2, 4 or 8): an H x W image -> an H/f x W/f latent
    channels: int = 4  # latent channels c
    width: int = 16  # conv width of the first level (doubled at the first downsampling only)
    pad_to: int = 0  # images are padded (edge pixels repeated) to this side; 0 = next multiple of 2f
    latent_noise: float = 0.1  # std of the training noise on the latent, relative to the latent's RMS
    loss: str = "bce"  # bce (pixels in [0, 1] read as probabilities) | mse
    epochs: int = 16
    batch_size: int = 64
    lr: float = 3e-3  # AdamW, cosine decay to a tenth over the run
    weight_decay: float = 1e-4
    seed: int = 0
    checkpoint_every: int = 0  # optimiser steps between checkpoints; 0 = once per epoch
    recon_samples: int = 1000  # reconstructions whose Inception FID is the floor the demo reports


def validate_autoencoder(a: AutoencoderConfig, kind: str, source: str) -> None:
    """Range and choice checks of the section (``kind`` = encoder.kind, ``source`` = data.source)."""
    if a.factor not in (1, 2, 4, 8):
        raise ConfigError(f"autoencoder.factor={a.factor} is not one of [1, 2, 4, 8]")
    if a.loss not in ("bce", "mse"):
        raise ConfigError(f"autoencoder.loss={a.loss!r} is not one of ['bce', 'mse']")
    for where, v in (("channels", a.channels), ("width", a.width), ("epochs", a.epochs),
                     ("batch_size", a.batch_size), ("lr", a.lr)):
        if not v > 0:
            raise ConfigError(f"autoencoder.{where}={v} must be > 0")
    for where, v in (("latent_noise", a.latent_noise), ("weight_decay", a.weight_decay), ("pad_to", a.pad_to),
                     ("checkpoint_every", a.checkpoint_every), ("recon_samples", a.recon_samples)):
        if v < 0:
            raise ConfigError(f"autoencoder.{where}={v} must be >= 0")
    if a.pad_to % a.factor:
        raise ConfigError(f"autoencoder.pad_to={a.pad_to} must be divisible by autoencoder.factor={a.factor}")
    if kind == "autoencoder" and source not in IMAGE_SOURCES:
        raise ConfigError(f"encoder.kind='autoencoder' needs image data (data.source one of {list(IMAGE_SOURCES)}), "
                          f"not data.source={source!r}; use encoder.kind='linear'")
