"""Periodic evaluation of a run: the caller's metrics of the EMA pipeline and a sample snapshot."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from latentdit.data.images import save_image_grid
from latentdit.models.guidance import balanced_labels
from latentdit.pipeline import LatentDiTPipeline
from latentdit.train.checkpoint import global_rng_state, set_global_rng_state

SAMPLES_DIR = "samples"
Evaluator = Callable[[LatentDiTPipeline], dict]  # metrics of a pipeline (ground-truth runs)


@torch.no_grad()
def evaluate_snapshot(pipe: LatentDiTPipeline, evaluate: Evaluator | None, run: Path, step: int, *, sampler: str,
                      steps: int, seed: int, loaded=None, num: int = 64) -> dict:
    """``evaluate(pipe)`` (its float values as ``eval_*``) and ``num`` samples in RUN/samples/ (a
    grid of images for image data, ``loaded`` being the loaded images).

    Runs on its own seeded generators inside a saved-and-restored RNG context, so periodic
    evaluation never changes the training trajectory.
    """
    saved = global_rng_state()
    try:
        rec: dict = {}
        if evaluate is not None:
            m = evaluate(pipe)
            rec.update({k if k.startswith("eval") else f"eval_{k}": v for k, v in m.items() if isinstance(v, float)})
        labels = balanced_labels(num, pipe.model.num_classes) if pipe.model.num_classes > 0 else None
        x = pipe.sample_model_space(num, sampler=sampler, steps=steps, seed=seed, labels=labels).cpu()
        out = run / SAMPLES_DIR / f"step_{step:08d}"
        out.parent.mkdir(parents=True, exist_ok=True)
        np.save(out.with_suffix(".npy"), pipe.to_data_space(x).numpy())
        if loaded is not None and loaded.image_shape is not None:
            save_image_grid(loaded.to_images(pipe.decode(x)), out.with_suffix(".png"), nrow=8)
        rec["snapshot"] = str(out.relative_to(run)) + ".npy"
        return rec
    finally:
        set_global_rng_state(saved)
