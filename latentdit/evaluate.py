"""Compatibility names for callers not yet moved to :mod:`latentdit.evaluation` and the pipeline.

New code: ``latentdit.evaluation.evaluate_gmm / evaluate_run`` and
``LatentDiTPipeline.from_config(model, cfg).sample_model_space(num, ...)``.
"""

from __future__ import annotations

from latentdit.evaluation import evaluate_gmm, evaluate_run
from latentdit.pipeline import LatentDiTPipeline

__all__ = ["evaluate_gmm", "evaluate_run", "sample_model_space"]


def sample_model_space(model, cfg, num: int, *, seed: int = 0, **kw):
    """``num`` samples in the model's normalised space (not data space), defaults from ``cfg.sample``."""
    return LatentDiTPipeline.from_config(model, cfg).sample_model_space(num, seed=seed, **kw)


generate = sample_model_space  # the old name, kept only until latentdit.experiments.rates moves to the pipeline
