"""The run directory: the check before a run, its preparation on resume, and the lock a run holds.

    RUN/config.json          resolved configuration (the source of truth)
    RUN/metrics.jsonl        one JSON line per log step and per evaluation, and one at the end of training
    RUN/checkpoints/         step_XXXXXXXX.pt (see latentdit.train.checkpoint)
    RUN/samples/             snapshots of the EMA model
    RUN/model/               export: config.json + model.safetensors (EMA weights)
    RUN/.lock                held by the training run using the directory (pid and host inside)
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from pathlib import Path

from latentdit.errors import ConfigError
from latentdit.io import atomic_write_text
from latentdit.train.checkpoint import CKPT_DIR

try:
    import fcntl
except ImportError:  # not a POSIX system: runs are not locked
    fcntl = None

LOCK_NAME = ".lock"
METRICS = "metrics.jsonl"


def check_run_dir(out: Path) -> None:
    """An output path must be new, empty, or an existing run directory (which is then resumed)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} exists and is a file; choose a new directory")
    if out.is_dir() and any(p.name != LOCK_NAME for p in out.iterdir()) and not (out / "config.json").is_file():
        raise ConfigError(f"--out {str(out)!r} exists and is not a run directory (no config.json); "
                          "choose a new or empty directory")


def prepare_run_dir(run: Path, config: dict, step: int, ckpt: Path | None, bad: list[tuple[Path, str]]) -> None:
    """After all checks: config.json, stale temporaries, unreadable checkpoints, metrics past ``step``."""
    run.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run / "config.json", json.dumps(config, indent=2) + "\n")
    for tmp in (run / CKPT_DIR).glob("*.tmp"):
        tmp.unlink(missing_ok=True)  # left by a process killed while writing a checkpoint
    for path, why in bad:
        print(f"warning: checkpoint {path} is unreadable ({why}); resuming from "
              f"{ckpt.name if ckpt else 'the start'}; the file is kept as {path.name}.corrupt", file=sys.stderr)
        path.rename(path.with_name(path.name + ".corrupt"))
    trim_metrics(run, step)


def trim_metrics(run: Path, step: int) -> None:
    """Drop metrics lines past the resumed ``step`` (they are recomputed) and any torn last line."""
    p = run / METRICS
    if not p.exists():
        return
    keep = []
    for line in p.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and rec.get("step", 0) <= step:
            keep.append(line)
    atomic_write_text(p, "".join(x + "\n" for x in keep))


class RunLock:
    """An exclusive ``fcntl.flock`` on ``RUN/.lock``, held for a training run's life.

    A second run on the same directory is refused with a :class:`ConfigError` naming the owner (pid,
    host, start time, written into the file). The operating system releases the lock when its
    process ends in any way, ``kill -9`` included, so the file a dead run leaves never blocks a
    resume. The file itself is kept (removing it would let two processes lock different files).
    """

    def __init__(self, run: str | Path):
        self.run = Path(run)
        self.path = self.run / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        if fcntl is None or self._fd is not None:
            return self
        self.run.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            owner = _read_owner(fd)
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES):  # a file system without locks
                print(f"warning: cannot lock {self.path} ({e.strerror}); make sure no other run uses "
                      f"--out {str(self.run)!r}", file=sys.stderr)
                return self
            raise ConfigError(f"--out {str(self.run)!r} is in use by another training run ({owner}); wait "
                              "for it to finish or stop it, or choose another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode() + b"\n")
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_owner(fd: int) -> str:
    try:
        o = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {o['pid']} on {o['host']}, started {o['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "owner unknown"


def fmt_time(s: float) -> str:
    """Seconds as h:mm:ss (the progress lines' ETA)."""
    s = int(round(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
