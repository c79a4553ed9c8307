"""The training loop: :class:`Trainer` (one step, the loop, checkpoints, export) and :func:`train`.

Calling :func:`train` on an existing run directory resumes from its newest checkpoint and continues
exactly: a run killed at any point (even ``kill -9`` during a checkpoint write) and resumed ends with
the same weights as one never interrupted (bitwise on CPU with a fixed thread count).
:meth:`Trainer.fit` holds the run directory's lock (:class:`latentdit.train.rundir.RunLock`).

``train.steps`` is the budget. ``train.time_limit > 0`` (off by default) stops earlier when the
wall-clock limit is reached; the run then says so on stderr and records ``steps_trained`` and
``steps_planned`` in the export metadata and in the last line of metrics.jsonl. With
``train.val_every > 0`` the EMA model's held-out loss is logged every ``val_every`` steps and the best
EMA weights are exported; ``train.patience > 0`` stops after that many evaluations without
improvement (``converged`` in the export), after ``train.plateau_decays`` LR reductions if set.
Data with a population sampler train on fresh draws (:mod:`latentdit.train.batches`,
:mod:`latentdit.train.early`).
"""

from __future__ import annotations

import copy
import importlib
import json
import math
import random
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

import latentdit.video_fit as first_stage_fit  # the first stages (a module: it imports train.checkpoint)
from latentdit.attention import attention_stats, reset_attention_stats
from latentdit.config import Config
from latentdit.diffusion import draw_noise, sample_times
from latentdit.distributed import DistContext, init_distributed, rank_device
from latentdit.errors import CheckpointError, ConfigError, DivergenceError
from latentdit.models.blocks import attention_summary
from latentdit.models.guidance import drop_labels
from latentdit.pipeline import TrainData, build_model, resolve_device, save_pretrained
from latentdit.train.batches import BatchSource, default_data, held_out_split, use_basis
from latentdit.train.checkpoint import (CKPT_FORMAT, global_rng_state, list_checkpoints, read_latest,
                                        set_global_rng_state, write_checkpoint)
from latentdit.train.early import EarlyStopping, ValidationSet
from latentdit.train.optim import ema_decay_at, ema_update, lr_lambda, make_optimizer
from latentdit.train.rundir import METRICS, RunLock, check_run_dir, fmt_time, prepare_run_dir
from latentdit.train.snapshot import SAMPLES_DIR, data_meta, evaluate_snapshot


class _Objective(torch.nn.Module):
    """The training loss as a module's forward, so that DDP can wrap it (gradient all-reduce)."""

    def __init__(self, model: torch.nn.Module, weighting: str):
        super().__init__()
        self.model, self.weighting = model, weighting

    def forward(self, x0, t, noise, y=None):
        return self.model.loss(x0, t, noise, y, weighting=self.weighting)


@dataclass
class TrainCallbacks:
    """Hooks into a run, called on every rank (tests use them to kill the process at chosen points).

    ``on_step(step)``: right after optimiser step ``step`` (1-based), before it is logged or saved.
    ``on_checkpoint_write(step, tmp)``: half-way through writing the checkpoint of ``step`` (rank 0
    only), with half of its bytes written and flushed to the temporary file ``tmp``.
    """

    on_step: Callable[[int], None] | None = None
    on_checkpoint_write: Callable[[int, Path], None] | None = None


class Trainer:
    """Holds everything a step needs, so that a checkpoint can restore it exactly.

    Under ``torchrun`` (``dist.world_size > 1``) every rank holds the whole data set and the same
    seeded streams; each step every rank draws the same global batch (indices, times, noise, label
    dropout) and trains on its contiguous slice, DDP averages the gradients, and logged losses are
    averaged over ranks. ``train.batch_size`` is the global batch and must be divisible by the
    number of processes. Only rank 0 writes files.
    """

    def __init__(self, cfg: Config, run_dir: str | Path, *, data: TrainData | None = None,
                 progress: bool | None = None, dist: DistContext | None = None,
                 callbacks: TrainCallbacks | None = None):
        self.cfg, self.run = cfg, Path(run_dir)
        self.callbacks = callbacks or TrainCallbacks()
        self.dist = dist or DistContext()
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
        self.device = rank_device(self.dist, resolve_device(tc.device))
        torch.manual_seed(tc.seed)
        np.random.seed(tc.seed % 2**32)
        random.seed(tc.seed)
        self.data = data if data is not None else default_data(cfg)
        init_gen = torch.Generator().manual_seed(tc.seed)
        self.model = build_model(cfg, self.data, generator=init_gen)
        if self.data.basis is not None:
            use_basis(self.model, self.data.basis, self.data.x)
        self.model = self.model.to(self.device)
        self.noise_basis = W = self.model.W_B if tc.noise == "latent" else None  # frozen W_B: latent draws W_B u
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.opt = make_optimizer(self.model, cfg)
        base, self.early = lr_lambda(cfg), None  # the schedule times the scale of train.plateau_decays
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: base(s) * getattr(self.early, "lr_scale", 1))
        # one stream for times, noise and label dropout: the same on every rank (see the class docstring)
        self.gen = torch.Generator(device=self.device).manual_seed(tc.seed + 17)
        x, y, sampler = self.data.x, self.data.labels, self.data.sampler
        if (min(tc.val_every, tc.patience, tc.val_points - 1, tc.plateau_decays) < 0 or not 0 <= tc.val_min_delta < 1
                or not 0 < tc.plateau_factor < 1):
            raise ConfigError(f"train.val_every={tc.val_every}, train.patience={tc.patience} and train.plateau_decays="
                              f"{tc.plateau_decays} must be >= 0, train.val_points={tc.val_points} >= 1, "
                              f"train.val_min_delta={tc.val_min_delta} in [0, 1), train.plateau_factor="
                              f"{tc.plateau_factor} in (0, 1)")
        self.val = self.early = None
        if tc.val_every > 0:  # given held-out points, fresh population draws, or a held-out split
            if self.data.val_x is not None:
                vx, vy = self.data.val_x, None
            elif sampler is not None:
                vx, vy = sampler(tc.val_points, torch.Generator().manual_seed(tc.seed * 1_000_039 + 43)), None
            else:
                keep, out = held_out_split(x.shape[0], tc.val_points, tc.seed)
                vx, vy = x[out], None if y is None else y[out]
                x, y = x[keep], None if y is None else y[keep]
            self.val = ValidationSet(vx.float().to(self.device), None if vy is None else vy.to(self.device),
                                     cfg.diffusion.T0, cfg.diffusion.T, tc.seed, cfg.diffusion.weighting, basis=W)
            self.early = EarlyStopping(tc.patience, tc.val_min_delta, tc.plateau_decays, tc.plateau_factor)
        n, world = x.shape[0], self.dist.world_size
        self.global_batch = tc.batch_size if sampler is not None else min(tc.batch_size, n)
        if self.global_batch % world:
            raise ConfigError(f"the global batch {self.global_batch} (train.batch_size, at most the {n} data "
                              f"points) is not divisible by the {world} processes; choose a multiple of {world}")
        self.local_batch = self.global_batch // world
        self.step = 0
        self.x = x.to(self.device)
        self.y = y.to(self.device) if y is not None else None
        self.batches = BatchSource(self.x, self.y, self.global_batch, tc.seed, sampler)
        if tc.compile:
            self.model.backbone.compile()  # in place: parameter names (and checkpoints) unchanged
        self.objective: torch.nn.Module = _Objective(self.model, cfg.diffusion.weighting)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.objective = DistributedDataParallel(
                self.objective, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.progress = (sys.stderr.isatty() if progress is None else progress) and self.dist.is_main
        self._saved_step = -1
        self._tb = None

    # -------------------------------------------------------------- state

    def state_dict(self) -> dict:
        return {
            "format": CKPT_FORMAT, "config": self.cfg.to_dict(), "step": self.step,
            "model": self.model.state_dict(), "ema": self.ema.state_dict(), "opt": self.opt.state_dict(),
            "sched": self.sched.state_dict(), "order": self.batches.state(), "world_size": self.dist.world_size,
            "rng": {"gen": self.gen.get_state(), **global_rng_state()},
            "early": None if self.early is None else self.early.state_dict(),
        }

    def load_state_dict(self, s: dict) -> None:
        saved = Config.from_saved(s["config"])
        if saved.model.num_classes == self.model.num_classes:
            # checkpoints written before build_model stopped editing the config carry the resolved
            # class count in [model]; it is the same network
            saved.model = replace(saved.model, num_classes=self.cfg.model.num_classes)
        for section in ("data", "encoder", "model", "diffusion"):
            if getattr(saved, section) != getattr(self.cfg, section):
                raise CheckpointError(f"the checkpoints in {str(self.run)!r} were trained with a different "
                                      f"[{section}] config; use a new --out directory or the run's own config "
                                      "(omit --config to resume as it was)")
        try:
            self.model.load_state_dict(s["model"])
            self.ema.load_state_dict(s["ema"])
            self.opt.load_state_dict(s["opt"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"checkpoint in {str(self.run)!r} does not fit this model "
                                  f"({str(e).splitlines()[0]}); use a new --out directory") from e
        self.sched.load_state_dict(s["sched"])
        self.gen.set_state(s["rng"]["gen"])
        set_global_rng_state(s["rng"])
        try:
            self.batches.load_state(s["order"])
        except ValueError as e:
            raise CheckpointError(f"checkpoint in {str(self.run)!r}: {e}; use a new --out directory") from e
        if self.early is not None and s.get("early") is not None:
            self.early.load_state_dict(s["early"])
        self.step = s["step"]
        self._saved_step = self.step

    def read_latest(self) -> tuple[dict | None, Path | None, list[tuple[Path, str]]]:
        """(state, its path, unreadable newer checkpoints): see :func:`latentdit.train.checkpoint.read_latest`."""
        return read_latest(self.run)

    def save_checkpoint(self) -> Path:
        hook, step = self.callbacks.on_checkpoint_write, self.step
        path = write_checkpoint(self.run, step, self.state_dict(), keep=self.cfg.train.keep_checkpoints,
                                midway=None if hook is None else lambda tmp: hook(step, tmp))
        self._saved_step = step
        return path

    # -------------------------------------------------------------- training

    def train_step(self) -> float:
        """One optimiser step on the global batch; returns the loss averaged over all ranks."""
        cfg, G = self.cfg, self.global_batch
        x0, y = self.batches.next()  # (G, D) the same on every rank
        t = sample_times(G, cfg.diffusion.T0, cfg.diffusion.T, generator=self.gen, device=self.device)
        noise = draw_noise(G, self.x.shape[1], generator=self.gen, device=self.device, basis=self.noise_basis)
        drop = None
        if self.y is not None:
            drop = torch.rand(G, generator=self.gen, device=self.device) < cfg.model.class_dropout
        lo = self.dist.rank * self.local_batch
        mine = slice(lo, lo + self.local_batch)  # this rank's shard of the global batch
        x0, t, noise = x0[mine], t[mine], noise[mine]
        if y is not None:
            y = drop_labels(y[mine], drop[mine], self.model.num_classes)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.train.amp and self.device.type == "cuda"):
            loss = self.objective(x0, t, noise, y)
        value = float(self.dist.mean(loss.detach().float()))
        if not math.isfinite(value):
            self._diverged("loss", value)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
        norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip))
        if not math.isfinite(norm):
            self._diverged("gradient norm", norm)
        self.opt.step()
        self.sched.step()
        ema_update(self.ema, self.model, ema_decay_at(cfg, self.step))
        self.step += 1
        return value

    def _diverged(self, what: str, value: float) -> None:
        ckpts = list_checkpoints(self.run)
        kept = f"the last good checkpoint {str(ckpts[-1])!r} is kept" if ckpts else "no checkpoint was written yet"
        raise DivergenceError(f"{what} became {value} at step {self.step + 1} (weights not updated); {kept}; "
                              "lower optim.lr or set optim.grad_clip > 0 and resume with "
                              f"`latentdit train --out {self.run} --set optim.lr=...`")

    def fit(self) -> Path:
        """Train to ``train.steps``, resuming from the newest checkpoint; export; return the run directory.

        Checks and reads first (errors leave the run directory untouched), then holds the run
        directory's lock (rank 0) for the rest: a run directory in use is a :class:`ConfigError`.
        """
        state, ckpt, bad = self.read_latest()
        if state is not None:
            self.load_state_dict(state)
        lock, refused = RunLock(self.run), None
        if self.dist.is_main:
            try:
                lock.acquire()
            except ConfigError as e:
                refused = e
        try:  # ``any`` is a collective: every rank stops when rank 0 could not lock
            if self.dist.any(refused is not None, self.device):
                raise refused or ConfigError(f"--out {str(self.run)!r} is in use by another training run")
            return self._fit(state, ckpt, bad)
        finally:
            lock.release()

    def _fit(self, state: dict | None, ckpt: Path | None, bad: list[tuple[Path, str]]) -> Path:
        cfg, tc, main = self.cfg, self.cfg.train, self.dist.is_main
        if main:
            prepare_run_dir(self.run, cfg.to_dict(), self.step, ckpt, bad)
        self.dist.barrier()
        if main and tc.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run / "tensorboard"), purge_step=self.step + 1)
        log = open(self.run / METRICS, "a") if main else None
        reset_attention_stats()  # the counts logged below are this run's
        t_start, last_t, last_step, losses = time.time(), time.time(), self.step, []
        bar = tqdm(total=tc.steps, initial=self.step, desc="train", dynamic_ncols=True, disable=not self.progress)
        if state is not None and main and not self.progress:
            print(f"resumed from step {self.step} ({ckpt.name})", file=sys.stderr)
        if main and tc.time_limit > 0:
            print(f"train.time_limit={tc.time_limit:g}s: training stops at that limit even before "
                  f"train.steps={tc.steps}", file=sys.stderr)
        timed_out = False
        try:
            while self.step < tc.steps and not (self.early is not None and self.early.stopped):
                loss = self.train_step()
                if self.callbacks.on_step is not None:
                    self.callbacks.on_step(self.step)
                losses.append(loss)
                bar.update(1)
                if self.step % tc.log_every == 0 or self.step == tc.steps:
                    now = time.time()
                    rate = (self.step - last_step) / max(now - last_t, 1e-9)
                    eta = (tc.steps - self.step) / max(rate, 1e-9)
                    rec = {"step": self.step, "loss": sum(losses) / len(losses),
                           "lr": self.sched.get_last_lr()[0], "steps_per_s": rate, "eta_s": eta,
                           "time": now - t_start, **_attention_counts()}
                    if main:
                        self._log(log, rec)
                    bar.set_postfix(loss=f"{rec['loss']:.4f}", steps_s=f"{rate:.1f}")
                    if main and not self.progress:
                        print(f"step {self.step}/{tc.steps} loss {rec['loss']:.4f} {rate:.1f} steps/s "
                              f"eta {fmt_time(eta)}", file=sys.stderr)
                    losses, last_t, last_step = [], now, self.step
                if self.val is not None and self.step % tc.val_every == 0:
                    rec = self.early.update(self.step, self.val.loss(self.ema), self.ema)
                    if main:
                        self._log(log, {"step": self.step, **rec})
                    last_t = time.time()  # the validation before the checkpoint that holds its result
                if main and tc.checkpoint_every > 0 and self.step % tc.checkpoint_every == 0:
                    self.save_checkpoint()
                if main and tc.eval_every > 0 and self.step % tc.eval_every == 0:
                    self._log(log, {"step": self.step, **self.evaluate_snapshot()})
                    last_t = time.time()  # steps/s counts training only
                if tc.time_limit > 0 and self.dist.any(time.time() - t_start > tc.time_limit, self.device):
                    timed_out = True
                    break
            if main:
                self._log(log, {"step": self.step, **self._budget(), "train_seconds": time.time() - t_start})
        finally:
            bar.close()
            if log is not None:
                log.close()
            if self._tb is not None:
                self._tb.close()
        if main:
            if self._saved_step != self.step:
                self.save_checkpoint()
            if self.early is not None:  # the export holds the best EMA weights on the held-out loss
                self.early.restore(self.ema)
            attn = attention_summary(self.ema.backbone, batch=self.local_batch)
            save_pretrained(self.ema, cfg, self.run / "model", extra={"step": self.step, **self._budget(),
                                                                      "train_seconds": time.time() - t_start,
                                                                      "attention": attn, **self._data_meta()},
                            first_stage=self.data.first_stage)
            if attn["planned"] != {"exact": len(attn["layers"])}:  # say what ran when it is not plain SDPA
                print(f"attention: {attn['planned']} layers; calls {_attention_counts()}; fallbacks "
                      f"{attn['fallback_reasons'] or 'none'}", file=sys.stderr)
            if timed_out:
                print(f"warning: train.time_limit={tc.time_limit:g}s reached after step {self.step} of "
                      f"{tc.steps}: the export holds {self.step} trained steps, not {tc.steps}; "
                      f"`latentdit train --out {self.run}` trains the rest", file=sys.stderr)
        self.dist.barrier()
        return self.run

    def _budget(self) -> dict:
        """Steps trained against those planned (fewer after ``train.time_limit`` or early stopping)."""
        val = {} if self.early is None else self.early.summary()
        return {"steps_trained": self.step, "steps_planned": self.cfg.train.steps, **val}

    def _log(self, log, rec: dict) -> None:
        log.write(json.dumps(rec) + "\n")
        log.flush()
        if self._tb is not None:
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k.replace("eval_", "eval/"), v, rec["step"])

    def evaluate_snapshot(self, num: int = 64) -> dict:
        """See :func:`latentdit.train.snapshot.evaluate_snapshot` (never changes the training trajectory)."""
        return evaluate_snapshot(self.ema, self.cfg, self.data, self.run, self.step, num)

    def _data_meta(self) -> dict:
        return data_meta(self.data)


def _attention_counts() -> dict:
    st = attention_stats()
    return {"attention_poly": st.poly, "attention_exact": st.exact, "attention_fallbacks": sum(st.fallback_reasons.values())}


def train(cfg: Config, run_dir: str | Path, *, progress: bool | None = None, data: TrainData | None = None,
          callbacks: TrainCallbacks | None = None) -> Path:
    """Train (or resume) a run in ``run_dir``; returns the run directory.

    Holds ``run_dir``'s lock while training (see :meth:`Trainer.fit`): a second run on the same
    directory is refused with a :class:`ConfigError`. Under ``torchrun`` this joins the process group
    (gloo on CPU, NCCL on CUDA) and trains data-parallel; only rank 0 takes the lock.
    ``callbacks``: see :class:`TrainCallbacks`.
    """
    run = Path(run_dir)
    ctx = init_distributed(cfg.train.device)
    try:
        check_run_dir(run)  # every rank checks before any rank writes (the group init is a barrier)
        data = first_stage_fit.prepare_first_stage(cfg, run, data, progress=progress, world_size=ctx.world_size)
        return Trainer(cfg, run, progress=progress, dist=ctx, data=data, callbacks=callbacks).fit()
    finally:
        ctx.shutdown()
