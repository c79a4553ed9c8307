"""The first stage: the map between the data and the space the score network models.

- :mod:`latentdit.firststage.linear`: the linear encoder W_B of eq. (2.5) (D x d0, orthonormal
  columns, frozen or learned, PCA-initialised) and the one PCA of the package;
- :mod:`latentdit.firststage.autoencoder`: a learned conv autoencoder whose scaled latent the DiT
  models (``encoder.kind = "autoencoder"``);
- :mod:`latentdit.firststage.stage`: :class:`FirstStage`, that autoencoder on data rows (padding,
  normalisation, the unit-variance scale, the c x p x p latent patches) and its files;
- :mod:`latentdit.firststage.video`: :class:`VideoFirstStage`, that autoencoder applied frame by
  frame to clips, its latents cut into c x pt x p x p spatio-temporal tokens.

Its training loop is :mod:`latentdit.train.firststage`, its metrics :mod:`latentdit.evaluation.firststage`.
"""

from latentdit.firststage.autoencoder import ConvAutoencoder
from latentdit.firststage.linear import LinearEncoder, pca_basis
from latentdit.firststage.stage import FirstStage, latent_scale, padded_side
from latentdit.firststage.video import VideoFirstStage, load_first_stage

__all__ = ["ConvAutoencoder", "FirstStage", "LinearEncoder", "VideoFirstStage", "latent_scale", "load_first_stage",
           "padded_side", "pca_basis"]
