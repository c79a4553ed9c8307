"""The learned first stage of ``encoder.kind = "autoencoder"``: a small conv autoencoder.

``config`` (the ``[autoencoder]`` section), ``model`` (:class:`ConvAutoencoder` and the choice of a
diffusable latent), ``stage`` (:class:`FirstStage`: data rows <-> scaled latent rows, files),
``fit`` (first-stage training with checkpoints and exact resume, and the call the DiT's training
makes) and ``metrics`` (the reconstruction floor: MSE and FID of reconstructions).
"""

from latentdit.autoencoder.config import AutoencoderConfig, validate_autoencoder
from latentdit.autoencoder.model import ConvAutoencoder
from latentdit.autoencoder.stage import FirstStage, latent_scale, padded_side

__all__ = ["AutoencoderConfig", "ConvAutoencoder", "FirstStage", "latent_scale", "padded_side",
           "validate_autoencoder"]
