"""Evaluation of a trained run against the ground truth (Thm 3.1-3.2, Cor. 3.2.1).

Score error. The basic quantity is the per-t profile (:func:`score_error_profile`)

    mse(t) = E_{x ~ p_t} ||s(x, t) - grad log p_t(x)||^2        (unweighted)

on >= 16 log-spaced times in [T0, T] (:func:`log_times`). Two functionals of it follow the two theorems:

- ``score_uniform`` (Thm 3.1, uniform in t): max_t sigma(t) sqrt(mse(t)) / sqrt(d0), the measured eps
  of ||s - grad log p_t||_{L2(P_t)} <= eps sqrt(d0) / sigma(t) (:func:`score_uniform_error`);
- ``score_integral`` (Thm 3.2): (1/T) int_{T0}^{T} mse(t) dt by quadrature over the profile
  (:func:`score_integral_error`); dominated by t near T0, where mse ~ 1/t. ``score_integral_se`` is
  its Monte Carlo standard error;
- ``score_rel_error``: the mean over the times of sqrt(mse(t) / E||grad log p_t||^2).

Distribution recovery (Cor. 3.2.1), each estimate next to its finite-sample floor (the same
estimator on two independent true sample sets of the same sizes) and the excess over it:

- ``subspace_error``: ||W W^T - B B^T||_F^2 (i);
- ``w2_latent`` / ``w2_floor`` / ``w2_excess``: W2 between generated samples mapped to latent
  coordinates by (W U)^T (U the best orthogonal alignment of W to B) and true latent draws at T0 (ii);
- ``tv_latent`` / ``tv_floor`` / ``tv_excess`` for d0 <= 2: TV between the exact latent density at T0
  and a Gaussian KDE of the aligned samples (ii);
- ``off_subspace_var`` against ``off_subspace_var_expected`` = sigma(T0) = 1 - exp(-T0) (iii).

The floors are random too: with well separated components the W2 floor is dominated by the
binomial fluctuation of the component counts (about |mu_1 - mu_2| sqrt(sd of a weight), 0.6 at 800
samples for means 4 apart), so an excess means something only against its spread over seeds
(:func:`latentdit.experiments.rates.verdicts.excess_se_ratio`).

Exact-score control (``control=True``): the same sample sizes and seeds drawn with the law's exact
score, by Euler-Maruyama on the uniform step of App. D.1 and by DPM-Solver++(2M); their W2 excess is
the part of ``w2_excess`` that the sampler causes with no score error at all.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from latentdit.build import build_ground_truth
from latentdit.config import Config
from latentdit.diffusion import sigma
from latentdit.metrics.distances import (aligned_latent, expected_off_subspace_variance, off_subspace_variance,
                                         erm_score, subspace_error, tv_to_density, w2)
from latentdit.pipeline import LatentDiTPipeline
from latentdit.sampling import denoiser_from_score, sample

MIN_TIMES = 16


def log_times(T0: float, T: float, n: int = MIN_TIMES) -> torch.Tensor:
    """``n`` geometrically spaced times from T0 to T (increasing, float64, both ends included)."""
    if not isinstance(n, int) or n < 2:
        raise ValueError(f"log_times: n={n!r} must be an integer >= 2")
    if not 0 < T0 < T:
        raise ValueError(f"log_times: need 0 < T0 < T, got T0={T0}, T={T}")
    ts = torch.exp(torch.linspace(math.log(T0), math.log(T), n, dtype=torch.float64))
    ts[0], ts[-1] = T0, T
    return ts


@torch.no_grad()
def score_error_profile(score_fn, true_score, sample_xt, times, n_points: int) -> dict:
    """Per-t score error on fresh draws x_t ~ p_t (``sample_xt(n, t)``) for each t in ``times``.

    Returns lists over t: ``t``; ``mse`` = E||s(x_t, t) - grad log p_t(x_t)||^2 (unweighted);
    ``mse_se`` its Monte Carlo standard error; ``sigma`` = sigma(t); ``true_sq_norm`` =
    E||grad log p_t(x_t)||^2; and ``n_points``.
    """
    if not isinstance(n_points, int) or n_points < 2:
        raise ValueError(f"score_error_profile: n_points={n_points!r} must be an integer >= 2")
    ts = [float(t) for t in (times.tolist() if isinstance(times, torch.Tensor) else times)]
    if not ts or min(ts) <= 0:
        raise ValueError(f"score_error_profile: times must be a non-empty list of t > 0, got {ts}")
    out = {"t": [], "mse": [], "mse_se": [], "sigma": [], "true_sq_norm": [], "n_points": n_points}
    for t in ts:
        x = sample_xt(n_points, t)
        tt = torch.full((x.shape[0],), t, dtype=x.dtype)
        s_true = true_score(x, tt).double()
        s_hat = score_fn(x.float(), tt.float()).double()
        err = (s_hat - s_true).pow(2).sum(1)
        out["t"].append(t)
        out["mse"].append(float(err.mean()))
        out["mse_se"].append(float(err.std() / math.sqrt(len(err))))
        out["sigma"].append(float(sigma(torch.tensor(t, dtype=torch.float64))))
        out["true_sq_norm"].append(float(s_true.pow(2).sum(1).mean()))
    return out


def score_uniform_error(profile: dict, d0: int) -> float:
    """Thm 3.1: ||s - grad log p_t||_{L2(P_t)} <= eps sqrt(d0) / sigma(t) for every t, so the measured
    eps is max_t sigma(t) sqrt(mse(t)) / sqrt(d0) over the profile's times."""
    if not isinstance(d0, int) or d0 < 1:
        raise ValueError(f"score_uniform_error: d0={d0!r} must be a positive integer")
    vals = [s * math.sqrt(max(m, 0.0)) for s, m in zip(profile["sigma"], profile["mse"])]
    if not vals:
        raise ValueError("score_uniform_error: the profile has no times")
    return max(vals) / math.sqrt(d0)


def _piece_integral(t0: float, t1: float, m0: float, m1: float) -> float:
    """int_{t0}^{t1} m(t) dt for m interpolated as a power law a t^p through (t0, m0), (t1, m1): the
    trapezoid rule in (log t, log m), exact for mse(t) = c t^p on the interval (e.g. c / t near T0).
    Falls back to the plain trapezoid when an end value is not positive."""
    if m0 <= 0 or m1 <= 0:
        return 0.5 * (m0 + m1) * (t1 - t0)
    p = math.log(m1 / m0) / math.log(t1 / t0)
    if abs(p + 1) < 1e-12:
        return m0 * t0 * math.log(t1 / t0)
    return m0 * t0 / (p + 1) * ((t1 / t0) ** (p + 1) - 1)


def score_integral_error(profile: dict, T0: float, T: float) -> float:
    """Thm 3.2's functional (1/T) int_{T0}^{T} mse(t) dt, by quadrature over the profile's times.

    Between neighbouring times mse is interpolated as a power law (linear in log t and log mse) and
    integrated exactly: the trapezoid rule in log-log coordinates, exact when mse(t) = c t^p on each
    interval. The profile must start at T0 and end at T (as :func:`log_times` gives).
    """
    ts, ms = list(profile["t"]), list(profile["mse"])
    if len(ts) < 2 or any(b <= a for a, b in zip(ts, ts[1:])):
        raise ValueError(f"score_integral_error: the profile needs >= 2 increasing times, got {ts}")
    if not (math.isclose(ts[0], T0, rel_tol=1e-9) and math.isclose(ts[-1], T, rel_tol=1e-9)):
        raise ValueError(f"score_integral_error: the profile spans [{ts[0]}, {ts[-1]}], not [T0, T] = [{T0}, {T}]")
    total = sum(_piece_integral(ts[i], ts[i + 1], ms[i], ms[i + 1]) for i in range(len(ts) - 1))
    return total / T


# ------------------------------------------------------------------------------- samples and W2 / TV


def _latent_distances(h: torch.Tensor, h_true: torch.Tensor, w2_floor: float, tv_args) -> dict:
    out = {"w2": w2(h, h_true)}
    out["w2_excess"] = out["w2"] - w2_floor
    if tv_args is not None:
        log_p, hp, tv_floor = tv_args
        out["tv"] = tv_to_density(h.numpy(), log_p, hp)
        out["tv_excess"] = out["tv"] - tv_floor
    return out


@torch.no_grad()
def exact_score_samples(law, num: int, *, sampler: str, steps: int, T0: float, T: float, grid: str = "auto",
                        seed: int = 0) -> torch.Tensor:
    """``num`` samples (num, D) at T0 drawn with the law's exact score (float64), as a control: the
    sampler's own error with no score error. ``sampler="em", grid="uniform"`` is App. D.1's sampler."""
    return sample(denoiser_from_score(law.score), (num, law.B.shape[0]), sampler=sampler, steps=steps, T0=T0, T=T,
                  grid=grid, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _score_metrics(score_fn, law, ts: torch.Tensor, score_points: int, eg: torch.Generator, T0: float, T: float,
                   prefix: str = "") -> dict:
    """The score functionals of the module docstring for ``score_fn`` against ``law``'s exact score."""
    d0 = law.B.shape[1]
    prof = score_error_profile(score_fn, law.score, lambda m, t: law.sample(m, t, generator=eg), ts, score_points)
    if prefix:  # the reference curve of the empirical risk minimiser
        return {f"{prefix}score_mse": prof["mse"], f"{prefix}score_uniform": score_uniform_error(prof, d0),
                f"{prefix}score_integral": score_integral_error(prof, T0, T)}
    return {"score_t": prof["t"], "score_mse": prof["mse"], "score_mse_se": prof["mse_se"],
            "score_true_sq_norm": prof["true_sq_norm"],
            "score_uniform": score_uniform_error(prof, d0), "score_integral": score_integral_error(prof, T0, T),
            "score_rel_error": float(np.mean([math.sqrt(m / max(s, 1e-300))
                                             for m, s in zip(prof["mse"], prof["true_sq_norm"])])),
            # the quadrature's standard error (linear in the mse values at fixed exponents; the
            # weights treated as fixed, which is what the 3-SE rule of the verdicts needs)
            "score_integral_se": _integral_se(prof, T0, T)}


def _tv_args(law, h_ref: torch.Tensor, T0: float, tv_points: int, eg: torch.Generator):
    """(log density at T0, points drawn from it, the TV floor) for d0 <= 2, else None."""
    if law.B.shape[1] > 2 or tv_points <= 0:
        return None

    def log_p(h: np.ndarray) -> np.ndarray:
        return law.latent_log_prob(torch.from_numpy(h), T0).numpy()

    hp = law.sample_latent(tv_points, T0, generator=eg).numpy()
    return log_p, hp, tv_to_density(h_ref.numpy(), log_p, hp)


@torch.no_grad()
def evaluate_ground_truth(pipe: LatentDiTPipeline, law, *, sampler: str, steps: int, score_points: int,
                          num_samples: int, tv_points: int = 0, seed: int, times: int = MIN_TIMES,
                          control: bool = False, x_train: torch.Tensor | None = None) -> dict:
    """Every metric of the module docstring for ``pipe`` (holding the EMA network) against ``law``.

    ``law`` is a ground truth with ``score``, ``sample``, ``sample_latent``, ``B`` (D, d0) and, for TV,
    ``latent_log_prob``; the pipeline gives T0, T and the encoder basis W_B; samples are drawn with
    ``sampler`` in ``steps`` steps. The model's samples (and the controls') use seed ``seed``; the
    true draws of the floors, then the score profile's draws, use ``seed + 1``. All values are
    floats or lists.

    ``x_train`` (n, D), optional: the training points; then ``erm_score_mse`` / ``erm_score_uniform`` /
    ``erm_score_integral`` give the same functionals for the empirical risk minimiser's score
    (:func:`latentdit.metrics.distances.erm_score`), the reference curve of sample-complexity plots
    (cost: n x score_points per time).
    """
    if not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError(f"evaluate_ground_truth: num_samples={num_samples!r} must be an integer >= 2")
    if not isinstance(times, int) or times < MIN_TIMES:
        raise ValueError(f"evaluate_ground_truth: times={times!r} must be an integer >= {MIN_TIMES}")
    model, T0, T = pipe.model, pipe.T0, pipe.T
    W = model.W_B.detach().cpu()
    eg = torch.Generator().manual_seed(seed + 1)
    # true draws first: the same streams as earlier versions of this evaluation, so W2 figures reproduce
    h_true = law.sample_latent(num_samples, T0, generator=eg)
    h_ref = law.sample_latent(num_samples, T0, generator=eg)
    ts = log_times(T0, T, times)
    out = _score_metrics(lambda xx, tt: model(xx, tt), law, ts, score_points, eg, T0, T)
    if x_train is not None:
        out.update(_score_metrics(lambda xx, tt: erm_score(x_train, xx, tt), law, ts, score_points, eg, T0, T, "erm_"))
    x = pipe.sample_model_space(num_samples, sampler=sampler, steps=steps, seed=seed).cpu()
    w2_floor = w2(h_ref, h_true)
    tv_args = _tv_args(law, h_ref, T0, tv_points, eg)
    gen = _latent_distances(aligned_latent(x, W, law.B), h_true, w2_floor, tv_args)
    out.update(w2_latent=gen["w2"], w2_floor=w2_floor, w2_excess=gen["w2_excess"])
    if tv_args is not None:
        out.update(tv_latent=gen["tv"], tv_floor=tv_args[2], tv_excess=gen["tv_excess"])
    out.update(subspace_error=subspace_error(W, law.B), off_subspace_var=off_subspace_variance(x, W),
               off_subspace_var_expected=expected_off_subspace_variance(T0))
    if control:
        for name, smp, grid in (("em", "em", "uniform"), ("dpm2m", "dpm2m", "auto")):
            xc = exact_score_samples(law, num_samples, sampler=smp, steps=steps, T0=T0, T=T, grid=grid, seed=seed)
            c = _latent_distances(xc @ law.B.double(), h_true, w2_floor, tv_args)
            out[f"control_{name}_w2_excess"] = c["w2_excess"]
            if tv_args is not None:
                out[f"control_{name}_tv_excess"] = c["tv_excess"]
    return out


def _integral_se(prof: dict, T0: float, T: float) -> float:
    """Standard error of :func:`score_integral_error` from the per-t standard errors (independent
    draws per t), by the derivative of the quadrature with respect to each mse value."""
    base = score_integral_error(prof, T0, T)
    var = 0.0
    for i, se in enumerate(prof["mse_se"]):
        if se <= 0:
            continue
        bumped = list(prof["mse"])
        h = max(1e-6 * abs(bumped[i]), 1e-12)
        bumped[i] += h
        grad = (score_integral_error({"t": prof["t"], "mse": bumped}, T0, T) - base) / h
        var += (grad * se) ** 2
    return math.sqrt(var)


@torch.no_grad()
def evaluate_gmm(pipe: LatentDiTPipeline, cfg: Config, *, num_samples: int | None = None, sampler: str | None = None,
                 steps: int | None = None, seed: int | None = None, progress: bool = False) -> dict:
    """All ground-truth metrics for a model trained on ``data.source = gmm`` (:func:`evaluate_ground_truth`
    on ``cfg``'s ground truth, with ``max(eval.score_times, 16)`` times), plus the earlier keys:
    ``w2_latent_reference`` (= ``w2_floor``), ``score_sigma_error`` (mean over t of sigma(t) sqrt(mse(t)))
    and ``score_error_by_t``."""
    ec = cfg.eval
    num = num_samples or ec.num_samples
    sampler, steps = sampler or ec.sampler, steps or ec.steps
    seed = ec.seed if seed is None else seed
    t0 = time.time()
    m = evaluate_ground_truth(pipe, build_ground_truth(cfg), sampler=sampler, steps=steps, score_points=min(num, 2000),
                              num_samples=num, seed=seed, times=max(ec.score_times, MIN_TIMES))
    sig = [float(sigma(torch.tensor(t, dtype=torch.float64))) for t in m["score_t"]]
    sigma_err = [s * math.sqrt(e) for s, e in zip(sig, m["score_mse"])]
    rel = [math.sqrt(e / max(q, 1e-300)) for e, q in zip(m["score_mse"], m["score_true_sq_norm"])]
    m.update(w2_latent_reference=m["w2_floor"], score_sigma_error=float(np.mean(sigma_err)),
             score_error_by_t={"t": m["score_t"], "rel_err": rel, "sigma_err": sigma_err, "mse": m["score_mse"]},
             num_samples=num, sampler=sampler, steps=steps, seed=seed, eval_seconds=time.time() - t0)
    return m
