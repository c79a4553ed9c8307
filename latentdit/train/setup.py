"""What a run sets up before its first step: the process (threads, determinism, device, global
seeds), the network and its EMA copy, the held-out validation set and the batch sizes."""

from __future__ import annotations

import copy
import importlib
import random
from dataclasses import dataclass

import numpy as np
import torch

from latentdit.build import TrainData, build_model
from latentdit.device import resolve_device
from latentdit.config import Config
from latentdit.diffusion import Objective
from latentdit.distributed import DistContext, rank_device
from latentdit.errors import ConfigError
from latentdit.models.score import LatentScoreNet
from latentdit.train.batches import held_out_split, use_basis
from latentdit.train.early import EarlyStopping, ValidationSet


def setup_process(cfg: Config, dist: DistContext) -> torch.device:
    """Thread count, deterministic algorithms, the tensorboard check, this rank's device and the
    global seeds (torch, numpy, random) of ``train.seed``."""
    tc = cfg.train
    if tc.threads > 0:
        torch.set_num_threads(tc.threads)
    if tc.deterministic:
        torch.use_deterministic_algorithms(True)
    if tc.tensorboard:
        try:
            importlib.import_module("torch.utils.tensorboard")
        except ImportError as e:
            raise ConfigError("train.tensorboard=true needs the tensorboard package; run `pip install "
                              "tensorboard` or set train.tensorboard=false") from e
    device = rank_device(dist, resolve_device(tc.device, option="train.device"))
    torch.manual_seed(tc.seed)
    np.random.seed(tc.seed % 2**32)
    random.seed(tc.seed)
    return device


def setup_model(cfg: Config, data: TrainData, device: torch.device) -> tuple[LatentScoreNet, LatentScoreNet]:
    """(network, its EMA copy) on ``device``: built from ``train.seed``, W_B from ``data.basis`` if given."""
    model = build_model(cfg, data, generator=torch.Generator().manual_seed(cfg.train.seed))
    if data.basis is not None:
        use_basis(model, data.basis, data.x)
    model = model.to(device)
    return model, copy.deepcopy(model).eval().requires_grad_(False)


@dataclass
class Split:
    """The training points (and labels) left after the validation set, the validation set and its
    early-stopping state (None without ``train.val_every``)."""

    x: torch.Tensor
    y: torch.Tensor | None
    val: ValidationSet | None = None
    early: EarlyStopping | None = None


def setup_validation(cfg: Config, data: TrainData, device: torch.device, basis: torch.Tensor | None,
                     loss: Objective | None = None) -> Split:
    """Held-out points for ``train.val_every``: given ones, fresh population draws, or a held-out split;
    ``loss`` replaces eq. (2.3) on them (see :class:`ValidationSet`)."""
    tc, x, y = cfg.train, data.x, data.labels
    if tc.val_every <= 0:
        return Split(x, y)
    if data.val_x is not None:
        vx, vy = data.val_x, None
    elif data.sampler is not None:
        vx, vy = data.sampler(tc.val_points, torch.Generator().manual_seed(tc.seed * 1_000_039 + 43)), None
    else:
        keep, out = held_out_split(x.shape[0], tc.val_points, tc.seed)
        vx, vy = x[out], None if y is None else y[out]
        x, y = x[keep], None if y is None else y[keep]
    val = ValidationSet(vx.float().to(device), None if vy is None else vy.to(device), cfg.diffusion.T0,
                        cfg.diffusion.T, tc.seed, cfg.diffusion.weighting, basis=basis, loss=loss)
    return Split(x, y, val, EarlyStopping(tc.patience, tc.val_min_delta, tc.plateau_decays, tc.plateau_factor))


def global_batch(cfg: Config, n: int, world: int, fresh: bool) -> int:
    """``train.batch_size`` (at most the ``n`` points of a finite data set), divisible by ``world``."""
    g = cfg.train.batch_size if fresh else min(cfg.train.batch_size, n)
    if g % world:
        raise ConfigError(f"the global batch {g} (train.batch_size, at most the {n} data points) is not "
                          f"divisible by the {world} processes; choose a multiple of {world}")
    return g
