"""latentdit: latent diffusion transformers on a low-dimensional linear subspace.

The package follows the data's path, each layer importing only the ones below it:

    data -> firststage (W_B, autoencoder) -> models (score network, eq. 2.5) -> diffusion (OU
         process, loss) -> sampling -> pipeline (the trained artifact) -> train / evaluation
         -> experiments / bench -> cli

The public names are imported on first use, so that ``import latentdit`` stays cheap::

    from latentdit import Config, LatentDiTPipeline, LatentScoreNet, train
"""

from __future__ import annotations

import importlib

from latentdit.version import __version__

__all__ = ["Config", "LatentDiTPipeline", "LatentScoreNet", "__version__", "train"]

_PUBLIC = {"Config": "latentdit.config", "LatentDiTPipeline": "latentdit.pipeline",
           "LatentScoreNet": "latentdit.models.score"}


def __getattr__(name: str):
    if name == "train":  # the package latentdit.train is callable: train(cfg, run, ...)
        return importlib.import_module("latentdit.train")
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'latentdit' has no attribute {name!r}")
