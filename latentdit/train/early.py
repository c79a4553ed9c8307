"""The held-out population loss and early stopping on it.

:class:`ValidationSet` holds a FIXED set of (x0, t, noise): x0 fresh from the population when the
data carry a sampler (never a training point), otherwise a held-out split of the data; t ~ U[T0, T]
and the noise drawn once from their own seeded generator. Its loss is the training objective
(eq. 2.3 with the run's weighting, or the objective that replaces it) of the EMA model on that set, so that values at different steps,
and of different runs with the same seed, are comparable: J(n) - J(inf) on the same (x0, t, z) is
an excess risk. :class:`EarlyStopping` keeps the best EMA weights and stops after ``patience``
evaluations without improvement.
"""

from __future__ import annotations

import copy
import math

import torch

from latentdit.diffusion import DSMLoss, Objective, draw_noise, sample_times


class ValidationSet:
    """Fixed (x0, t, noise[, labels]) on which :meth:`loss` evaluates a model (no gradients).

    ``loss``: the run's objective when it replaces eq. (2.3) (the Trainer's ``loss``); the times
    are t ~ U[T0, T] either way."""

    def __init__(self, x0: torch.Tensor, y: torch.Tensor | None, T0: float, T: float, seed: int,
                 weighting: str, chunk: int = 2048, basis: torch.Tensor | None = None,
                 loss: Objective | None = None):
        g = torch.Generator().manual_seed(seed * 1_000_037 + 41)
        n = x0.shape[0]
        self.x0, self.y, self.chunk = x0, y, chunk
        self.objective = loss if loss is not None else DSMLoss(weighting, T0, T)
        self.t = sample_times(n, T0, T, generator=g).to(x0.device)
        # train.noise = latent: the latent part W_B u only (see draw_noise), as in training
        self.noise = draw_noise(n, x0.shape[1], generator=g, basis=basis).to(device=x0.device, dtype=x0.dtype)

    @torch.no_grad()
    def loss(self, model: torch.nn.Module) -> float:
        total, n = 0.0, self.x0.shape[0]
        for lo in range(0, n, self.chunk):
            s = slice(lo, min(n, lo + self.chunk))
            y = None if self.y is None else self.y[s]
            part = self.objective(model, self.x0[s], self.t[s], self.noise[s], y)
            total += float(part) * (s.stop - s.start)
        return total / n


class EarlyStopping:
    """Best validation loss so far, its step and EMA weights; ``stopped`` after ``patience`` misses.

    A miss is an evaluation not below ``ref * (1 - min_delta)``, ``ref`` the value of the last
    evaluation that was not a miss (``min_delta = 0``: any improvement counts); the best weights are
    those of the lowest value whatever ``min_delta``. ``patience = 0`` never stops. With ``decays``,
    the first ``decays`` plateaus multiply ``lr_scale`` by ``factor`` and reset the count instead of
    stopping (a reduce-on-plateau schedule: the run ends at a small learning rate, so that its
    result depends less on where the optimiser's noise left it). Everything is in
    :meth:`state_dict`, so a resumed run stops where an uninterrupted one does.
    """

    def __init__(self, patience: int, min_delta: float = 0.0, decays: int = 0, factor: float = 0.3):
        self.patience, self.min_delta, self.decays, self.factor = patience, min_delta, decays, factor
        self.best, self.best_step, self.bad, self.stopped, self.best_ema = math.inf, -1, 0, False, None
        self.ref, self.lr_scale, self.decays_done = math.inf, 1.0, 0

    def update(self, step: int, value: float, ema: torch.nn.Module) -> dict:
        if value < self.best:
            self.best, self.best_step = value, step
            self.best_ema = {k: v.detach().clone() for k, v in ema.state_dict().items()}
        if value < self.ref * (1 - self.min_delta) or not math.isfinite(self.ref):
            self.ref, self.bad = value, 0
        else:
            self.bad += 1
            if self.patience > 0 and self.bad >= self.patience:
                if self.decays_done < self.decays:
                    self.decays_done, self.lr_scale, self.bad = self.decays_done + 1, self.lr_scale * self.factor, 0
                else:
                    self.stopped = True
        return {"val_loss": value, "best_val_loss": self.best, "best_val_step": self.best_step,
                **({"lr_scale": self.lr_scale} if self.decays else {})}

    def restore(self, ema: torch.nn.Module) -> None:
        """Load the best EMA weights into ``ema`` (no-op before the first evaluation)."""
        if self.best_ema is not None:
            ema.load_state_dict(self.best_ema)

    def state_dict(self) -> dict:
        return {"best": self.best, "best_step": self.best_step, "bad": self.bad, "stopped": self.stopped,
                "best_ema": self.best_ema, "ref": self.ref, "lr_scale": self.lr_scale, "decays_done": self.decays_done}

    def load_state_dict(self, s: dict) -> None:
        self.best, self.best_step, self.bad, self.stopped = s["best"], s["best_step"], s["bad"], s["stopped"]
        self.best_ema, self.ref = copy.copy(s["best_ema"]), s.get("ref", self.best)
        self.lr_scale, self.decays_done = s.get("lr_scale", 1.0), s.get("decays_done", 0)

    def summary(self) -> dict:
        """What the export and the last metrics line record about validation."""
        return {"best_val_loss": self.best if math.isfinite(self.best) else None, "best_val_step": self.best_step,
                "converged": self.stopped, **({"lr_decays": self.decays_done} if self.decays else {})}
