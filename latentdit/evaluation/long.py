"""Evaluation of a run trained on a long-sequence ground truth (``data.source = "stationary"`` or
``"long"``; B = I, closed-form noised score at cost (near) linear in d0).

Score error (the functionals of :mod:`latentdit.evaluation.gmm`, on the law's exact score):

- ``score_profile``: mse(t) = E_{x ~ p_t} ||s(x, t) - grad log p_t(x)||^2 on ``eval.score_times``
  (>= 16) log-spaced times in [T0, T], with its standard error and E||grad log p_t||^2;
- ``score_integral``: Thm 3.2's (1/T) int_{T0}^{T} mse(t) dt by quadrature over the profile;
- ``score_rel_error``: the mean over the times of sqrt(mse(t) / E||grad log p_t||^2).

Samples. W2 between point clouds in d0 = thousands of dimensions, from a few hundred samples, is
dominated by the finite-sample floor (true vs true about 134 against 174 for a poor model at
d0 = 16,384), so it is measured in a reduced space that a stationary law makes natural: the
*spectral summary* T(x) = (mean level of x, log mean periodogram of x in ``BANDS`` geometric
frequency bands) (:func:`spectral_summary`). For the stationary mixture T is (nearly) a sufficient
statistic: the periodogram is the sufficient statistic of a circulant Gaussian, the level carries
the mean, and band averages concentrate at thousands of frequencies, so T(x) of the true law is a
tight cluster per component. W2 between the laws of T then measures what a generative model must
get right -- the proportion of each component, each component's level and spectrum -- with a small
floor. ``w2_summary`` (generated vs true), ``w2_floor`` (true vs true, same sizes) and
``w2_excess`` = ``w2_summary`` - ``w2_floor``.

:func:`long_quality` is the one implementation: ``latentdit evaluate`` (:func:`evaluate_long`) and
``python -m latentdit.experiments.efficient`` both call it.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from latentdit.build import build_long_law, build_stationary_law
from latentdit.config import Config
from latentdit.evaluation.gmm import log_times, score_error_profile, score_integral_error
from latentdit.metrics.distances import w2
from latentdit.pipeline import LatentDiTPipeline
from latentdit.sampling import denoiser_from_score, sample

BANDS = 4  # frequency bands of the spectral summary


def ground_truth(cfg: Config):
    """The law of a long-sequence run (:class:`~latentdit.data.stationary.StationaryMixture` or
    :class:`~latentdit.data.long.LongMixture`)."""
    return build_stationary_law(cfg) if cfg.data.source == "stationary" else build_long_law(cfg)


def band_edges(dim: int, bands: int = BANDS) -> list[int]:
    """Geometric edges over the rfft frequencies 1..dim//2 (the mean, f = 0, is apart), strictly
    increasing; fewer bands when dim is too small to give each a frequency."""
    top = dim // 2 + 1
    edges = [1]
    for e in np.geomspace(1, top, bands + 1)[1:]:
        e = min(top, max(int(round(e)), edges[-1] + 1))
        if e > edges[-1]:
            edges.append(e)
    return edges


def spectral_summary(x: torch.Tensor, bands: int = BANDS) -> torch.Tensor:
    """T(x) of the module docstring, (N, 1 + bands): the mean level and log mean periodogram
    |F x|^2 (unitary DFT) in each band of :func:`band_edges`."""
    x = x.double()
    power = torch.fft.rfft(x - x.mean(1, keepdim=True), norm="ortho").abs().pow(2)
    edges = band_edges(x.shape[1], bands)
    logs = [power[:, a:b].mean(1).clamp_min(1e-12).log() for a, b in zip(edges, edges[1:])]
    return torch.stack([x.mean(1), *logs], 1)


def score_profile(pipe: LatentDiTPipeline, law, n_points: int, seed: int, *, score_times: int) -> dict:
    """The score-error profile of the pipeline's network on the log grid of ``score_times`` (at least
    16) times in its [T0, T], with ``score_integral`` (Thm 3.2) and ``score_rel_error``; x_t drawn
    from the law, seeded."""
    model, T0, T = pipe.model, pipe.T0, pipe.T
    gen = torch.Generator().manual_seed(seed + 7)
    ts = log_times(T0, T, max(score_times, 16))
    prof = score_error_profile(lambda x, t: model(x, t), law.score, lambda n, t: law.sample(n, t, generator=gen),
                               ts, n_points)
    rel = [float(np.sqrt(m / s)) for m, s in zip(prof["mse"], prof["true_sq_norm"])]
    return {"score_profile": prof, "score_integral": score_integral_error(prof, T0, T),
            "score_rel_error": float(np.mean(rel)), "score_rel_error_by_t": rel}


def sample_distances(x: torch.Tensor, law, T0: float, seed: int) -> dict:
    """W2 of the spectral summaries of ``x`` against fresh true samples at T0, the true-vs-true floor
    at the same sizes and the excess."""
    gen = torch.Generator().manual_seed(seed + 11)
    n = x.shape[0]
    truth, ref = law.sample(n, T0, generator=gen), law.sample(n, T0, generator=gen)
    st = spectral_summary(truth)
    out = {"w2_summary": w2(spectral_summary(x), st), "w2_floor": w2(spectral_summary(ref), st)}
    out["w2_excess"] = out["w2_summary"] - out["w2_floor"]
    return out


@torch.no_grad()
def exact_score_samples(pipe: LatentDiTPipeline, law, num: int, seed: int) -> torch.Tensor:
    """``num`` samples drawn with the law's exact score (float64) by the pipeline's own sampler
    settings and seed: the control whose W2 excess is the sampler's share, with no score error."""
    d = pipe.defaults
    return sample(denoiser_from_score(law.score), (num, law.ambient_dim), sampler=d.sampler, steps=d.steps, T0=pipe.T0,
                  T=pipe.T, grid=d.grid, rho=d.rho, denoise=d.denoise, dtype=torch.float64,
                  generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def w2_excess_by_seed(draw, law, T0: float, num: int, seeds: list[int]) -> dict[str, float]:
    """The W2 excess of :func:`sample_distances` for ``draw(num, seed)`` at each seed (the true
    samples and the floor drawn again with each seed): the spread of the 128-sample estimator."""
    return {str(s): sample_distances(draw(num, s).double(), law, T0, s)["w2_excess"] for s in seeds}


@torch.no_grad()
def long_quality(pipe: LatentDiTPipeline, law, n_eval: int, seed: int, *, score_times: int,
                 n_samples: int | None = None, sampler: str | None = None, steps: int | None = None) -> dict:
    """Score functionals on ``n_eval`` points per time and (``n_samples`` > 0; default ``n_eval``)
    the sample distances of ``n_samples`` generated samples (``sampler`` and ``steps``: the
    pipeline's defaults when None)."""
    pipe.model.eval()
    out = score_profile(pipe, law, n_eval, seed, score_times=score_times)
    n_samples = n_eval if n_samples is None else n_samples
    if n_samples > 0:
        x = pipe.sample_model_space(n_samples, sampler=sampler, steps=steps, seed=seed, batch_size=64).double()
        out.update(sample_distances(x, law, pipe.T0, seed))
    return out


def evaluate_long(pipe: LatentDiTPipeline, cfg: Config, *, num_samples: int | None = None, sampler: str | None = None,
                  steps: int | None = None, seed: int | None = None, progress: bool = False) -> dict:
    """:func:`long_quality` with the run's ``[eval]`` sizes (``--num``, ``--sampler``, ``--steps``,
    ``--seed`` of ``latentdit evaluate`` override them), plus the sizes and the wall time; ``cfg`` is
    the run's configuration (its law and ``[eval]`` sizes)."""
    ec = cfg.eval
    num = num_samples or ec.num_samples
    sampler, steps = sampler or ec.sampler, steps or ec.steps
    seed = ec.seed if seed is None else seed
    t0 = time.time()
    m = long_quality(pipe, ground_truth(cfg), num, seed, score_times=ec.score_times, sampler=sampler, steps=steps)
    m.update(num_samples=num, sampler=sampler, steps=steps, seed=seed, d0=cfg.data.ambient_dim,
             eval_seconds=time.time() - t0)
    return m
