"""The step budget: a run stopped by an explicit train.time_limit says so and records the shortfall."""

import json
from pathlib import Path

from latentdit.config import load_config
from latentdit.export import read_training_record
from latentdit.train import train

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
