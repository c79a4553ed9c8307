"""The training loop: :class:`Trainer` (one step, the loop, checkpoints, export) and :func:`train`.

Calling :func:`train` on an existing run directory resumes from its newest checkpoint and continues
exactly: a run killed at any point (even ``kill -9`` during a checkpoint write) and resumed ends with
the same weights as one never interrupted (bitwise on CPU with a fixed thread count).
:meth:`Trainer.fit` holds the run directory's lock (:class:`latentdit.train.rundir.RunLock`).

``train.steps`` is the budget. ``train.time_limit > 0`` (off by default) stops earlier when the
run's training seconds reach it, summed over resumed segments (:class:`TrainClock`); the run then
says so on stderr and records ``steps_trained`` and ``steps_planned`` in the export metadata and in
the last line of metrics.jsonl. With
``train.val_every > 0`` the EMA model's held-out loss is logged every ``val_every`` steps and the best
EMA weights are exported; ``train.patience > 0`` stops after that many evaluations without
improvement (``converged`` in the export), after ``train.plateau_decays`` LR reductions if set.
Data with a population sampler train on fresh draws (:mod:`latentdit.train.batches`,
:mod:`latentdit.train.early`).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from latentdit.attention import attention_stats, reset_attention_stats
from latentdit.build import TrainData, make_pipeline
from latentdit.config import Config
from latentdit.diffusion import DSMLoss, Objective, draw_noise
from latentdit.distributed import DistContext, init_distributed
from latentdit.errors import CheckpointError, ConfigError, DivergenceError
from latentdit.models.blocks import attention_summary
from latentdit.models.guidance import drop_labels
from latentdit.train.batches import BatchSource, default_data, window_batch
from latentdit.train.checkpoint import (CKPT_FORMAT, TrainClock, global_rng_state, list_checkpoints, read_latest,
                                        set_global_rng_state, write_checkpoint)
from latentdit.train.optim import ema_decay_at, ema_update, lr_lambda, make_optimizer
from latentdit.progress import progress_bar
from latentdit.train.rundir import METRICS, RunLock, check_run_dir, prepare_run_dir
from latentdit.train.setup import global_batch, setup_model, setup_process, setup_validation
from latentdit.train.snapshot import SAMPLES_DIR, Evaluator, evaluate_snapshot


@dataclass
class TrainCallbacks:
    """Hooks into a run, called on every rank (tests use them to kill the process at chosen points).

    ``on_step(step)``: right after optimiser step ``step`` (1-based), before it is logged or saved.
    ``on_checkpoint_write(step, tmp)``: half-way through writing the checkpoint of ``step`` (rank 0
    only), with half of its bytes written and flushed to the temporary file ``tmp``.
    ``evaluate(pipe)``: the metrics logged every ``train.eval_every`` steps beside a sample snapshot.
    """

    on_step: Callable[[int], None] | None = None
    on_checkpoint_write: Callable[[int, Path], None] | None = None
    # the metrics of periodic evaluation (train.eval_every): a function of the EMA pipeline, given
    # by the entry point (ground-truth runs: latentdit.evaluation.snapshot_metrics)
    evaluate: Evaluator | None = None


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
                 callbacks: TrainCallbacks | None = None, loss: Objective | None = None):
        self.cfg, self.run = cfg, Path(run_dir)
        self.callbacks = callbacks or TrainCallbacks()
        self.dist = dist or DistContext()
        tc = cfg.train
        self.device = setup_process(cfg, self.dist)
        if cfg.encoder.kind == "autoencoder" and (data is None or data.first_stage is None):
            raise ConfigError("encoder.kind='autoencoder' trains on the first stage's latent: pass the data of "
                              "latentdit.train.firststage.prepare_first_stage(cfg, run) (as `latentdit train` does)")
        self.data = data if data is not None else default_data(cfg)
        self.model, self.ema = setup_model(cfg, self.data, self.device)
        self.noise_basis = W = self.model.W_B if tc.noise == "latent" else None  # frozen W_B: latent draws W_B u
        self.opt = make_optimizer(self.model, cfg)
        base, self.early = lr_lambda(cfg), None  # the schedule times the scale of train.plateau_decays
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: base(s) * getattr(self.early, "lr_scale", 1))
        # one stream for times, noise and label dropout: the same on every rank (see the class docstring)
        self.gen = torch.Generator(device=self.device).manual_seed(tc.seed + 17)
        split = setup_validation(cfg, self.data, self.device, W, loss)
        self.val, self.early = split.val, split.early
        sampler = self.data.sampler
        self.global_batch = global_batch(cfg, split.x.shape[0], self.dist.world_size, sampler is not None)
        self.local_batch = self.global_batch // self.dist.world_size
        self.step = 0
        self.x = split.x.to(self.device)
        self.y = split.y.to(self.device) if split.y is not None else None
        self.batches = BatchSource(self.x, self.y, self.global_batch, tc.seed, sampler)
        # (draws, width, stride) of a window step (train.window_frames), in latent coordinates: the clip
        # latent is frame-major, one frame block of model.patch_t frames every `stride` coordinates
        F, D = cfg.data.frames, self.x.shape[1]
        self.window = ((F // tc.window_frames, D * tc.window_frames // F, D * cfg.model.patch_t // F)
                       if tc.window_frames else None)
        if tc.compile:
            self.model.backbone.compile()  # in place: parameter names (and checkpoints) unchanged
        # eq. (2.3) unless the caller replaces it (e.g. Thm 3.1's regression on f*)
        self.loss_fn = loss if loss is not None else DSMLoss(cfg.diffusion.weighting, cfg.diffusion.T0, cfg.diffusion.T,
                                                             cfg.diffusion.times)
        self.net: torch.nn.Module = self.model  # what the loss calls: DDP wraps the network
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.progress = (sys.stderr.isatty() if progress is None else progress) and self.dist.is_main
        self._saved_step, self._tb, self.clock = -1, None, TrainClock()

    # -------------------------------------------------------------- state

    def state_dict(self) -> dict:
        return {
            "format": CKPT_FORMAT, "config": self.cfg.to_dict(), "step": self.step,
            "model": self.model.state_dict(), "ema": self.ema.state_dict(), "opt": self.opt.state_dict(),
            "sched": self.sched.state_dict(), "order": self.batches.state(), "world_size": self.dist.world_size,
            "rng": {"gen": self.gen.get_state(), **global_rng_state()},
            "early": None if self.early is None else self.early.state_dict(), "clock": self.clock.state(),
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
        self._saved_step, self.clock = self.step, TrainClock.resumed(s.get("clock"))

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
        cfg = self.cfg
        x0, y = self._batch()  # (G, D) the same on every rank; windows: (draws G, width)
        G, local = x0.shape[0], x0.shape[0] // self.dist.world_size
        t = self.loss_fn.times(G, generator=self.gen, device=self.device)
        noise = draw_noise(G, x0.shape[1], generator=self.gen, device=self.device, basis=self.noise_basis)
        drop = None
        if self.y is not None:
            drop = torch.rand(G, generator=self.gen, device=self.device) < cfg.model.class_dropout
        lo = self.dist.rank * local
        mine = slice(lo, lo + local)  # this rank's shard of the global batch
        x0, t, noise = x0[mine], t[mine], noise[mine]
        if y is not None:
            y = drop_labels(y[mine], drop[mine], self.model.num_classes)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.train.amp and self.device.type == "cuda"):
            loss = self.loss_fn(self.net, x0, t, noise, y)
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

    def in_window_phase(self) -> bool:
        """Whether the next step trains on windows of clips (``train.window_frames``)."""
        return self.window is not None and self.step < self.cfg.train.window_steps

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The global batch of the next step: whole clips, or windows; a window step's offsets are seeded
        by (train.seed, step), so a resumed run draws the same windows."""
        if not self.in_window_phase():
            return self.batches.next()
        gen = torch.Generator().manual_seed(self.cfg.train.seed * 1_000_003 + self.step)
        return window_batch(self.batches, *self.window, generator=gen)

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
        bar = progress_bar(total=tc.steps, initial=self.step, desc="train", unit="step", enabled=main, plain=not self.progress)
        if state is not None and main and not self.progress:
            print(f"resumed from step {self.step} ({ckpt.name})", file=sys.stderr)
        if main and tc.time_limit > 0:
            print(f"train.time_limit={tc.time_limit:g}s: training stops at that limit even before "
                  f"train.steps={tc.steps}", file=sys.stderr)
        t_start = self.clock.start()
        try:
            timed_out = self._loop(log, bar, t_start)
            if main:
                self._log(log, {"step": self.step, **self._budget(), **self.clock.state()})
        finally:
            bar.close()
            if log is not None:
                log.close()
            if self._tb is not None:
                self._tb.close()
        if main:
            self._finish(timed_out)
        self.dist.barrier()
        return self.run

    def _loop(self, log, bar, t_start: float) -> bool:
        """The steps to ``train.steps`` (or early stopping); True when ``train.time_limit`` stopped them."""
        tc, main = self.cfg.train, self.dist.is_main
        meter = _Meter(self.step, t_start, self.clock)
        while self.step < tc.steps and not (self.early is not None and self.early.stopped):
            window = self.in_window_phase()
            loss = self.train_step()
            if self.callbacks.on_step is not None:
                self.callbacks.on_step(self.step)
            meter.losses.append(loss)
            bar.update(1)
            if self.step % tc.log_every == 0 or self.step == tc.steps:
                rec = meter.record(self.step, tc.steps, self.sched.get_last_lr()[0])
                if window:
                    rec["window_frames"] = tc.window_frames
                if main:
                    self._log(log, rec)
                bar.set_postfix(loss=f"{rec['loss']:.4f}", steps_s=f"{rec['steps_per_s']:.1f}")
            if self.val is not None and self.step % tc.val_every == 0:
                rec = self.early.update(self.step, self.val.loss(self.ema), self.ema)
                if main:
                    self._log(log, {"step": self.step, **rec})
                meter.last_t = time.time()  # the validation before the checkpoint that holds its result
            if main and tc.checkpoint_every > 0 and self.step % tc.checkpoint_every == 0:
                self.save_checkpoint()
            if main and tc.eval_every > 0 and self.step % tc.eval_every == 0:
                self._log(log, {"step": self.step, **self.evaluate_snapshot()})
                meter.last_t = time.time()  # steps/s counts training only
            if tc.time_limit > 0 and self.dist.any(self.clock.limit_reached(tc.time_limit), self.device):
                return True
        return False

    def _finish(self, timed_out: bool) -> None:
        """Rank 0 after the last step: the final checkpoint and the export of the (best) EMA pipeline."""
        tc = self.cfg.train
        if self._saved_step != self.step:
            self.save_checkpoint()
        if self.early is not None:  # the export holds the best EMA weights on the held-out loss
            self.early.restore(self.ema)
        attn = attention_summary(self.ema.backbone, batch=self.local_batch)
        training = {"config": self.cfg.to_dict(), "step": self.step, **self._budget(),
                    **self.clock.state(), "attention": attn}
        make_pipeline(self.ema, self.cfg, self.data).save_pretrained(self.run / "model", training=training)
        if attn["planned"] != {"exact": len(attn["layers"])}:  # say what ran when it is not plain SDPA
            print(f"attention: {attn['planned']} layers; calls {_attention_counts()}; fallbacks "
                  f"{attn['fallback_reasons'] or 'none'}", file=sys.stderr)
        if timed_out:
            print(f"warning: train.time_limit={tc.time_limit:g}s reached after step {self.step} of "
                  f"{tc.steps}: the export holds {self.step} trained steps, not {tc.steps}; "
                  f"`latentdit train --out {self.run}` trains the rest", file=sys.stderr)

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
        ec = self.cfg.eval
        return evaluate_snapshot(make_pipeline(self.ema, self.cfg, self.data), self.callbacks.evaluate, self.run,
                                 self.step, sampler=ec.sampler, steps=ec.steps, seed=ec.seed,
                                 loaded=self.data.loaded, num=num)


@dataclass
class _Meter:
    """Losses since the last log line and the time and step it was written at; ``time`` in a line
    is the run's training seconds (:meth:`TrainClock.seconds`)."""

    last_step: int
    last_t: float
    clock: TrainClock

    def __post_init__(self):
        self.losses = []

    def record(self, step: int, total: int, lr: float) -> dict:
        now = time.time()
        rate = (step - self.last_step) / max(now - self.last_t, 1e-9)
        rec = {"step": step, "loss": sum(self.losses) / len(self.losses), "lr": lr, "steps_per_s": rate,
               "eta_s": (total - step) / max(rate, 1e-9), "time": self.clock.seconds(), **_attention_counts()}
        self.losses, self.last_t, self.last_step = [], now, step
        return rec


def _attention_counts() -> dict:
    st = attention_stats()
    return {"attention_poly": st.poly, "attention_exact": st.exact, "attention_fallbacks": sum(st.fallback_reasons.values())}


def train(cfg: Config, run_dir: str | Path, *, progress: bool | None = None, data: TrainData | None = None,
          callbacks: TrainCallbacks | None = None, loss: Objective | None = None) -> Path:
    """Train (or resume) a run in ``run_dir``; returns the run directory.

    Holds ``run_dir``'s lock while training (see :meth:`Trainer.fit`): a second run on the same
    directory is refused with a :class:`ConfigError`. Under ``torchrun`` this joins the process group
    (gloo on CPU, NCCL on CUDA) and trains data-parallel; only rank 0 takes the lock.
    ``data``: the training data (built from ``cfg`` when None; with ``encoder.kind = "autoencoder"``
    those of :func:`latentdit.train.firststage.prepare_first_stage`). ``callbacks``: see
    :class:`TrainCallbacks`. ``loss``: an objective with :class:`latentdit.diffusion.DSMLoss`'s calls
    that replaces eq. (2.3) in training and validation (pass it again on resume).
    """
    run = Path(run_dir)
    ctx = init_distributed(cfg.train.device)
    try:
        check_run_dir(run)  # every rank checks before any rank writes (the group init is a barrier)
        return Trainer(cfg, run, progress=progress, dist=ctx, data=data, callbacks=callbacks, loss=loss).fit()
    finally:
        ctx.shutdown()
