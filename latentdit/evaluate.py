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
from pathlib import Path

import torch

from latentdit.config import Config
from latentdit.io import atomic_write_json
from latentdit.metrics.distances import (aligned_latent, expected_off_subspace_variance, off_subspace_variance,
                                         score_errors, subspace_error, w2)
from latentdit.models.score import LatentScoreNet
from latentdit.pipeline import build_ground_truth, from_pretrained
from latentdit.provenance import provenance_end, provenance_start
from latentdit.sampling import get_sampler, sample, time_grid


def model_score_fn(model: LatentScoreNet, y: torch.Tensor | None = None, guidance: float = 1.0):
    """Adapt a network to ``score_fn(x, t)``; with labels and guidance != 1, classifier-free guidance
    s = s_uncond + w (s_cond - s_uncond) on the whole output. A class-conditional model sampled
    without labels gets the null class, the unconditional model it was trained as (label dropout)."""
    if y is None and model.num_classes > 0:
        return lambda x, t: model(x, t, torch.full((x.shape[0],), model.num_classes, dtype=torch.long,
                                                  device=x.device))
    if y is None or guidance == 1.0:
        return lambda x, t: model(x, t, y)
    null = torch.full_like(y, model.num_classes)

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
        s_c, s_u = s.chunk(2)
        return s_u + guidance * (s_c - s_u)

    return fn


@torch.no_grad()
def generate(model: LatentScoreNet, cfg: Config, num: int, *, sampler: str | None = None, steps: int | None = None,
             seed: int = 0, labels: torch.Tensor | None = None, guidance: float | None = None,
             batch_size: int = 4096, progress: bool = False, denoise: bool | None = None) -> torch.Tensor:
    """Draw ``num`` samples (N, D) in the model's (normalised) data space.

    ``sampler``, ``steps``, ``guidance`` and ``denoise`` default to ``cfg.sample``.
    """
    sampler = sampler or cfg.sample.sampler
    get_sampler(sampler)
    steps = steps or cfg.sample.steps
    if steps <= 0:
        raise ValueError(f"steps={steps} must be > 0")
    guidance = cfg.sample.guidance if guidance is None else guidance
    denoise = cfg.sample.denoise if denoise is None else denoise
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    out = []
    for start in range(0, num, batch_size):
        n = min(batch_size, num - start)
        y = labels[start:start + n].to(device) if labels is not None else None
        fn = model_score_fn(model, y, guidance)
        out.append(sample(fn, (n, model.ambient_dim), sampler=sampler, steps=steps, T0=cfg.diffusion.T0,
                          T=cfg.diffusion.T, grid=cfg.sample.grid, generator=gen, device=device,
                          progress=progress, denoise=denoise))
    return torch.cat(out)


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
    x = generate(model, cfg, num, sampler=sampler, steps=steps, seed=seed, progress=progress).cpu()
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


def evaluate_run(run: str | Path, out: str | Path | None = None, **kw) -> dict:
    """Evaluate a run directory's export and (optionally) write the metrics as JSON atomically, with
    their provenance (this process's command line, the git commit, threads and load averages)."""
    prov = provenance_start()
    model, cfg, meta = from_pretrained(run)
    if cfg.data.source == "gmm":
        metrics = evaluate_gmm(model, cfg, **kw)
    else:
        from latentdit.experiments.real import evaluate_real

        metrics = evaluate_real(model, cfg, meta, **kw)
    metrics["train_step"] = meta.get("step")
    metrics["train_seconds"] = meta.get("train_seconds")  # training wall-clock, from the export
    if out is not None:
        metrics["provenance"] = provenance_end(prov)
        atomic_write_json(out, metrics)
    return metrics
