"""A small convolutional autoencoder: the learned first stage of ``encoder.kind = "autoencoder"``.

An image (C, H, W) in [0, 1], padded to a side divisible by the factor f, is encoded to a latent
(c, H/f, W/f) by log2(f) stride-2 convolution levels and decoded back by as many nearest-neighbour
upsampling levels; the decoder returns logits, read through a sigmoid as pixels in [0, 1].

The diffusable latent: relative latent noise, then a unit-variance scale.

- During training the decoder sees z + latent_noise * rms(z) * eps, eps ~ N(0, I), rms(z) the
  root mean square of the batch's latents (not detached). The noise is relative, so the encoder
  cannot escape it by growing its output: the signal-to-noise ratio of the latent is fixed. The
  decoder thereby learns to map a neighbourhood of every code to the same image, which is what a
  sampled latent needs (a DiT's samples are close to, not on, the training codes), and the
  latent keeps no detail below that noise level, detail a diffusion model would have to learn
  at its smallest, hardest noise levels.
- After training, one scaling factor s = 1 / std(z) over all entries of the training latents
  (see :func:`latentdit.firststage.stage.latent_scale`) makes the DiT's data of unit variance, as
  the OU process and its preconditioning expect; s is recorded with the weights.

A KL regulariser would also bound the latent, but its weight trades reconstruction against
smoothness in units that depend on the data; the relative noise says the same thing in one number
with a direct meaning (the latent's SNR), and with no sampling at encode time the latent of an
image is deterministic. A normalisation layer alone (e.g. unit-norm latents) bounds the scale but
not the detail.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def level_widths(width: int, factor: int) -> list[int]:
    """Channel widths of the levels 0..log2(factor): ``width`` doubled once per level, at most 2x."""
    return [width * min(2**i, 2) for i in range(int(math.log2(factor)) + 1)]


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1)


class ConvAutoencoder(nn.Module):
    """encode: (N, C, S, S) in [0, 1] -> (N, c, S/f, S/f); decode: latent -> (N, C, S, S) logits."""

    def __init__(self, image_channels: int, factor: int, channels: int, width: int):
        super().__init__()
        if factor not in (1, 2, 4, 8):
            raise ValueError(f"ConvAutoencoder: factor={factor} must be 1, 2, 4 or 8")
        if min(image_channels, channels, width) < 1:
            raise ValueError(f"ConvAutoencoder: image_channels={image_channels}, channels={channels} and "
                             f"width={width} must be >= 1")
        self.image_channels, self.factor, self.channels, self.width = image_channels, factor, channels, width
        w = level_widths(width, factor)
        enc: list[nn.Module] = [_conv(image_channels, w[0]), nn.SiLU()]
        for i in range(1, len(w)):  # each level halves the side
            enc += [_conv(w[i - 1], w[i], stride=2), nn.SiLU(), _conv(w[i], w[i]), nn.SiLU()]
        enc.append(nn.Conv2d(w[-1], channels, 1))
        dec: list[nn.Module] = [_conv(channels, w[-1]), nn.SiLU()]
        for i in range(len(w) - 1, 0, -1):  # each level doubles the side
            dec += [_conv(w[i], w[i]), nn.SiLU(), nn.Upsample(scale_factor=2, mode="nearest"),
                    _conv(w[i], w[i - 1]), nn.SiLU()]
        dec.append(_conv(w[0], image_channels))
        self.encoder, self.decoder = nn.Sequential(*enc), nn.Sequential(*dec)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (N, C, S, S) in [0, 1] -> latents (N, c, S/f, S/f) (unscaled)."""
        return self.encoder(images * 2 - 1)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (N, c, h, w) (unscaled) -> pixel logits (N, C, h f, w f)."""
        return self.decoder(z)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (N, c, h, w) (unscaled) -> images (N, C, h f, w f) in [0, 1]."""
        return torch.sigmoid(self.decoder(z))

    def forward(self, images: torch.Tensor, noise: torch.Tensor | None = None,
                latent_noise: float = 0.0) -> torch.Tensor:
        """Training pass: logits of decode(z + latent_noise * rms(z) * noise), z = encode(images)."""
        z = self.encode(images)
        if noise is not None and latent_noise > 0:
            z = z + latent_noise * z.pow(2).mean().sqrt() * noise
        return self.decode_logits(z)
