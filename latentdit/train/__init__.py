"""Training: denoising score matching with AdamW, warmup + cosine LR, gradient clipping and EMA."""

from latentdit.train.loop import *  # noqa: F401,F403
from latentdit.train.loop import (CKPT_DIR, CKPT_FORMAT, KILL_ENV, SAMPLES_DIR, DataOrder, Trainer,  # noqa: F401
                                  check_run_dir, ema_decay_at, ema_update, global_rng_state, list_checkpoints,
                                  lr_lambda, make_optimizer, param_groups, set_global_rng_state, train)
