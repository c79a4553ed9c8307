"""Evaluation of trained models: ground truth (:mod:`.gmm`, :mod:`.long`) and real data (:mod:`.real`).

Evaluation only measures: samples are drawn through :class:`latentdit.pipeline.LatentDiTPipeline`.
"""

from __future__ import annotations

from pathlib import Path

from latentdit.errors import ConfigError
from latentdit.evaluation.gmm import evaluate_gmm
from latentdit.evaluation.long import evaluate_long
from latentdit.evaluation.real import evaluate_real
from latentdit.export import from_pretrained
from latentdit.io import atomic_write_json
from latentdit.provenance import provenance_end, provenance_start

__all__ = ["evaluate_gmm", "evaluate_long", "evaluate_real", "evaluate_run"]


def evaluate_run(run: str | Path, out: str | Path | None = None, **kw) -> dict:
    """Evaluate a run directory's export and (optionally) write the metrics as JSON atomically, with
    their provenance (this process's command line, the git commit, threads and load averages) and
    the training budget the export records (``steps_trained`` of ``steps_planned``)."""
    prov = provenance_start()
    model, cfg, meta = from_pretrained(run)
    if cfg.data.source in ("gmm", "long", "stationary"):
        if kw.get("guidance") is not None:
            raise ConfigError("guidance applies to class-conditional real-data runs; this run has a ground truth")
        metrics = (evaluate_gmm if cfg.data.source == "gmm" else evaluate_long)(model, cfg, **kw)
    else:
        metrics = evaluate_real(model, cfg, meta, **kw)
    metrics["train_step"] = meta.get("step")
    for key in ("steps_trained", "steps_planned", "train_seconds"):
        metrics[key] = meta.get(key)
    if out is not None:
        metrics["provenance"] = provenance_end(prov)
        atomic_write_json(out, metrics)
    return metrics
