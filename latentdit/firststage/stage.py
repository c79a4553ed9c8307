"""The trained first stage as a map between the data's vectors and the DiT's latent vectors.

:class:`FirstStage` holds a :class:`ConvAutoencoder`, the data's normalisation and pixel range (to
turn normalised rows into images in [0, 1] and back), the padded side, the unit-variance scale
and the vector layout of the latent:

    encode_vectors: x (N, D) normalised pixels -> images (N, C, S, S) -> z (N, c, h, w) -> s z
                    -> patch tokens (N, L, c p p) -> (N, c h w)
    decode_vectors: the inverse path, the decoder's sigmoid giving pixels in [0, 1].

The layout patch p is the DiT's patch side when it models the whole latent (``encoder.init =
"identity"``): then the 1-D reshape R with tokens of c p p consecutive coordinates cuts exactly
the c x p x p latent patches (:func:`latent_patchify`). With W_B (PCA) on
top, p = 1 and the order does not matter.

Saved as ``autoencoder.safetensors`` (weights) and ``autoencoder.json`` (everything else), in the
run's ``autoencoder/`` folder and in every export of an autoencoder run.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from latentdit.firststage.autoencoder import ConvAutoencoder
from latentdit.data.normalise import Normalisation
from latentdit.errors import CheckpointError
from latentdit.io import atomic_write_bytes, atomic_write_json

STAGE_WEIGHTS = "autoencoder.safetensors"
STAGE_CONFIG = "autoencoder.json"
STAGE_FORMAT = 1


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


def padded_side(image_shape: tuple[int, ...], factor: int, pad_to: int = 0) -> int:
    """The square side S images are padded to: ``pad_to``, or the next multiple of 2 f >= H, W."""
    side = max(image_shape[:2])
    if pad_to:
        if pad_to < side:
            raise ValueError(f"padded_side: pad_to={pad_to} is smaller than the image side {side}")
        return pad_to
    m = 2 * factor
    return -(-side // m) * m


def latent_scale(z: torch.Tensor) -> float:
    """The scaling factor 1 / std of all entries of the training latents z: s z has unit variance."""
    std = float(z.detach().double().std(correction=0))
    if not std > 0:
        raise ValueError("latent_scale: the latents are constant; the autoencoder did not train")
    return 1.0 / std


class FirstStage:
    """A trained autoencoder between normalised data rows (N, D) and scaled latent rows (N, c h w)."""

    def __init__(self, ae: ConvAutoencoder, *, image_shape: tuple[int, ...], side: int,
                 normalisation: Normalisation, pixel_range: tuple[float, float], scale: float = 1.0,
                 layout_patch: int = 1):
        self.ae = ae.eval().requires_grad_(False)
        self.image_shape, self.side = tuple(int(v) for v in image_shape), int(side)
        self.norm, self.pixel_range = normalisation, (float(pixel_range[0]), float(pixel_range[1]))
        self.scale, self.layout_patch = float(scale), int(layout_patch)
        self.train_seconds: float | None = None  # of the first stage's training, when known
        h = self.side // ae.factor
        self.latent_shape = (ae.channels, h, h)
        if h % self.layout_patch:
            raise ValueError(f"FirstStage: layout_patch={layout_patch} must divide the latent side {h}")

    @property
    def latent_dim(self) -> int:
        c, h, w = self.latent_shape
        return c * h * w

    @property
    def token_grid(self) -> tuple[int, int]:
        """(rows, cols) of the latent's layout patches: the grid of the tokens a DiT reads."""
        c, h, w = self.latent_shape
        return (h // self.layout_patch, w // self.layout_patch)

    @property
    def image_channels(self) -> int:
        return self.image_shape[2] if len(self.image_shape) == 3 else 1

    def with_layout(self, patch: int) -> "FirstStage":
        """The same stage with latent vectors laid out in patches of side ``patch``."""
        out = FirstStage(self.ae, image_shape=self.image_shape, side=self.side, normalisation=self.norm,
                         pixel_range=self.pixel_range, scale=self.scale, layout_patch=patch)
        out.train_seconds = self.train_seconds
        return out

    # ------------------------------------------------------------- images <-> data rows

    def images_from_rows(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised rows (N, D) -> padded images (N, C, S, S) in [0, 1]."""
        lo, hi = self.pixel_range
        raw = self.norm.invert(x.detach().to("cpu", torch.float32))
        img = ((raw - lo) / (hi - lo if hi > lo else 1.0)).clamp(0, 1)
        H, W = self.image_shape[:2]
        img = img.reshape(-1, H, W, self.image_channels).permute(0, 3, 1, 2)
        return F.pad(img, (0, self.side - W, 0, self.side - H), mode="replicate")

    def rows_from_images(self, img: torch.Tensor) -> torch.Tensor:
        """Padded images (N, C, S, S) in [0, 1] -> normalised rows (N, D) (the padding cropped)."""
        lo, hi = self.pixel_range
        H, W = self.image_shape[:2]
        img = img[:, :, :H, :W].permute(0, 2, 3, 1).reshape(img.shape[0], -1)
        return self.norm.apply(lo + img * (hi - lo))

    # ------------------------------------------------------------- latents

    def _device(self) -> torch.device:
        return next(self.ae.parameters()).device

    @torch.no_grad()
    def encode_images(self, img: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        """Images (N, C, S, S) -> scaled latents (N, c, h, w)."""
        dev = self._device()
        return torch.cat([self.ae.encode(img[i:i + batch_size].to(dev)).cpu() * self.scale
                          for i in range(0, len(img), batch_size)])

    @torch.no_grad()
    def decode_images(self, z: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        """Scaled latents (N, c, h, w) -> images (N, C, S, S) in [0, 1]."""
        dev = self._device()
        return torch.cat([self.ae.decode(z[i:i + batch_size].to(dev, torch.float32) / self.scale).cpu()
                          for i in range(0, len(z), batch_size)])

    def to_vectors(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (N, c, h, w) -> latent rows (N, c h w) in the patch layout."""
        return latent_patchify(z, self.layout_patch).reshape(z.shape[0], -1)

    def from_vectors(self, v: torch.Tensor) -> torch.Tensor:
        """Latent rows (N, c h w) -> latents (N, c, h, w)."""
        c, h, w = self.latent_shape
        if v.ndim != 2 or v.shape[1] != self.latent_dim:
            raise ValueError(f"FirstStage.from_vectors: v has shape {tuple(v.shape)}, expected (N, {self.latent_dim})")
        p = self.layout_patch
        return latent_unpatchify(v.reshape(v.shape[0], (h // p) * (w // p), c * p * p), (c, h, w), p)

    def encode_vectors(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised data rows (N, D) -> scaled latent rows (N, c h w)."""
        return self.to_vectors(self.encode_images(self.images_from_rows(x)))

    def decode_vectors(self, v: torch.Tensor) -> torch.Tensor:
        """Scaled latent rows (N, c h w) -> normalised data rows (N, D)."""
        return self.rows_from_images(self.decode_images(self.from_vectors(v.detach().cpu())))

    # ------------------------------------------------------------- files

    def record(self) -> dict:
        ae = self.ae
        return {"format": STAGE_FORMAT, "kind": "conv_autoencoder", "image_channels": ae.image_channels,
                "factor": ae.factor, "channels": ae.channels, "width": ae.width,
                "image_shape": list(self.image_shape), "side": self.side, "latent_shape": list(self.latent_shape),
                "scale": self.scale, "layout_patch": self.layout_patch, "normalisation": self.norm.to_dict(),
                "pixel_range": list(self.pixel_range), "train_seconds": self.train_seconds}

    def save(self, folder: str | Path, extra: dict | None = None) -> None:
        """Write ``autoencoder.safetensors`` then ``autoencoder.json`` (the record and ``extra``) atomically."""
        folder = Path(folder)
        state = {k: v.detach().cpu().contiguous() for k, v in self.ae.state_dict().items()}
        atomic_write_bytes(folder / STAGE_WEIGHTS, save(state, metadata={"format": "pt", "library": "latentdit"}))
        atomic_write_json(folder / STAGE_CONFIG, {**self.record(), **(extra or {})})

    @classmethod
    def load(cls, folder: str | Path) -> "FirstStage":
        """The stage saved in ``folder`` by :meth:`save`."""
        folder = Path(folder)
        try:
            rec = json.loads((folder / STAGE_CONFIG).read_text())
            ae = ConvAutoencoder(rec["image_channels"], rec["factor"], rec["channels"], rec["width"])
            ae.load_state_dict(load_file(str(folder / STAGE_WEIGHTS)))
            stage = cls(ae, image_shape=tuple(rec["image_shape"]), side=rec["side"],
                        normalisation=Normalisation.from_dict(rec["normalisation"]),
                        pixel_range=tuple(rec["pixel_range"]), scale=rec["scale"], layout_patch=rec["layout_patch"])
            stage.train_seconds = rec.get("train_seconds")
            return stage
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as e:
            raise CheckpointError(f"{str(folder)!r} holds no readable autoencoder ({STAGE_CONFIG} and "
                                  f"{STAGE_WEIGHTS}): {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
