"""Training: denoising score matching with AdamW, warmup + cosine LR, gradient clipping and EMA.

``optim`` (AdamW, LR schedule, EMA), ``checkpoint`` (atomic files, resume state, RNG state),
``rundir`` (the run directory: check, preparation on resume, lock), ``batches`` (a finite data set
in seeded epochs or fresh draws from a population sampler), ``early`` (the held-out loss and early
stopping), ``setup`` (process, model, validation set), ``snapshot`` (periodic evaluation), ``loop``
(:class:`Trainer`, :func:`train`) and ``firststage`` (the autoencoder first stage, trained before
the DiT by the entry points). Only rank 0 writes into the run directory.

The package is callable: ``latentdit.train(cfg, run)`` is :func:`latentdit.train.loop.train`, so
that ``from latentdit import train`` gives the training function whether or not this package was
imported before.
"""

import sys
import types

from latentdit.train.checkpoint import (CKPT_DIR, CKPT_FORMAT, DataOrder, global_rng_state, list_checkpoints,
                                        read_latest, set_global_rng_state, write_checkpoint)
from latentdit.train.firststage import prepare_first_stage
from latentdit.train.loop import SAMPLES_DIR, TrainCallbacks, Trainer, train
from latentdit.train.optim import ema_decay_at, ema_update, lr_lambda, make_optimizer, param_groups
from latentdit.train.rundir import RunLock, check_run_dir

__all__ = ["CKPT_DIR", "CKPT_FORMAT", "SAMPLES_DIR", "DataOrder", "RunLock", "TrainCallbacks", "Trainer",
           "check_run_dir", "ema_decay_at", "ema_update", "global_rng_state", "list_checkpoints", "lr_lambda",
           "make_optimizer", "param_groups", "prepare_first_stage", "read_latest", "set_global_rng_state", "train",
           "write_checkpoint"]


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
