"""Periodic evaluation of a run: ground-truth metrics of the EMA model and a sample snapshot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from latentdit.data.images import save_image_grid
from latentdit.evaluation.baselines import balanced_labels
from latentdit.evaluation.gmm import evaluate_gmm
from latentdit.pipeline import LatentDiTPipeline
from latentdit.train.checkpoint import global_rng_state, set_global_rng_state

SAMPLES_DIR = "samples"


def data_meta(data) -> dict:
    """The data record an export carries (normalisation, image shape, class names, pixel range)."""
    loaded = data.loaded
    if loaded is None:
        return {}
    meta = {"normalisation": loaded.norm.to_dict(), "image_shape": loaded.image_shape,
            "class_names": loaded.class_names}
    if getattr(loaded, "video_shape", None):  # clips (latentdit.data.video): rows are F x H x W
        meta["video_shape"] = list(loaded.video_shape)
    if loaded.pixel_range is not None:  # otherwise the export decides from data.source
        meta["pixel_range"] = [float(v) for v in loaded.pixel_range]
    return meta


@torch.no_grad()
def evaluate_snapshot(ema, cfg, data, run: Path, step: int, num: int = 64) -> dict:
    """Metrics of the EMA model (ground-truth runs) and a sample snapshot in RUN/samples/.

    Runs on its own seeded generators inside a saved-and-restored RNG context, so periodic
    evaluation never changes the training trajectory.
    """
    saved = global_rng_state()
    try:
        rec: dict = {}
        if data.gmm is not None:
            m = evaluate_gmm(ema, cfg, num_samples=min(cfg.eval.num_samples, 1000))
            rec.update({k if k.startswith("eval") else f"eval_{k}": v for k, v in m.items() if isinstance(v, float)})
        labels = balanced_labels(num, ema.num_classes) if ema.num_classes > 0 else None
        pipe = LatentDiTPipeline.from_config(ema, cfg, data_meta(data), data.first_stage)
        x = pipe.sample_model_space(num, sampler=cfg.eval.sampler, steps=cfg.eval.steps, seed=cfg.eval.seed,
                                    labels=labels).cpu()
        out = run / SAMPLES_DIR / f"step_{step:08d}"
        out.parent.mkdir(parents=True, exist_ok=True)
        loaded = data.loaded
        np.save(out.with_suffix(".npy"), pipe.to_data_space(x).numpy())
        if loaded is not None and loaded.image_shape is not None:
            save_image_grid(loaded.to_images(pipe.decode(x)), out.with_suffix(".png"), nrow=8)
        rec["snapshot"] = str(out.relative_to(run)) + ".npy"
        return rec
    finally:
        set_global_rng_state(saved)
