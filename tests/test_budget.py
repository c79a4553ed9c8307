"""The step budget: a run stopped by an explicit train.time_limit says so and records the shortfall."""

import json
from pathlib import Path

from latentdit.config import load_config
from latentdit.export import read_training_record
from latentdit.train import TrainCallbacks, train
from latentdit.train import checkpoint
from latentdit.train.checkpoint import TrainClock

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.toml"
SETS = ["train.steps=6", "train.checkpoint_every=2", "train.log_every=2", "train.threads=1"]


def last_metrics(run: Path) -> dict:
    return json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])


def test_time_limited_run_records_steps_trained_and_warns(tmp_path, capsys):
    run = tmp_path / "run"
    # any optimiser step takes longer than a microsecond: the limit is reached after step 1
    train(load_config(TINY, SETS + ["train.time_limit=1e-6"]), run, progress=False)
    err = capsys.readouterr().err
    assert "warning: train.time_limit=1e-06s reached after step 1 of 6" in err
    meta = read_training_record(run)
    assert (meta["step"], meta["steps_trained"], meta["steps_planned"]) == (1, 1, 6)
    end = last_metrics(run)
    assert (end["step"], end["steps_trained"], end["steps_planned"]) == (1, 1, 6)

    # resumed without the limit, the run trains the remaining steps and no longer warns
    train(load_config(run / "config.json", ["train.time_limit=0"]), run, progress=False)
    err = capsys.readouterr().err
    assert "resumed from step 1" in err and "warning" not in err
    meta = read_training_record(run)
    assert (meta["steps_trained"], meta["steps_planned"]) == (6, 6)
    assert (last_metrics(run)["steps_trained"], last_metrics(run)["steps_planned"]) == (6, 6)


class FakeTime:
    """A clock that moves only when told: the training clock's closed-form check."""

    def __init__(self):
        self.now = 1000.0

    def time(self) -> float:
        return self.now


def test_train_clock_sums_segments_and_marks_unknown(monkeypatch):
    clock_time = FakeTime()
    monkeypatch.setattr(checkpoint, "time", clock_time)
    first = TrainClock()
    first.start()
    clock_time.now += 30.0
    saved = first.state()
    assert saved == {"train_seconds": 30.0, "segments": 1, "segment_seconds": 30.0}
    clock_time.now += 500.0  # a kill, then start-up: not training
    second = TrainClock.resumed(saved)
    second.start()
    clock_time.now += 12.0
    assert second.state() == {"train_seconds": 42.0, "segments": 2, "segment_seconds": 12.0}
    assert second.limit_reached(41.0) and not second.limit_reached(43.0)
    older = TrainClock.resumed(None)  # a checkpoint written before the clock: the total is unknown
    older.start()
    clock_time.now += 5.0
    assert older.total() is None and older.state()["segments"] == 2
    assert older.limit_reached(4.0) and not older.limit_reached(6.0)  # this segment's seconds


def test_time_limit_counts_the_seconds_of_earlier_segments(tmp_path, monkeypatch):
    clock_time = FakeTime()
    monkeypatch.setattr(checkpoint, "time", clock_time)

    def tick(step: int) -> None:  # every optimiser step takes 10 s of the training clock
        clock_time.now += 10.0

    run, hooks = tmp_path / "run", TrainCallbacks(on_step=tick)
    train(load_config(TINY, SETS + ["train.time_limit=35"]), run, progress=False, callbacks=hooks)
    meta = read_training_record(run)
    assert (meta["steps_trained"], meta["train_seconds"], meta["segments"]) == (4, 40.0, 1)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["time"]) for r in lines if "loss" in r] == [(2, 20.0), (4, 40.0)]
    # resumed with a limit of 45 s, the run has 5 s left: one more step (a per-segment clock would
    # allow 4 more and train to step 6)
    train(load_config(run / "config.json", ["train.time_limit=45"]), run, progress=False, callbacks=hooks)
    meta = read_training_record(run)
    assert (meta["steps_trained"], meta["train_seconds"], meta["segments"], meta["segment_seconds"]) == (5, 50.0, 2, 10.0)
    assert last_metrics(run)["train_seconds"] == 50.0
