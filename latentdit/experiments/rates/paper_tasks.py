"""The tasks of the sections that measure the paper's theorems with the paper's own estimators.

Section ``fstar`` (Thm 3.1 as stated, :func:`run_fstar_task`): the latent network regressed on the
closed-form optimum f* (:class:`latentdit.train.regression.OptimumRegression`, no DSM label noise) on
fresh population draws, W_B = B frozen, trained to a plateau with reduce-on-plateau (a constant
learning rate after warmup, ``train.plateau_decays``) and once more at twice the budget (twice the
step cap and the patience). Section ``estimation`` uses the same schedule.
Row fields:

- ``eps_hat``: max over the profile's times of sigma(t) ||s - grad log p_t||_{L2(P_t)} / sqrt(d0),
  the measured eps of Thm 3.1 (its bound is eps sqrt(d0) / sigma(t) at every t);
  ``sigma_err_max`` = eps_hat sqrt(d0), the bounded quantity itself (the sqrt(d0) claim: its slope
  against d0 at growing capacity is at most 1/2); ``sigma_err`` the per-t profile on ``score_t``;
- ``eps_hat_2x``, ``sigma_err_max_2x``: the same at twice the budget (same seed, same init). A point
  is *converged* when |eps_hat_2x - eps_hat| is below one seed standard error of eps_hat at that
  point (computed across seeds by the analysis, not per row);
- ``eps_hat_F0``: the F = 0 network (preconditioning alone, the backbone's output replaced by 0);
- ``params`` (transformer blocks), ``params_total``, ``steps_trained``(``_2x``), ``converged``
  (``_2x``: stopped by the plateau rule before the cap), ``lr_decays``;
- Def. 3.2's norms (:func:`latentdit.evaluation.norms.def32_norms`): ``norm_W_OV``, ``norm_W_KQ``, ...
  and ``eps_bound``: the smallest eps for which the measured profile meets the bound of Thm 3.1 at
  every t, i.e. ``eps_hat``; ``bound_tightness`` per t: sigma(t) err(t) / (eps_bound sqrt(d0)), the
  measured error as a fraction of that bound (1 at the worst t; how loose a bound uniform in t is
  elsewhere). The theorem's norm constants (C_OV, C_KQ, ...) as functions of eps are given only up
  to O(.) factors, so no numeric bound on the norms can be evaluated: the norms are reported for a
  reader to compare across capacity.

Section ``estimation`` (Thm 3.2 and Cor. 3.2.1, :func:`run_estimation_task`): a learned W_B from a
random Stiefel init trained jointly with f on n points, with the task's ``weighting`` (``none`` is
the theorem's unweighted loss) and ``stop``: ``heldout`` (checkpoint chosen on a held-out fifth of
the n points, trained on the rest), ``erm`` (all n points, run to a plateau of the empirical risk on
those same points: the in-class empirical risk minimiser), ``population`` (n = infinity, fresh
draws). Row fields: those of :func:`latentdit.evaluation.gmm.evaluate_ground_truth` with the
exact-score controls (``score_integral``, ``w2_latent``, ``w2_floor``, ``w2_excess``,
``subspace_error``, ``off_subspace_var``, ``control_em_w2_excess``, ``control_dpm2m_w2_excess``,
``erm_score_*`` of the memoriser), plus, for finite n, the references on the same times
(``kde_score_integral``, ``kde_score_uniform``, ``kde_bandwidth``, ``em_score_integral``,
``em_score_uniform``: :mod:`latentdit.evaluation.references`), ``subspace_error_pca_n``, Def. 3.2's
``norm_*``, the distribution-recovery fields of :func:`recovery_fields`, and ``law`` ("random": the
law drawn from the task's seed; "fixed": a replicate of the law of ``law_seed``, the seed setting
the data draw, the held-out split, the initialisation and the SGD noise only) with ``law_seed``.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from latentdit.build import TrainData
from latentdit.data.empirical import memorisation_fraction
from latentdit.evaluation.gmm import (evaluate_ground_truth, exact_score_samples, log_times, score_error_profile,
                                      score_integral_error, score_uniform_error)
from latentdit.experiments.rates.plan import Budget
from latentdit.experiments.rates.run import (VAL_SEED, build_law, capacity, law_seed, task_config, task_data,
                                             top_subspace)
from latentdit.metrics.distances import aligned_latent, classifier_tv_bound, subspace_error, w2
from latentdit.evaluation.norms import def32_norms
from latentdit.evaluation.references import em_reference, kde_reference
from latentdit.pipeline import LatentDiTPipeline
from latentdit.train import train
from latentdit.train.batches import REFERENCE_POINTS
from latentdit.train.regression import OptimumRegression

RECOVERY_SEED = 5_000


class _ZeroBackbone(torch.nn.Module):
    """F = 0: a backbone whose output is zero, leaving eq. (2.5)'s preconditioning alone."""
    def forward(self, X: torch.Tensor, t: torch.Tensor, y=None) -> torch.Tensor:
        return torch.zeros_like(X)


def preconditioning_only(model):
    """A copy of ``model`` with F = 0 (the baseline of the approximation sweep)."""
    m = copy.deepcopy(model)
    m.backbone = _ZeroBackbone()
    return m


def _profile(score_fn, law, T0: float, T: float, times: int, points: int, seed: int) -> dict:

    g = torch.Generator().manual_seed(seed)
    return score_error_profile(score_fn, law.score, lambda m, t: law.sample(m, t, generator=g),
                               log_times(T0, T, times), points)


def _sigma_errors(prof: dict, d0: int) -> dict:
    errs = [s * max(m, 0.0) ** 0.5 for s, m in zip(prof["sigma"], prof["mse"])]
    top = max(errs)
    return {"sigma_err": errs, "sigma_err_max": top, "eps_hat": top / d0 ** 0.5,
            "bound_tightness": [e / top if top > 0 else 0.0 for e in errs]}


def _train_and_load(cfg, run: Path, data, loss=None) -> tuple[LatentDiTPipeline, dict]:
    """(the exported pipeline of EMA weights, training metadata with ``train_cpu_seconds`` of this call
    added); ``loss`` replaces the run's DSMLoss (:func:`latentdit.train.train`)."""
    cpu = time.process_time()
    if not (run / "model" / "config.json").is_file():
        train(cfg, run, progress=False, data=data, loss=loss)
    pipe = LatentDiTPipeline.from_pretrained(run / "model")
    meta = json.loads((run / "model" / "training.json").read_text())
    pipe.model.eval()
    return pipe, {**meta, "train_cpu_seconds": time.process_time() - cpu}


def run_fstar_task(task: dict) -> dict:
    """Train the f* regression at the task's budget and at twice it; the fields of the module docstring."""
    b = Budget(**task["budget"])
    law, d0, seed = build_law(task), task["d0"], task["seed"]
    base = task_config(task)
    base = replace(base, diffusion=replace(base.diffusion, weighting="sigma2"),
                   optim=replace(base.optim, schedule=task.get("schedule", "constant")),
                   train=replace(base.train, plateau_decays=task.get("plateau_decays", 0)))
    row: dict = {}
    for tag, mult in (("", 1), ("_2x", 2)):
        cfg = replace(base, train=replace(base.train, steps=b.max_steps * mult, patience=b.patience * mult))
        data, _ = task_data(task, law, b)
        run = Path(task["run_dir"]) / "twice" if tag else Path(task["run_dir"])  # the 2x run inside the 1x one
        pipe, meta = _train_and_load(cfg, run, data, OptimumRegression(law, cfg.diffusion.T0, cfg.diffusion.T))
        model = pipe.model
        prof = _profile(lambda x, t, m=model: m(x, t), law, task["T0"], b.T, b.score_times, b.score_points, 2000 + seed)
        errs = _sigma_errors(prof, d0)
        row.update({f"{k}{tag}": v for k, v in errs.items()})
        row[f"train_cpu_seconds{tag}"] = meta["train_cpu_seconds"]
        row.update({f"steps_trained{tag}": meta["steps_trained"], f"converged{tag}": bool(meta.get("converged")),
                    f"lr_decays{tag}": meta.get("lr_decays"), f"population_loss{tag}": meta.get("best_val_loss")})
        if not tag:
            row.update(score_t=prof["t"], score_mse=prof["mse"], score_uniform=errs["eps_hat"],
                       score_integral=score_integral_error(prof, task["T0"], b.T),
                       subspace_error=subspace_error(model.W_B.detach(), law.B), params=capacity(model),
                       params_total=sum(p.numel() for p in model.parameters()), **def32_norms(model))
            f0 = preconditioning_only(model)
            p0 = _profile(lambda x, t: f0(x, t), law, task["T0"], b.T, b.score_times, b.score_points, 2000 + seed)
            row.update(eps_hat_F0=_sigma_errors(p0, d0)["eps_hat"], sigma_err_F0=_sigma_errors(p0, d0)["sigma_err"])
    row.update(eps_bound=row["eps_hat"], train_cpu_seconds=row["train_cpu_seconds"] + row["train_cpu_seconds_2x"])
    return row


def estimation_data(task: dict, law, budget: Budget):
    """(TrainData, training points or None) of an ``estimation`` task (see the module docstring)."""
    seed, n = task["seed"], task["n"]
    if n == 0:
        val = law.sample(budget.val_points, generator=torch.Generator().manual_seed(VAL_SEED + seed)).float()
        ref = law.sample(REFERENCE_POINTS, generator=torch.Generator().manual_seed(seed + 2)).float()
        return TrainData(ref, None, 0, sampler=lambda m, g: law.sample(m, generator=g).float(), val_x=val), None
    x = law.sample(task["n_max"], generator=torch.Generator().manual_seed(seed + 1))[:n].float()
    # erm: the validation loss is the empirical risk on the training points themselves (a plateau of
    # the training objective, no early stopping); heldout: the Trainer splits off train.val_points
    return TrainData(x, None, 0, val_x=x if task["stop"] == "erm" else None), x


def estimation_config(task: dict):
    """The task's Config: a learned random-init W_B, ambient DSM noise, the task's weighting and stop rule."""
    cfg = task_config(task)
    n = task["n"]
    val = max(1, round(task.get("heldout_fraction", 0.2) * n)) if task["stop"] == "heldout" else cfg.train.val_points
    return replace(cfg, encoder=replace(cfg.encoder, init="random", learn=True),
                   optim=replace(cfg.optim, schedule="constant"),
                   diffusion=replace(cfg.diffusion, weighting=task["weighting"]),
                   train=replace(cfg.train, noise="ambient", val_points=val,
                                 plateau_decays=task.get("plateau_decays", 0)))


@torch.no_grad()
def recovery_fields(h_gen: torch.Tensor, law, x_train: torch.Tensor | None, *, T0: float, T: float, sampler: str,
                    steps: int, seed: int, quantile: float = 0.1) -> dict:
    """Distribution recovery (Cor. 3.2.1 (ii)) of generated latents ``h_gen`` (N, d0), already in the
    true latent coordinates (aligned by the best rotation), next to the exact-score sampler control.

    - ``tv_classifier`` / ``tv_classifier_floor`` / ``tv_classifier_control``: the classifier
      two-sample lower bound on TV(generated, p_T0^h) (:func:`latentdit.metrics.distances.classifier_tv_bound`,
      with the true log density log p_T0^h as an extra input), on two true sample sets (its floor) and
      on the exact-score sampler's samples (same sampler, steps and seed). A KDE-based TV fails at
      d0 >= 4 (bandwidth bias dominates), and the model's own density is not available in closed form;
      the classifier bound is valid at every d0 but only a lower bound;
    - ``w2_clean`` / ``w2_clean_floor``: W2 to the clean latent law (t = 0) and its true-vs-true floor;
    - finite n: ``memorisation_fraction`` (:func:`latentdit.data.empirical.memorisation_fraction`):
      the share of generated latents closer to their nearest training latent than the ``quantile``
      of the same distance over fresh draws of p_T0^h (a sampler of the true law gives ``quantile``,
      a memoriser about 1), and ``memorisation_fraction_control`` of the exact-score samples.
    """
    N = h_gen.shape[0]
    g = torch.Generator().manual_seed(RECOVERY_SEED + seed)
    true, ref = law.sample_latent(N, T0, generator=g), law.sample_latent(N, T0, generator=g)
    ctrl = exact_score_samples(law, N, sampler=sampler, steps=steps, T0=T0, T=T, seed=seed) @ law.B.double()

    def tv(a: torch.Tensor) -> float:
        both = torch.cat([a.double(), true])
        return classifier_tv_bound(a.double(), true, seed=seed, features=law.latent_log_prob(both, T0)[:, None])

    clean, clean_ref = law.sample_latent(N, 0.0, generator=g), law.sample_latent(N, 0.0, generator=g)
    out = {"tv_classifier": tv(h_gen), "tv_classifier_floor": tv(ref), "tv_classifier_control": tv(ctrl),
           "w2_clean": w2(h_gen, clean), "w2_clean_floor": w2(clean_ref, clean)}
    if x_train is not None:
        h_train, fresh = x_train.double() @ law.B, law.sample_latent(N, T0, generator=g)
        out["memorisation_fraction"] = memorisation_fraction(h_gen, h_train, fresh, quantile)
        out["memorisation_fraction_control"] = memorisation_fraction(ctrl, h_train, fresh, quantile)
    return out


def reference_fields(x_train: torch.Tensor, law, task: dict, budget: Budget) -> dict:
    """The tuned-KDE and EM plug-in references of the n points on the profile's times (module docstring)."""
    d0, seed, T0 = task["d0"], task["seed"], task["T0"]
    kde, bw = kde_reference(x_train, d0, seed=seed)
    out = {"kde_bandwidth": bw, "subspace_error_pca_n": subspace_error(top_subspace(x_train, d0), law.B)}
    for name, fn in (("kde", kde), ("em", em_reference(x_train, d0, task["components"], seed=seed))):
        prof = _profile(fn, law, T0, budget.T, budget.score_times, budget.score_points, 4000 + seed)
        out.update({f"{name}_score_mse": prof["mse"], f"{name}_score_uniform": score_uniform_error(prof, d0),
                    f"{name}_score_integral": score_integral_error(prof, T0, budget.T)})
    return out


def run_estimation_task(task: dict) -> dict:
    """Train (or resume) an ``estimation`` task and evaluate it: the fields of the module docstring."""
    b = Budget(**task["budget"])
    law, cfg, seed = build_law(task), estimation_config(task), task["seed"]
    data, x = estimation_data(task, law, b)
    pipe, meta = _train_and_load(cfg, Path(task["run_dir"]), data)
    model, W = pipe.model, pipe.model.W_B.detach()
    row = evaluate_ground_truth(pipe, law, sampler=cfg.eval.sampler, steps=cfg.eval.steps, score_points=b.score_points,
                                num_samples=b.eval_samples, seed=1000 + seed, times=b.score_times, control=True,
                                x_train=x)
    row.update(population_loss=meta.get("best_val_loss"), best_val_step=meta.get("best_val_step"),
               steps_trained=meta["steps_trained"], converged=bool(meta.get("converged")),
               lr_decays=meta.get("lr_decays"), params=capacity(model), train_cpu_seconds=meta["train_cpu_seconds"],
               params_total=sum(p.numel() for p in model.parameters()), law=task.get("law", "random"),
               law_seed=law_seed(task), **def32_norms(model))
    with torch.no_grad():
        xg = pipe.sample_model_space(b.eval_samples, sampler=cfg.eval.sampler, steps=cfg.eval.steps,
                                     seed=1000 + seed).cpu()
    row.update(recovery_fields(aligned_latent(xg, W, law.B), law, x, T0=task["T0"], T=b.T, sampler=cfg.eval.sampler,
                               steps=cfg.eval.steps, seed=seed, quantile=task.get("quantile", 0.1)))
    if x is not None:
        row.update(reference_fields(x, law, task, b))
    return row
