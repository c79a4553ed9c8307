"""latentdit: latent diffusion transformers on a low-dimensional linear subspace.

The package follows the data's path:

    data -> encoder (W_B) -> models (score network, eq. 2.5) -> diffusion (OU process, loss)
         -> sampling -> metrics -> train / evaluate / experiments / cli
"""

__version__ = "0.1.0"
