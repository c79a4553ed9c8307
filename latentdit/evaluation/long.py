"""Evaluation of a run trained on the long-sequence ground truth (``data.source = "long"``).

The law (:class:`latentdit.data.long.LongMixture`, B = I) has a closed-form noised score at cost
linear in d0, so the score error is measured exactly as on the Gaussian-mixture ground truth, at
any sequence length:

- ``score_rel_error``: the mean over a log grid of ``eval.score_times`` times in [T0, T] of
  ||s - grad log p_t||_{L2(P_t)} / ||grad log p_t||_{L2(P_t)}, on x_t ~ p_t drawn from the law;
  ``score_sigma_error`` the mean of sigma(t) ||s - grad log p_t||; ``score_rel_error_by_t`` the profile;
- ``w2``: W2 between generated samples and fresh true samples at T0, next to ``w2_reference``
  (two independent true sample sets of the same size: the finite-sample floor).

:func:`long_quality` is the one implementation: ``latentdit evaluate`` (:func:`evaluate_long`) and
``python -m latentdit.experiments.efficient`` both call it.
"""

from __future__ import annotations

import time

import torch

from latentdit.build import build_long_law
from latentdit.config import Config
from latentdit.data.long import LongMixture
from latentdit.metrics.distances import score_errors, w2
from latentdit.pipeline import LatentDiTPipeline
from latentdit.sampling import time_grid


@torch.no_grad()
def long_quality(pipe: LatentDiTPipeline, law: LongMixture, n_eval: int, seed: int, *, score_times: int,
                 sampler: str | None = None, steps: int | None = None) -> dict:
    """Score error against the closed form (on ``score_times`` log-spaced times) and W2 of ``n_eval``
    generated vs true samples at T0 (``sampler`` and ``steps``: the pipeline's defaults when None;
    every random draw seeded by ``seed``)."""
    model, T0 = pipe.model, pipe.T0
    gen = torch.Generator().manual_seed(seed + 7)
    ts = time_grid(T0, pipe.T, max(score_times - 1, 1), "log")
    errs = score_errors(lambda x, t: model(x, t), law.score, lambda n, t: law.sample(n, t, generator=gen),
                        ts, n_eval)
    x = pipe.sample_model_space(n_eval, sampler=sampler, steps=steps, seed=seed, batch_size=64).double()
    truth, ref = law.sample(n_eval, T0, generator=gen), law.sample(n_eval, T0, generator=gen)
    return {"score_rel_error": errs["rel_err_mean"], "score_sigma_error": errs["sigma_err_mean"],
            "score_rel_error_by_t": dict(zip(map(str, errs["t"]), errs["rel_err"])),
            "w2": w2(x, truth), "w2_reference": w2(ref, truth)}


def evaluate_long(pipe: LatentDiTPipeline, cfg: Config, *, num_samples: int | None = None, sampler: str | None = None,
                  steps: int | None = None, seed: int | None = None, progress: bool = False) -> dict:
    """:func:`long_quality` with the run's ``[eval]`` sizes (``--num``, ``--sampler``, ``--steps``,
    ``--seed`` of ``latentdit evaluate`` override them), plus the sizes and the wall time; ``cfg`` is
    the run's configuration (its law and ``[eval]`` sizes)."""
    ec = cfg.eval
    num = num_samples or ec.num_samples
    sampler, steps = sampler or ec.sampler, steps or ec.steps
    seed = ec.seed if seed is None else seed
    pipe.model.eval()
    t0 = time.time()
    m = long_quality(pipe, build_long_law(cfg), num, seed, score_times=ec.score_times, sampler=sampler, steps=steps)
    m.update(num_samples=num, sampler=sampler, steps=steps, seed=seed, d0=cfg.data.ambient_dim,
             eval_seconds=time.time() - t0)
    return m
