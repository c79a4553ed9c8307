"""Checkpoint files (atomic writes, listing, reading the newest readable one) and resumable state.

A checkpoint is written to ``step_XXXXXXXX.pt.tmp``, flushed, fsynced and renamed (then the folder
is fsynced), so a ``step_*.pt`` file is complete or absent. Checkpoints are read with
``torch.load(weights_only=True)``: tensors and plain containers only.
"""

from __future__ import annotations

import io
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from latentdit.errors import CheckpointError
from latentdit.io import atomic_write_bytes

CKPT_DIR = "checkpoints"
CKPT_FORMAT = 2
STATE_KEYS = {"format", "config", "step", "model", "ema", "opt", "sched", "rng", "order"}


@dataclass
class TrainClock:
    """Seconds of training up to the current step, summed over the segments of a resumed run.

    A checkpoint stores the seconds up to its step; a resumed segment adds its own. The steps trained
    between a segment's last checkpoint and its interruption are trained again and counted once, in
    the segment that keeps them; start-up between segments is not training and is not counted.
    ``before`` is None after resuming from a checkpoint written before the clock existed: the total is
    then unknown (:meth:`total` is None) and ``train.time_limit`` counts the current segment only.
    """

    before: float | None = 0.0  # seconds of the earlier segments, up to the checkpoint resumed from
    segments: int = 1
    t_start: float = 0.0

    @classmethod
    def resumed(cls, state: dict | None) -> "TrainClock":
        """The clock of a segment that resumes from a checkpoint's ``clock`` state (None: unknown)."""
        return cls(None, 2) if state is None else cls(state["train_seconds"], state["segments"] + 1)

    def start(self) -> float:
        self.t_start = time.time()
        return self.t_start

    def total(self) -> float | None:
        return None if self.before is None else self.before + time.time() - self.t_start

    def seconds(self) -> float:
        """The run's training seconds, this segment's when the total is unknown: what
        ``train.time_limit`` and the ``time`` of a metrics line count."""
        t = self.total()
        return time.time() - self.t_start if t is None else t

    def limit_reached(self, limit: float) -> bool:
        return self.seconds() > limit

    def state(self) -> dict:
        """What a checkpoint stores, and the export's record: the total, the segments, this segment."""
        return {"train_seconds": self.total(), "segments": self.segments,
                "segment_seconds": time.time() - self.t_start}


def list_checkpoints(run: Path) -> list[Path]:
    """The complete checkpoints of a run directory, oldest first."""
    d = Path(run) / CKPT_DIR
    return sorted(d.glob("step_*.pt"), key=lambda p: int(p.stem.split("_")[1])) if d.is_dir() else []


def write_checkpoint(run: Path, step: int, state: dict, *, keep: int,
                     midway: Callable[[Path], None] | None = None) -> Path:
    """Atomically write the checkpoint of ``step``, then delete all but the newest ``keep``."""
    d = Path(run) / CKPT_DIR
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"step_{step:08d}.pt"
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getbuffer(), midway=midway)
    for old in list_checkpoints(run)[:-max(1, keep)]:
        old.unlink(missing_ok=True)
    return path


def read_latest(run: Path) -> tuple[dict | None, Path | None, list[tuple[Path, str]]]:
    """(state, its path, unreadable newer checkpoints) of the newest readable checkpoint.

    Reads only. Raises :class:`CheckpointError` when checkpoints exist but none can be read.
    """
    bad: list[tuple[Path, str]] = []
    for ckpt in reversed(list_checkpoints(run)):
        try:
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or not STATE_KEYS <= set(state):
                raise ValueError("not a latentdit training checkpoint")
        except Exception as e:  # noqa: BLE001 - any read failure means "unreadable"
            bad.append((ckpt, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]))
            continue
        return state, ckpt, bad
    if bad:
        raise CheckpointError(f"no readable checkpoint in {str(Path(run) / CKPT_DIR)!r} (newest "
                              f"{bad[0][0].name}: {bad[0][1]}); restore the files or use a new --out directory")
    return None, None, []


# ------------------------------------------------------------- resumable streams: data order, RNG state


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
