"""Crash safety: kill -9 at five points of a tiny run, resume each time, and get bitwise-identical weights.

Also: unreadable checkpoints fall back to the previous one (or stop with a clear error when none is
readable), and a run's export loads with ``LatentDiTPipeline.from_pretrained`` in a fresh process and samples.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from latentdit.config import load_config
from latentdit.errors import CheckpointError
from latentdit.train import Trainer, list_checkpoints, train

pytestmark = pytest.mark.slow  # every test here builds on a run trained in a subprocess

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.toml"
DRIVER = ROOT / "tests" / "train_driver.py"
# 30 steps, a checkpoint every 5 (the newest 2 kept), a log line every 5
SETS = ["train.checkpoint_every=5", "train.log_every=5", "train.keep_checkpoints=2", "train.threads=1"]
# (kill point, step the next process resumes from); "N": SIGKILL right after optimiser step N,
# "save:N": SIGKILL half-way through writing checkpoint N (a torn temporary file is left behind)
KILLS = [("3", 0), ("save:10", 5), ("12", 10), ("20", 15), ("save:30", 25)]


def cli_train(run: Path, kill: str | None) -> subprocess.CompletedProcess:
    """``latentdit train --out RUN`` in a fresh process; with ``kill``, through the test driver that
    installs the kill hook (tests/train_driver.py: the same config handling, plus the callbacks)."""
    env = {**os.environ, "PYTHONHASHSEED": "0", "LATENTDIT_PROGRESS_EVERY": "0"}  # a plain line every step
    if kill is None:
        args = [sys.executable, "-m", "latentdit", "train", "--out", str(run), "--quiet"]
    else:
        kind, _, n = kill.rpartition(":")
        flag = "--kill-mid-checkpoint" if kind == "save" else "--kill-after-step"
        args = [sys.executable, str(DRIVER), "--out", str(run), flag, n]
    if not (run / "config.json").exists():
        args += ["--config", str(TINY)] + [x for s in SETS for x in ("--set", s)]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)


def ckpt_state(run: Path) -> dict:
    return torch.load(list_checkpoints(run)[-1], map_location="cpu", weights_only=True)


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run, in a fresh process like the resumed ones."""
    run = tmp_path_factory.mktemp("ref") / "run"
    r = cli_train(run, None)
    assert r.returncode == 0, r.stderr
    return run


def test_kill_9_at_five_points_then_resume_is_bitwise_identical(reference, tmp_path):
    run = tmp_path / "run"
    for kill, resume_from in KILLS:
        r = cli_train(run, kill)
        assert r.returncode == -signal.SIGKILL, (kill, r.returncode, r.stderr)
        assert not (run / "model").exists()  # no export from a killed run
        steps = [int(p.stem.split("_")[1]) for p in list_checkpoints(run)]
        assert max(steps, default=0) == resume_from, (kill, steps)
        if kill.startswith("save:"):
            assert list((run / "checkpoints").glob("*.tmp")), "the kill should leave a torn temporary file"
    r = cli_train(run, None)
    assert r.returncode == 0, r.stderr
    assert "resumed from step 25" in r.stderr
    # plain progress lines off a terminal: the resumed steps 26..30, no carriage returns
    assert "train: 29/30 (97%) step, " in r.stderr and ", eta " in r.stderr and "\r" not in r.stderr
    assert "train: 30/30 (100%) step loss=" in r.stderr  # the closing line carries the last logged loss
    assert not list((run / "checkpoints").glob("*.tmp"))

    ref, got = ckpt_state(reference), ckpt_state(run)
    assert got["step"] == ref["step"] == 30
    assert_same_tensors(ref["ema"], got["ema"])
    assert_same_tensors(ref["model"], got["model"])
    assert_same_tensors(load_file(str(reference / "model" / "model.safetensors")),
                        load_file(str(run / "model" / "model.safetensors")))
    # metrics.jsonl holds each logged step once, with the uninterrupted run's losses
    def losses(p):
        return [(r["step"], r["loss"]) for r in map(json.loads, (p / "metrics.jsonl").read_text().splitlines())
                if "loss" in r]
    assert losses(run) == losses(reference)


def test_checkpoint_holds_every_state(reference):
    s = ckpt_state(reference)
    for key in ("model", "ema", "opt", "sched", "step", "order", "config"):
        assert key in s
    for key in ("gen", "torch", "numpy", "python"):
        assert key in s["rng"]
    assert s["order"] == {"epoch": 1, "pos": 14 * 32}  # 30 batches of 32 from 512 points: 16 + 14


def test_corrupt_latest_checkpoint_falls_back_to_previous(reference, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    latest = list_checkpoints(run)[-1]
    want = ckpt_state(run)["ema"]
    latest.write_bytes(latest.read_bytes()[:1000])  # truncated on disk
    train(load_config(run / "config.json"), run, progress=False)
    assert "unreadable" in capsys.readouterr().err
    assert (run / "checkpoints" / (latest.name + ".corrupt")).exists()
    assert_same_tensors(want, ckpt_state(run)["ema"])  # re-trained from the previous checkpoint, same result


def test_all_checkpoints_unreadable_is_a_clear_error(reference, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    for p in list_checkpoints(run):
        p.write_bytes(b"not a checkpoint")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(CheckpointError, match="no readable checkpoint"):
        Trainer(load_config(run / "config.json"), run, progress=False).fit()
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # nothing touched


def test_from_pretrained_in_a_fresh_process_samples(reference):
    code = (
        "import sys, torch\n"
        "from latentdit.export import read_training_record\n"
        "from latentdit.pipeline import LatentDiTPipeline\n"
        "pipe = LatentDiTPipeline.from_pretrained(sys.argv[1])\n"
        "model, meta = pipe.model, read_training_record(sys.argv[1])\n"
        "x = pipe(16, sampler='ddim', steps=4, seed=0)\n"
        "assert x.shape == (16, 32) and torch.isfinite(x).all()\n"
        "print(meta['step'], sum(float(v.double().sum()) for v in model.state_dict().values()))\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(reference / "model")], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    step, total = r.stdout.split()
    ema = ckpt_state(reference)["ema"]
    assert int(step) == 30  # the export of the final step, holding the EMA weights
    assert float(total) == sum(float(v.double().sum()) for v in ema.values())


def test_periodic_evaluation_and_snapshots_do_not_change_training(reference, tmp_path):
    run = tmp_path / "run"
    from latentdit.evaluation import snapshot_metrics
    from latentdit.train import TrainCallbacks

    cfg = load_config(TINY, SETS + ["train.eval_every=15", "eval.num_samples=100", "eval.steps=4"])
    train(cfg, run, progress=False, callbacks=TrainCallbacks(evaluate=snapshot_metrics(cfg)))
    assert_same_tensors(ckpt_state(reference)["ema"], ckpt_state(run)["ema"])
    evals = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "snapshot" in r]
    assert [r["step"] for r in evals] == [15, 30]
    for r in evals:
        assert (run / r["snapshot"]).is_file()
        assert 0 <= r["eval_subspace_error"] < 1 and r["eval_w2_latent"] > 0
