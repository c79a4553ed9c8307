"""Evaluation of a trained run against the ground truth (Thm 3.1-3.2, Cor. 3.2.1).

For ground-truth (``gmm``) runs the metrics are:

- ``subspace_error``: ||W_B W_B^T - B B^T||_F^2 (Cor. 3.2.1 i);
- ``w2_latent``: W2 between generated samples mapped to latent coordinates by (W_B U)^T, U the best
  orthogonal alignment of W_B to B, and fresh draws of the true latent law at T0 (Cor. 3.2.1 ii);
- ``w2_latent_reference``: W2 between two independent true sample sets of the same size (the
  finite-sample floor that ``w2_latent`` should be compared with);
- ``off_subspace_var`` / ``off_subspace_var_expected``: the generated law's variance orthogonal to
  W_B and sigma(T0) = 1 - exp(-T0) (Cor. 3.2.1 iii);
- ``score_rel_error``: ||s_W - grad log p_t|| / ||grad log p_t|| in L2(P_t), averaged over a
  log-spaced grid of t in [T0, T]; ``score_sigma_error`` is sigma(t) ||s_W - grad log p_t||
  (the quantity of Thm 3.1), averaged the same way.
"""

from __future__ import annotations

import time

import torch

from latentdit.build import build_ground_truth
from latentdit.config import Config
from latentdit.metrics.distances import (aligned_latent, expected_off_subspace_variance, off_subspace_variance,
                                         score_errors, subspace_error, w2)
from latentdit.models.score import LatentScoreNet
from latentdit.pipeline import LatentDiTPipeline
from latentdit.sampling import time_grid


@torch.no_grad()
def evaluate_gmm(model: LatentScoreNet, cfg: Config, *, num_samples: int | None = None, sampler: str | None = None,
                 steps: int | None = None, seed: int | None = None, progress: bool = False) -> dict:
    """All ground-truth metrics of the module docstring for a model trained on ``data.source = gmm``."""
    ec = cfg.eval
    num = num_samples or ec.num_samples
    sampler, steps = sampler or ec.sampler, steps or ec.steps
    seed = ec.seed if seed is None else seed
    gmm = build_ground_truth(cfg)
    T0, T = cfg.diffusion.T0, cfg.diffusion.T
    W = model.W_B.detach().cpu()
    t0 = time.time()
    pipe = LatentDiTPipeline.from_config(model, cfg)
    x = pipe.sample_model_space(num, sampler=sampler, steps=steps, seed=seed, progress=progress).cpu()
    gen = torch.Generator().manual_seed(seed + 1)
    h_true = gmm.sample_latent(num, T0, generator=gen)
    h_ref = gmm.sample_latent(num, T0, generator=gen)
    h_gen = aligned_latent(x, W, gmm.B)
    ts = time_grid(T0, T, max(ec.score_times - 1, 1), "log")
    with torch.no_grad():
        errs = score_errors(lambda xx, tt: model(xx, tt), gmm.score, lambda n, t: gmm.sample(n, t, generator=gen),
                            ts, min(num, 2000))
    return {
        "subspace_error": subspace_error(W, gmm.B),
        "w2_latent": w2(h_gen, h_true),
        "w2_latent_reference": w2(h_ref, h_true),
        "off_subspace_var": off_subspace_variance(x, W),
        "off_subspace_var_expected": expected_off_subspace_variance(T0),
        "score_rel_error": errs["rel_err_mean"],
        "score_sigma_error": errs["sigma_err_mean"],
        "score_error_by_t": {"t": errs["t"], "rel_err": errs["rel_err"], "sigma_err": errs["sigma_err"]},
        "num_samples": num, "sampler": sampler, "steps": steps, "seed": seed,
        "eval_seconds": time.time() - t0,
    }
