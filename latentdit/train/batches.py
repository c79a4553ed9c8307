"""Where a training batch comes from: a finite data set in seeded epochs, or fresh population draws.

:class:`BatchSource` hands the trainer the global batch of clean points x0 (and labels) each step.
With ``TrainData.sampler`` set (a population sampler ``sampler(n, generator) -> (n, D)``, e.g. the
ground truth of a ``gmm`` run with ``data.n = 0``) every step draws fresh points: training on the
population itself, n = infinity. Its generator is part of the checkpoint, so a resumed run draws
the same points as an uninterrupted one.
"""

from __future__ import annotations

import torch

from latentdit.build import TrainData, build_data, build_ground_truth
from latentdit.config import Config
from latentdit.firststage.linear import LinearEncoder
from latentdit.errors import ConfigError
from latentdit.train.checkpoint import DataOrder

# points drawn from a population sampler for what needs a data matrix (PCA of the encoder init,
# the latent statistics of the preconditioning)
REFERENCE_POINTS = 8192


def default_data(cfg: Config) -> TrainData:
    """``build_data(cfg)``, except that a ``gmm`` source with ``data.n = 0`` trains on fresh draws."""
    d = cfg.data
    if d.source != "gmm" or d.n > 0:
        return build_data(cfg)
    if d.conditional:
        raise ConfigError("data.n=0 (fresh draws from the ground truth) does not support data.conditional=true; "
                          "set data.n > 0 or data.conditional=false")
    gmm = build_ground_truth(cfg)
    x = gmm.sample(REFERENCE_POINTS, generator=torch.Generator().manual_seed(d.seed + 1)).float()
    return TrainData(x, None, 0, gmm=gmm, sampler=lambda m, g: gmm.sample(m, generator=g).float())


def held_out_split(n: int, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(training indices, held-out indices): a seeded permutation of range(n), its first ``count`` held out."""
    if not 0 < count < n:
        raise ConfigError(f"train.val_points={count} must be between 1 and the {n} data points minus one "
                          "(the held-out split for the validation loss); lower train.val_points")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7_919 + 3))
    return perm[count:].sort().values, perm[:count].sort().values


class BatchSource:
    """The global batch of each step: ``x[idx]`` in seeded epochs (``DataOrder``), or fresh draws."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor | None, batch: int, seed: int, sampler=None):
        self.x, self.y, self.sampler, self.batch = x, y, sampler, batch
        self.order = None if sampler is not None else DataOrder(x.shape[0], batch, seed)
        self.gen = torch.Generator().manual_seed(seed * 1_000_033 + 29) if sampler is not None else None

    def next(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(x0, labels) of the global batch, on the device of ``x``."""
        if self.sampler is None:
            idx = self.order.next().to(self.x.device)
            return self.x[idx], None if self.y is None else self.y[idx]
        x0 = self.sampler(self.batch, self.gen)
        if tuple(x0.shape) != (self.batch, self.x.shape[1]):
            raise ValueError(f"TrainData.sampler returned shape {tuple(x0.shape)}, expected "
                             f"({self.batch}, {self.x.shape[1]})")
        return x0.to(device=self.x.device, dtype=self.x.dtype), None

    def state(self) -> dict:
        return self.order.state() if self.order is not None else {"gen": self.gen.get_state()}

    def load_state(self, s: dict) -> None:
        if self.order is not None:
            if "gen" in s:
                raise ValueError("the checkpoint trained on fresh draws, this run on a finite data set")
            self.order = DataOrder(self.order.n, self.order.bs, self.order.seed, **s)
        else:
            if "gen" not in s:
                raise ValueError("the checkpoint trained on a finite data set, this run on fresh draws")
            self.gen.set_state(s["gen"])


def window_batch(source: BatchSource, draws: int, width: int, stride: int, *,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(x0, labels) of a step on windows: ``draws`` global batches (G, D) of whole clips from ``source``
    and, from each clip, the ``width`` consecutive latent coordinates that start at a multiple of
    ``stride`` drawn uniformly (``generator``, on the CPU): (draws G, width).

    A clip latent is frame-major (:func:`latentdit.firststage.video.video_patchify`), so with
    ``stride`` the coordinates of one frame block such a slice is the latent of a shorter clip. The
    motion is stationary (the reflected uniform start stays uniform), so a window is a clip of the
    same law, shorter.
    """
    xs, ys = zip(*(source.next() for _ in range(draws)))
    x = torch.cat(xs)
    D = x.shape[1]
    if not (0 < width <= D and stride > 0 and width % stride == 0 and D % stride == 0):
        raise ValueError(f"window_batch: width={width} and stride={stride} must cut clips of {D} coordinates "
                         "into whole frame blocks")
    starts = torch.randint(0, (D - width) // stride + 1, (x.shape[0],), generator=generator) * stride
    idx = (starts[:, None] + torch.arange(width)).to(x.device)
    return x.gather(1, idx), None if ys[0] is None else torch.cat(ys)


def use_basis(model, W: torch.Tensor, x: torch.Tensor) -> None:
    """Replace the encoder's initial W_B by the given (D, d0) orthonormal basis (``TrainData.basis``).

    Before the optimiser is made. The diagonal latent statistics of the preconditioning are
    recomputed from the data ``x`` along the new basis (a scalar second moment does not change:
    it depends on span(W_B) only, which a given basis is expected to share with PCA's).
    """
    if model.encoder.identity or tuple(W.shape) != (model.ambient_dim, model.latent_dim):
        raise ConfigError(f"TrainData.basis has shape {tuple(W.shape)}; the model needs "
                          f"({model.ambient_dim}, {model.latent_dim}) and encoder.init=pca or random")
    dev = next(iter(model.buffers())).device
    model.encoder = LinearEncoder(model.ambient_dim, model.latent_dim, learn=model.encoder.learn,
                                  init=W.float()).to(dev)
    if model.cfg.precondition_stats == "diagonal":
        h = x.double() @ W.double()
        model.latent_mean.copy_(h.mean(0))
        model.latent_var.copy_(h.var(0, correction=0).clamp_min(1e-8))
