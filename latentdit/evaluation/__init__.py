"""Evaluation of trained models: ground truth (:mod:`.gmm`) and real data (:mod:`.real`).

Evaluation only measures: samples are drawn through :class:`latentdit.pipeline.LatentDiTPipeline`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from latentdit.evaluation.gmm import evaluate_gmm
from latentdit.evaluation.real import evaluate_real
from latentdit.export import from_pretrained

__all__ = ["evaluate_gmm", "evaluate_real", "evaluate_run"]


def evaluate_run(run: str | Path, out: str | Path | None = None, **kw) -> dict:
    """Evaluate a run directory's export and (optionally) write the metrics as JSON atomically."""
    model, cfg, meta = from_pretrained(run)
    if cfg.data.source == "gmm":
        metrics = evaluate_gmm(model, cfg, **kw)
    else:
        metrics = evaluate_real(model, cfg, meta, **kw)
    metrics["train_step"] = meta.get("step")
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(json.dumps(metrics, indent=2) + "\n")
        os.replace(tmp, out)
    return metrics
