"""Training: denoising score matching with AdamW, warmup + cosine LR, gradient clipping and EMA.

A run directory is self-describing (only rank 0 writes into it):

    RUN/config.json          resolved configuration (the source of truth)
    RUN/metrics.jsonl        one JSON line per log step (step, loss, lr, steps/s, eta) and per evaluation
    RUN/checkpoints/         step_XXXXXXXX.pt: training state (model, EMA, optimiser, LR schedule, step,
                             every RNG state, data order position); the newest ``train.keep_checkpoints``
    RUN/samples/             step_XXXXXXXX.npy (and .png for image data): snapshots of the EMA model
    RUN/tensorboard/         event files when ``train.tensorboard = true``
    RUN/model/               export: config.json + model.safetensors (EMA weights)

Calling :func:`train` on an existing run directory resumes from its newest checkpoint and continues
exactly: a run killed at any point (even ``kill -9`` during a checkpoint write) and resumed ends with
the same weights as one never interrupted (bitwise on CPU with a fixed thread count).

Checkpoints are written to a temporary file, fsynced and renamed, so a checkpoint file is either
complete or absent. A checkpoint that is nevertheless unreadable (damaged on disk, copied
half-way) is reported on stderr, renamed to ``*.corrupt`` and the previous checkpoint is used; if no
checkpoint is readable, resuming stops with a :class:`CheckpointError` instead of starting over.

Checkpoints are loaded with ``torch.load(weights_only=True)``: tensors and plain containers only.
"""

from __future__ import annotations

import copy
import importlib
import io
import json
import math
import os
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from latentdit.config import Config
from latentdit.diffusion import sample_times
from latentdit.distributed import DistContext, init_distributed, rank_device
from latentdit.errors import CheckpointError, ConfigError, DivergenceError
from latentdit.evaluation.baselines import balanced_labels
from latentdit.evaluation.gmm import evaluate_gmm
from latentdit.models.guidance import drop_labels
from latentdit.pipeline import (LatentDiTPipeline, TrainData, build_data, build_model, resolve_device,
                                save_pretrained)

CKPT_DIR = "checkpoints"
SAMPLES_DIR = "samples"
CKPT_FORMAT = 2
# Test hook: "N" kills the process with SIGKILL right after optimiser step N; "save:N" kills it half-way
# through writing the checkpoint of step N (the temporary file is left half-written).
KILL_ENV = "LATENTDIT_KILL_AT"
_STATE_KEYS = {"format", "config", "step", "model", "ema", "opt", "sched", "rng", "order"}


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


def param_groups(model: torch.nn.Module, cfg: Config) -> list[dict]:
    """The network's parameters at optim.lr and a learned encoder's at optim.lr * encoder.lr_scale."""
    enc = [p for n, p in model.named_parameters() if n.startswith("encoder.") and p.requires_grad]
    rest = [p for n, p in model.named_parameters() if not n.startswith("encoder.") and p.requires_grad]
    groups = [{"params": rest}]
    if enc:
        groups.append({"params": enc, "lr": cfg.optim.lr * cfg.encoder.lr_scale})
    return groups


def make_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`, with the fused kernel (one pass over all parameters).

    The default single-tensor AdamW on the CPU runs a dozen elementwise ops per parameter tensor;
    the fused kernel does the same update in one pass. With the multi-tensor EMA below it makes the
    demo's training step 1.09x faster (docs/bench/train_step.py).
    """
    kw = dict(lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, betas=(cfg.optim.beta1, cfg.optim.beta2))
    try:
        return torch.optim.AdamW(param_groups(model, cfg), fused=True, **kw)
    except (RuntimeError, TypeError):  # a device or dtype without the fused kernel
        return torch.optim.AdamW(param_groups(model, cfg), **kw)


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay ema + (1 - decay) model, over all parameters in one multi-tensor op."""
    pe = list(ema.parameters())
    torch._foreach_lerp_(pe, [p.detach() for p in model.parameters()], 1 - decay)
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


def _kill_point() -> tuple[str, int] | None:
    raw = os.environ.get(KILL_ENV, "").strip()
    if not raw:
        return None
    kind, _, n = raw.rpartition(":")
    return (kind or "step", int(n))


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write_bytes(data: bytes | memoryview, path: Path, *, die_midway: bool = False) -> None:
    """Write ``path`` via ``path.tmp``: write, flush, fsync, rename, fsync the folder."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        half = len(data) // 2
        f.write(data[:half])
        if die_midway:
            f.flush()
            _die()
        f.write(data[half:])
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _atomic_save(obj: dict, path: Path, *, die_midway: bool = False) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    _atomic_write_bytes(buf.getbuffer(), path, die_midway=die_midway)


def list_checkpoints(run: Path) -> list[Path]:
    d = Path(run) / CKPT_DIR
    return sorted(d.glob("step_*.pt"), key=lambda p: int(p.stem.split("_")[1])) if d.is_dir() else []


# ------------------------------------------------------------------------------------------ RNG state


def global_rng_state() -> dict:
    """torch (CPU and CUDA), numpy and python RNG states as tensors and plain values."""
    np_state = np.random.get_state()
    py = random.getstate()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return {
        "torch": torch.get_rng_state(), "cuda": list(cuda),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": int(py[0]), "state": torch.tensor(py[1], dtype=torch.int64), "gauss_next": py[2]},
    }


def set_global_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available() and len(s["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(s["cuda"])
    n = s["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = s["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss_next"]))


class _Objective(torch.nn.Module):
    """The training loss as a module's forward, so that DDP can wrap it (gradient all-reduce)."""

    def __init__(self, model: torch.nn.Module, weighting: str):
        super().__init__()
        self.model, self.weighting = model, weighting

    def forward(self, x0, t, noise, y=None):
        return self.model.loss(x0, t, noise, y, weighting=self.weighting)


class Trainer:
    """Holds everything a step needs, so that a checkpoint can restore it exactly.

    Under ``torchrun`` (``dist.world_size > 1``) every rank holds the whole data set and the same
    seeded streams; each step every rank draws the same global batch (indices, times, noise, label
    dropout) and trains on its contiguous slice, DDP averages the gradients, and logged losses are
    averaged over ranks. ``train.batch_size`` is the global batch and must be divisible by the
    number of processes. Only rank 0 writes files.
    """

    def __init__(self, cfg: Config, run_dir: str | Path, *, data: TrainData | None = None,
                 progress: bool | None = None, dist: DistContext | None = None):
        self.cfg, self.run = cfg, Path(run_dir)
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
        self.data = data if data is not None else build_data(cfg)
        init_gen = torch.Generator().manual_seed(tc.seed)
        self.model = build_model(cfg, self.data, generator=init_gen).to(self.device)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.opt = make_optimizer(self.model, cfg)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(cfg))
        # one stream for times, noise and label dropout: the same on every rank (see the class docstring)
        self.gen = torch.Generator(device=self.device).manual_seed(tc.seed + 17)
        n, world = self.data.x.shape[0], self.dist.world_size
        self.global_batch = min(tc.batch_size, n)
        if self.global_batch % world:
            raise ConfigError(f"the global batch {self.global_batch} (train.batch_size, at most the {n} data "
                              f"points) is not divisible by the {world} processes; choose a multiple of {world}")
        self.local_batch = self.global_batch // world
        self.order = DataOrder(n, self.global_batch, tc.seed)
        self.step = 0
        self.x = self.data.x.to(self.device)
        self.y = self.data.labels.to(self.device) if self.data.labels is not None else None
        if tc.compile:
            self.model.backbone.compile()  # in place: parameter names (and checkpoints) unchanged
        self.objective: torch.nn.Module = _Objective(self.model, cfg.diffusion.weighting)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.objective = DistributedDataParallel(
                self.objective, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.progress = (sys.stderr.isatty() if progress is None else progress) and self.dist.is_main
        self._kill = _kill_point()
        self._saved_step = -1
        self._tb = None

    # -------------------------------------------------------------- state

    def state_dict(self) -> dict:
        return {
            "format": CKPT_FORMAT, "config": self.cfg.to_dict(), "step": self.step,
            "model": self.model.state_dict(), "ema": self.ema.state_dict(), "opt": self.opt.state_dict(),
            "sched": self.sched.state_dict(), "order": self.order.state(), "world_size": self.dist.world_size,
            "rng": {"gen": self.gen.get_state(), **global_rng_state()},
        }

    def load_state_dict(self, s: dict) -> None:
        saved = Config.from_saved(s["config"])
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
        self.order = DataOrder(self.order.n, self.order.bs, self.cfg.train.seed, **s["order"])
        self.step = s["step"]
        self._saved_step = self.step

    def read_latest(self) -> tuple[dict | None, Path | None, list[tuple[Path, str]]]:
        """(state, its path, unreadable newer checkpoints) of the newest readable checkpoint.

        Raises :class:`CheckpointError` when checkpoints exist but none can be read.
        """
        bad: list[tuple[Path, str]] = []
        for ckpt in reversed(list_checkpoints(self.run)):
            try:
                state = torch.load(ckpt, map_location="cpu", weights_only=True)
                if not isinstance(state, dict) or not _STATE_KEYS <= set(state):
                    raise ValueError("not a latentdit training checkpoint")
            except Exception as e:  # noqa: BLE001 - any read failure means "unreadable"
                bad.append((ckpt, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]))
                continue
            return state, ckpt, bad
        if bad:
            raise CheckpointError(f"no readable checkpoint in {str(self.run / CKPT_DIR)!r} (newest "
                                  f"{bad[0][0].name}: {bad[0][1]}); restore the files or use a new --out directory")
        return None, None, []

    def save_checkpoint(self) -> Path:
        d = self.run / CKPT_DIR
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"step_{self.step:08d}.pt"
        die = self._kill == ("save", self.step)
        _atomic_save(self.state_dict(), path, die_midway=die)
        for old in list_checkpoints(self.run)[:-max(1, self.cfg.train.keep_checkpoints)]:
            old.unlink(missing_ok=True)
        self._saved_step = self.step
        return path

    # -------------------------------------------------------------- training

    def train_step(self) -> float:
        """One optimiser step on the global batch; returns the loss averaged over all ranks."""
        cfg, G = self.cfg, self.global_batch
        idx = self.order.next().to(self.device)  # (G,) the same on every rank
        t = sample_times(G, cfg.diffusion.T0, cfg.diffusion.T, generator=self.gen, device=self.device)
        noise = torch.randn((G, self.x.shape[1]), generator=self.gen, device=self.device)
        drop = None
        if self.y is not None:
            drop = torch.rand(G, generator=self.gen, device=self.device) < cfg.model.class_dropout
        lo = self.dist.rank * self.local_batch
        mine = slice(lo, lo + self.local_batch)  # this rank's shard of the global batch
        idx, t, noise = idx[mine], t[mine], noise[mine]
        x0 = self.x[idx]
        y = None
        if self.y is not None:
            y = self.y[idx]
            y = drop_labels(y, drop[mine], self.model.num_classes)
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
        cfg, tc, main = self.cfg, self.cfg.train, self.dist.is_main
        state, ckpt, bad = self.read_latest()  # reading only: errors leave the run directory untouched
        if state is not None:
            self.load_state_dict(state)
        self.dist.barrier()
        if main:
            self._prepare_run_dir(ckpt, bad)
        self.dist.barrier()
        if main and tc.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run / "tensorboard"), purge_step=self.step + 1)
        log = open(self.run / "metrics.jsonl", "a") if main else None
        t_start, last_t, last_step, losses = time.time(), time.time(), self.step, []
        bar = tqdm(total=tc.steps, initial=self.step, desc="train", dynamic_ncols=True, disable=not self.progress)
        if state is not None and main and not self.progress:
            print(f"resumed from step {self.step} ({ckpt.name})", file=sys.stderr)
        try:
            while self.step < tc.steps:
                loss = self.train_step()
                if self._kill == ("step", self.step):
                    _die()
                losses.append(loss)
                bar.update(1)
                if self.step % tc.log_every == 0 or self.step == tc.steps:
                    now = time.time()
                    rate = (self.step - last_step) / max(now - last_t, 1e-9)
                    eta = (tc.steps - self.step) / max(rate, 1e-9)
                    rec = {"step": self.step, "loss": sum(losses) / len(losses),
                           "lr": self.sched.get_last_lr()[0], "steps_per_s": rate, "eta_s": eta,
                           "time": now - t_start}
                    if main:
                        self._log(log, rec)
                    bar.set_postfix(loss=f"{rec['loss']:.4f}", steps_s=f"{rate:.1f}")
                    if main and not self.progress:
                        print(f"step {self.step}/{tc.steps} loss {rec['loss']:.4f} {rate:.1f} steps/s "
                              f"eta {_fmt_time(eta)}", file=sys.stderr)
                    losses, last_t, last_step = [], now, self.step
                if main and tc.checkpoint_every > 0 and self.step % tc.checkpoint_every == 0:
                    self.save_checkpoint()
                if main and tc.eval_every > 0 and self.step % tc.eval_every == 0:
                    self._log(log, {"step": self.step, **self.evaluate_snapshot()})
                    last_t = time.time()  # steps/s counts training only
                if tc.time_limit > 0 and self.dist.any(time.time() - t_start > tc.time_limit, self.device):
                    if main:
                        print(f"time limit {tc.time_limit:.0f}s reached at step {self.step}", file=sys.stderr)
                    break
        finally:
            bar.close()
            if log is not None:
                log.close()
            if self._tb is not None:
                self._tb.close()
        if main:
            if self._saved_step != self.step:
                self.save_checkpoint()
            save_pretrained(self.ema, cfg, self.run / "model", extra={"step": self.step,
                                                                      "train_seconds": time.time() - t_start,
                                                                      **self._data_meta()})
        self.dist.barrier()
        return self.run

    def _prepare_run_dir(self, ckpt: Path | None, bad: list[tuple[Path, str]]) -> None:
        """Rank 0, after all checks: config.json, stale temporaries, unreadable checkpoints, metrics."""
        self.run.mkdir(parents=True, exist_ok=True)
        _atomic_write_bytes((json.dumps(self.cfg.to_dict(), indent=2) + "\n").encode(), self.run / "config.json")
        for tmp in (self.run / CKPT_DIR).glob("*.tmp"):
            tmp.unlink(missing_ok=True)  # left by a process killed while writing a checkpoint
        for path, why in bad:
            print(f"warning: checkpoint {path} is unreadable ({why}); resuming from "
                  f"{ckpt.name if ckpt else 'the start'}; the file is kept as {path.name}.corrupt", file=sys.stderr)
            path.rename(path.with_name(path.name + ".corrupt"))
        self._trim_metrics()

    def _trim_metrics(self) -> None:
        """Drop metrics lines past the resumed step (they are recomputed) and any torn last line."""
        p = self.run / "metrics.jsonl"
        if not p.exists():
            return
        keep = []
        for line in p.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and rec.get("step", 0) <= self.step:
                keep.append(line)
        _atomic_write_bytes("".join(x + "\n" for x in keep).encode(), p)

    def _log(self, log, rec: dict) -> None:
        log.write(json.dumps(rec) + "\n")
        log.flush()
        if self._tb is not None:
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k.replace("eval_", "eval/"), v, rec["step"])

    @torch.no_grad()
    def evaluate_snapshot(self, num: int = 64) -> dict:
        """Metrics of the EMA model (ground-truth runs) and a sample snapshot in RUN/samples/.

        Runs on its own seeded generators inside a saved-and-restored RNG context, so periodic
        evaluation never changes the training trajectory.
        """
        cfg, saved = self.cfg, global_rng_state()
        try:
            rec: dict = {}
            if self.data.gmm is not None:
                m = evaluate_gmm(self.ema, cfg, num_samples=min(cfg.eval.num_samples, 1000))
                rec.update({k if k.startswith("eval") else f"eval_{k}": v for k, v in m.items() if isinstance(v, float)})
            labels = None
            if self.ema.num_classes > 0:
                labels = balanced_labels(num, self.ema.num_classes)
            pipe = LatentDiTPipeline.from_config(self.ema, cfg, self._data_meta())
            x = pipe.sample_model_space(num, sampler=cfg.eval.sampler, steps=cfg.eval.steps, seed=cfg.eval.seed,
                                        labels=labels).cpu()
            out = self.run / SAMPLES_DIR / f"step_{self.step:08d}"
            out.parent.mkdir(parents=True, exist_ok=True)
            loaded = self.data.loaded
            np.save(out.with_suffix(".npy"), pipe.to_data_space(x).numpy())
            if loaded is not None and loaded.image_shape is not None:
                from latentdit.data.images import save_image_grid

                save_image_grid(loaded.to_images(x), out.with_suffix(".png"), nrow=8)
            rec["snapshot"] = str(out.relative_to(self.run)) + ".npy"
            return rec
        finally:
            set_global_rng_state(saved)

    def _data_meta(self) -> dict:
        loaded = self.data.loaded
        if loaded is None:
            return {}
        return {"normalisation": loaded.norm.to_dict(), "image_shape": loaded.image_shape,
                "class_names": loaded.class_names}


def _fmt_time(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def check_run_dir(out: Path) -> None:
    """An output path must be new, empty, or an existing run directory (which is then resumed)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} exists and is a file; choose a new directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "config.json").is_file():
        raise ConfigError(f"--out {str(out)!r} exists and is not a run directory (no config.json); "
                          "choose a new or empty directory")


def train(cfg: Config, run_dir: str | Path, *, progress: bool | None = None,
          data: TrainData | None = None) -> Path:
    """Train (or resume) a run in ``run_dir``; returns the run directory.

    Under ``torchrun`` this joins the process group (gloo on CPU, NCCL on CUDA) and trains data-parallel.
    """
    run = Path(run_dir)
    ctx = init_distributed(cfg.train.device)
    try:
        check_run_dir(run)  # every rank checks before any rank writes (the group init is a barrier)
        return Trainer(cfg, run, progress=progress, dist=ctx, data=data).fit()
    finally:
        ctx.shutdown()
