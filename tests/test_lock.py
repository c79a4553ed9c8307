"""The run-directory lock: a second run on a directory in use is refused; a killed run's lock is not."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from latentdit.config import load_config
from latentdit.errors import ConfigError
from latentdit.export import read_training_record
from latentdit.train import RunLock, list_checkpoints, train

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.toml"
DRIVER = ROOT / "tests" / "train_driver.py"
SETS = ["train.steps=6", "train.checkpoint_every=2", "train.log_every=2", "train.threads=1"]
CONFIG = ["--config", str(TINY)] + [x for s in SETS for x in ("--set", s)]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "latentdit", *args], capture_output=True, text=True, timeout=300)


def files(run: Path) -> dict:
    return {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}


def test_second_lock_on_a_directory_is_refused_until_the_first_is_released(tmp_path):
    first = RunLock(tmp_path / "run").acquire()
    try:
        # flock conflicts between two open files even within one process
        with pytest.raises(ConfigError, match=rf"in use by another training run \(pid {os.getpid()} on "):
            RunLock(tmp_path / "run").acquire()
    finally:
        first.release()
    RunLock(tmp_path / "run").acquire().release()


def test_train_on_a_locked_directory_writes_nothing(tmp_path):
    run = tmp_path / "run"
    with RunLock(run):
        with pytest.raises(ConfigError, match="in use by another training run"):
            train(load_config(TINY, SETS), run, progress=False)
        assert [p.name for p in run.iterdir()] == [".lock"]
    train(load_config(TINY, SETS), run, progress=False)  # a directory holding only a lock file is a new run
    assert read_training_record(run)["step"] == 6


@pytest.mark.slow
def test_concurrent_second_run_is_refused_while_the_first_runs(tmp_path):
    run, go = tmp_path / "run", tmp_path / "go"
    first = subprocess.Popen([sys.executable, str(DRIVER), "--out", str(run), "--pause-after-step", "3",
                              "--pause-until", str(go), *CONFIG], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        deadline = time.time() + 120
        while not Path(str(go) + ".paused").exists():  # the first run is at step 3, holding the lock
            assert first.poll() is None and time.time() < deadline, first.communicate()
            time.sleep(0.05)
        before = files(run)
        r = cli("train", "--out", str(run), "--quiet")
        err = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(err) == 1, r.stderr
        assert "in use by another training run" in err[0] and f"pid {first.pid} on " in err[0]
        assert files(run) == before  # the refused run touched nothing
    finally:
        go.touch()
        out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert read_training_record(run)["step"] == 6


@pytest.mark.slow
def test_lock_of_a_killed_run_does_not_block_resume(tmp_path):
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, str(DRIVER), "--out", str(run), "--kill-after-step", "3", *CONFIG],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr
    owner = json.loads((run / ".lock").read_text())
    assert owner["pid"] != os.getpid()  # the dead run's pid is still written in the file
    assert [int(p.stem.split("_")[1]) for p in list_checkpoints(run)] == [2]
    r = cli("train", "--out", str(run), "--quiet")
    assert r.returncode == 0, r.stderr
    assert "resumed from step 2" in r.stderr


def _no_space(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    from latentdit.io import atomic_write, atomic_write_json

    p = tmp_path / "m.json"
    atomic_write_json(p, {"a": 1})
    old, only = p.read_bytes(), ["m.json"]

    def half_then_fail(f):
        f.write(b'{"a": 2')
        raise RuntimeError("interrupted")
    with pytest.raises(RuntimeError):
        atomic_write(p, half_then_fail)
    assert p.read_bytes() == old and sorted(x.name for x in tmp_path.iterdir()) == only
    monkeypatch.setattr(os, "fsync", _no_space)
    with pytest.raises(OSError) as e:
        atomic_write_json(p, {"a": 3})
    assert e.value.filename == str(p) and p.read_bytes() == old and sorted(x.name for x in tmp_path.iterdir()) == only
