"""Training: denoising score matching with AdamW, warmup + cosine LR, gradient clipping and EMA.

A run directory is self-describing:

    RUN/config.json          resolved configuration (the source of truth)
    RUN/metrics.jsonl        one JSON line per log step (step, loss, lr, steps/s) and per evaluation
    RUN/checkpoints/         training state (model, EMA, optimiser, schedule, step, RNG, data order)
    RUN/model/               export: config.json + model.safetensors (EMA weights)

Calling :func:`train` on an existing run directory resumes from its newest checkpoint.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from latentdit.config import Config
from latentdit.diffusion import sample_times
from latentdit.errors import CheckpointError, ConfigError
from latentdit.pipeline import TrainData, build_data, build_model, resolve_device, save_pretrained

CKPT_DIR = "checkpoints"


def lr_lambda(cfg: Config):
    """Linear warmup to the base LR, then cosine decay to ``min_lr_ratio`` over ``train.steps``."""
    o, steps = cfg.optim, cfg.train.steps

    def f(step: int) -> float:
        if o.warmup_steps > 0 and step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.schedule == "constant":
            return 1.0
        p = min(1.0, (step - o.warmup_steps) / max(1, steps - o.warmup_steps))
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p))

    return f


@torch.no_grad()
def param_groups(model: torch.nn.Module, cfg: Config) -> list[dict]:
    """The network's parameters at optim.lr and a learned encoder's at optim.lr * encoder.lr_scale."""
    enc = [p for n, p in model.named_parameters() if n.startswith("encoder.") and p.requires_grad]
    rest = [p for n, p in model.named_parameters() if not n.startswith("encoder.") and p.requires_grad]
    groups = [{"params": rest}]
    if enc:
        groups.append({"params": enc, "lr": cfg.optim.lr * cfg.encoder.lr_scale})
    return groups


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm.detach(), 1 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


def ema_decay_at(cfg: Config, step: int) -> float:
    d = cfg.train.ema_decay
    return min(d, (1 + step) / (10 + step)) if cfg.train.ema_warmup else d


class DataOrder:
    """Epoch-wise random permutations from (seed, epoch): resumable from (epoch, position) alone."""

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int = 0, pos: int = 0):
        self.n, self.bs, self.seed, self.epoch, self.pos = n, batch_size, seed, epoch, pos
        self._perm = self._make(epoch)

    def _make(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))

    def next(self) -> torch.Tensor:
        if self.pos + self.bs > self.n:  # drop the ragged tail, start a new epoch
            self.epoch, self.pos = self.epoch + 1, 0
            self._perm = self._make(self.epoch)
        idx = self._perm[self.pos:self.pos + self.bs]
        self.pos += self.bs
        return idx

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}


def _atomic_save(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def list_checkpoints(run: Path) -> list[Path]:
    d = Path(run) / CKPT_DIR
    return sorted(d.glob("step_*.pt"), key=lambda p: int(p.stem.split("_")[1])) if d.is_dir() else []


class Trainer:
    """Holds everything a step needs, so that a checkpoint can restore it exactly."""

    def __init__(self, cfg: Config, run_dir: str | Path, *, data: TrainData | None = None,
                 progress: bool | None = None):
        self.cfg, self.run = cfg, Path(run_dir)
        tc = cfg.train
        if tc.threads > 0:
            torch.set_num_threads(tc.threads)
        if tc.deterministic:
            torch.use_deterministic_algorithms(True)
        self.device = resolve_device(tc.device)
        torch.manual_seed(tc.seed)
        self.data = data if data is not None else build_data(cfg)
        init_gen = torch.Generator().manual_seed(tc.seed)
        self.model = build_model(cfg, self.data, generator=init_gen).to(self.device)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.opt = torch.optim.AdamW(param_groups(self.model, cfg), lr=cfg.optim.lr,
                                     weight_decay=cfg.optim.weight_decay, betas=(cfg.optim.beta1, cfg.optim.beta2))
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(cfg))
        self.gen = torch.Generator(device=self.device).manual_seed(tc.seed + 17)
        self.order = DataOrder(self.data.x.shape[0], min(tc.batch_size, self.data.x.shape[0]), tc.seed)
        self.step = 0
        self.x = self.data.x.to(self.device)
        self.y = self.data.labels.to(self.device) if self.data.labels is not None else None
        if tc.compile:
            self.model.backbone.compile()  # in place: parameter names (and checkpoints) unchanged
        self.progress = sys.stderr.isatty() if progress is None else progress

    # -------------------------------------------------------------- state

    def state_dict(self) -> dict:
        return {
            "config": self.cfg.to_dict(), "step": self.step, "model": self.model.state_dict(),
            "ema": self.ema.state_dict(), "opt": self.opt.state_dict(), "sched": self.sched.state_dict(),
            "gen": self.gen.get_state(), "torch_rng": torch.get_rng_state(), "order": self.order.state(),
        }

    def load_state_dict(self, s: dict) -> None:
        saved = Config.from_dict(s["config"])
        for section in ("data", "encoder", "model", "diffusion"):
            if getattr(saved, section) != getattr(self.cfg, section):
                raise CheckpointError(f"checkpoint was trained with a different [{section}] config; "
                                      "use a new --out directory or the original config")
        self.model.load_state_dict(s["model"])
        self.ema.load_state_dict(s["ema"])
        self.opt.load_state_dict(s["opt"])
        self.sched.load_state_dict(s["sched"])
        self.gen.set_state(s["gen"])
        torch.set_rng_state(s["torch_rng"])
        self.order = DataOrder(self.order.n, self.order.bs, self.cfg.train.seed, **s["order"])
        self.step = s["step"]

    def save_checkpoint(self) -> Path:
        d = self.run / CKPT_DIR
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"step_{self.step:08d}.pt"
        _atomic_save(self.state_dict(), path)
        for old in list_checkpoints(self.run)[:-max(1, self.cfg.train.keep_checkpoints)]:
            old.unlink(missing_ok=True)
        return path

    def try_resume(self) -> bool:
        for ckpt in reversed(list_checkpoints(self.run)):
            try:
                state = torch.load(ckpt, map_location=self.device, weights_only=False)
            except Exception:  # a checkpoint can only be partial if written by another tool; skip it
                continue
            self.load_state_dict(state)
            return True
        return False

    # -------------------------------------------------------------- training

    def train_step(self) -> float:
        cfg = self.cfg
        idx = self.order.next().to(self.device)
        x0 = self.x[idx]
        n = x0.shape[0]
        t = sample_times(n, cfg.diffusion.T0, cfg.diffusion.T, generator=self.gen, device=self.device)
        noise = torch.randn(x0.shape, generator=self.gen, device=self.device)
        y = None
        if self.y is not None:
            y = self.y[idx]
            drop = torch.rand(n, generator=self.gen, device=self.device) < cfg.model.class_dropout
            y = torch.where(drop, torch.full_like(y, self.model.num_classes), y)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.train.amp and self.device.type == "cuda"):
            loss = self.model.loss(x0, t, noise, y, weighting=cfg.diffusion.weighting)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
        self.opt.step()
        self.sched.step()
        ema_update(self.ema, self.model, ema_decay_at(cfg, self.step))
        self.step += 1
        return float(loss.detach())

    def fit(self) -> Path:
        cfg, tc = self.cfg, self.cfg.train
        self.run.mkdir(parents=True, exist_ok=True)
        cfg.save(self.run / "config.json")
        resumed = self.try_resume()
        log = open(self.run / "metrics.jsonl", "a")
        t_start, last_t, last_step, losses = time.time(), time.time(), self.step, []
        bar = tqdm(total=tc.steps, initial=self.step, desc="train", dynamic_ncols=True, disable=not self.progress)
        if resumed and not self.progress:
            print(f"resumed from step {self.step}", file=sys.stderr)
        try:
            while self.step < tc.steps:
                loss = self.train_step()
                if not math.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss} at step {self.step}; the last good "
                                             f"checkpoint is kept in {self.run / CKPT_DIR}; lower optim.lr "
                                             "or enable optim.grad_clip")
                losses.append(loss)
                bar.update(1)
                if self.step % tc.log_every == 0 or self.step == tc.steps:
                    now = time.time()
                    rate = (self.step - last_step) / max(now - last_t, 1e-9)
                    rec = {"step": self.step, "loss": sum(losses) / len(losses),
                           "lr": self.sched.get_last_lr()[0], "steps_per_s": rate, "time": now - t_start}
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
                    bar.set_postfix(loss=f"{rec['loss']:.4f}", it_s=f"{rate:.1f}")
                    if not self.progress:
                        print(f"step {self.step}/{tc.steps} loss {rec['loss']:.4f} {rate:.1f} steps/s",
                              file=sys.stderr)
                    losses, last_t, last_step = [], now, self.step
                if tc.checkpoint_every > 0 and self.step % tc.checkpoint_every == 0:
                    self.save_checkpoint()
                if tc.time_limit > 0 and time.time() - t_start > tc.time_limit:
                    print(f"time limit {tc.time_limit:.0f}s reached at step {self.step}", file=sys.stderr)
                    break
        finally:
            bar.close()
            log.close()
        self.save_checkpoint()
        save_pretrained(self.ema, cfg, self.run / "model", extra={"step": self.step,
                                                                  "train_seconds": time.time() - t_start,
                                                                  **self._data_meta()})
        return self.run

    def _data_meta(self) -> dict:
        loaded = self.data.loaded
        if loaded is None:
            return {}
        return {"normalisation": loaded.norm.to_dict(), "image_shape": loaded.image_shape,
                "class_names": loaded.class_names}


def check_run_dir(out: Path) -> None:
    """An output path must be new, empty, or an existing run directory (which is then resumed)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} exists and is a file; choose a new directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "config.json").is_file():
        raise ConfigError(f"--out {str(out)!r} exists and is not a run directory; choose a new or empty directory")


def train(cfg: Config, run_dir: str | Path, *, progress: bool | None = None) -> Path:
    """Train (or resume) a run in ``run_dir``; returns the run directory."""
    run = Path(run_dir)
    check_run_dir(run)
    return Trainer(cfg, run, progress=progress).fit()
