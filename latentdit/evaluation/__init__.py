"""Evaluation of trained pipelines: ground truth (:mod:`.gmm`; :mod:`.long` for the long and
stationary sources), real data (:mod:`.real`)
and the first stage's reconstruction floor (:mod:`.firststage`).

Evaluation only measures: every evaluator takes a :class:`latentdit.pipeline.LatentDiTPipeline`
and samples through it, with the run's configuration for the ground truth and the ``[eval]`` sizes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from latentdit.config import Config
from latentdit.errors import CheckpointError, ConfigError
from latentdit.evaluation.gmm import evaluate_gmm
from latentdit.evaluation.long import evaluate_long
from latentdit.evaluation.real import evaluate_real
from latentdit.export import read_training_record
from latentdit.io import atomic_write_json
from latentdit.pipeline import LatentDiTPipeline
from latentdit.provenance import provenance_end, provenance_start

__all__ = ["evaluate_gmm", "evaluate_long", "evaluate_real", "evaluate_run", "run_config", "snapshot_metrics"]


def run_config(run: str | Path) -> Config:
    """The training configuration an export keeps as provenance (training.json, or format 0's
    config.json): the ground truth and ``[eval]`` sizes that evaluation needs and sampling does not."""
    record = read_training_record(run)
    if "config" not in record:
        raise CheckpointError(f"{str(run)!r} keeps no training configuration (training.json); evaluation needs "
                              "the run's data and [eval] settings; sample with `latentdit sample` instead")
    try:
        return Config.from_saved(record["config"])
    except ConfigError as e:
        raise CheckpointError(f"the training configuration kept in {str(run)!r} is not readable: {e}") from e


def snapshot_metrics(cfg: Config) -> Callable[[LatentDiTPipeline], dict] | None:
    """The metrics of a run's periodic evaluation (``train.eval_every``): the ground-truth metrics
    of a ``gmm`` run on at most 1000 samples; None for other data (a sample snapshot only)."""
    if cfg.data.source != "gmm":
        return None
    return lambda pipe: evaluate_gmm(pipe, cfg, num_samples=min(cfg.eval.num_samples, 1000))


def evaluate_run(run: str | Path, out: str | Path | None = None, **kw) -> dict:
    """Evaluate a run directory's export and (optionally) write the metrics as JSON atomically, with
    their provenance (this process's command line, the git commit, threads and load averages) and
    the training budget the export records (``steps_trained`` of ``steps_planned``)."""
    prov = provenance_start()
    pipe = LatentDiTPipeline.from_pretrained(run)
    cfg, record = run_config(run), read_training_record(run)
    if cfg.data.source in ("gmm", "long", "stationary"):
        if kw.get("guidance") is not None:
            raise ConfigError("guidance applies to class-conditional real-data runs; this run has a ground truth")
        metrics = (evaluate_gmm if cfg.data.source == "gmm" else evaluate_long)(pipe, cfg, **kw)
    else:
        metrics = evaluate_real(pipe, cfg, **kw)
    metrics["train_step"] = record.get("step")
    for key in ("steps_trained", "steps_planned", "train_seconds"):
        metrics[key] = record.get(key)
    if out is not None:
        metrics["provenance"] = provenance_end(prov)
        atomic_write_json(out, metrics)
    return metrics
