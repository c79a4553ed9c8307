"""Running ``latentdit rates``: one task = one :func:`latentdit.train.train` run plus its evaluation
(:func:`run_task`), the resumable sweep (:func:`run_sweep`), the timing probe (:func:`estimate`) and
:func:`run_rates`, which runs a plan and writes its report.

Every task is a :class:`latentdit.config.Config` plus a seed trained by the library's own Trainer on
the task's ground truth (``TrainData`` with the law's points, a population sampler for n = infinity,
fresh held-out points for the validation loss and the encoder basis), in its own run directory
``OUT/runs/<key hash>`` (so an interrupted task resumes from its checkpoints), and evaluated by
:func:`latentdit.evaluation.gmm.evaluate_ground_truth` on the exported EMA weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np

from latentdit.experiments.rates.attention_phase import attention_phase, to_rows
from latentdit.experiments.rates.plan import Budget, Plan, config_key, plan_for, tasks
from latentdit.experiments.rates.report import build_report
from latentdit.experiments.rates.rows import ROWS_NAME, plan_row, read_rows, with_defaults, write_rows
from latentdit.experiments.rates.store import DB_NAME, RateStore
from latentdit.experiments.rates.timing import add_session
from latentdit.io import atomic_write_json
from latentdit.provenance import provenance_end, provenance_start

RUNS_DIR = "runs"
PAPER_SECTIONS = ("fstar", "estimation")  # run by latentdit.experiments.rates.paper_tasks
VAL_SEED = 7_777  # the held-out population points depend on the task's seed only: the same for every n


def build_gmm(D: int, d0: int, components: int, seed: int):
    """Ground truth whose latent law depends on (d0, seed) only and whose subspace B on (D, d0, seed)."""
    import torch

    from latentdit.data.gmm import SubspaceGMM, random_orthonormal

    lat = SubspaceGMM.random(d0, d0, components, seed=seed)
    B = random_orthonormal(D, d0, torch.Generator().manual_seed(1_000_003 * (seed + 1) + D))
    return SubspaceGMM(B, lat.weights, lat.means, lat.eigvecs, lat.eigvals)


def law_seed(task: dict) -> int:
    """The seed of the task's law: its ``law_seed`` (a fixed-law replicate) or else its seed."""
    return task.get("law_seed", task["seed"])


def build_law(task: dict):
    """The task's ground truth: a block-product law (section ``blocks``) or a subspace mixture of the
    task's :func:`law_seed`."""
    if task["section"] == "blocks":
        from latentdit.data.gmm import BlockProductLaw

        return BlockProductLaw.random(task["D"], task["blocks"], task["block_dim"], task["components"],
                                      seed=task["seed"], coupled=task["coupled"])
    if task["section"] == "encoder":  # the library's own ground truth of the run's [data] section
        from latentdit.build import build_ground_truth

        return build_ground_truth(task_config(task))
    return build_gmm(task["D"], task["d0"], task["components"], law_seed(task))


def top_subspace(x, d0: int):
    """Top-d0 PCA basis of E[x x^T] by the randomised range finder (float64)."""
    from latentdit.firststage.linear import pca_basis
    import torch

    return pca_basis(x, d0, randomized=True, dtype=torch.float64)[0]


def canonical_pca(x, d0: int):
    """PCA basis of the uncentred second moment with each column's sign fixed by the data itself
    (positive third moment of the projection), so the latent coordinates do not depend on D."""
    import torch

    W = top_subspace(x, d0)
    third = ((x.double() @ W) ** 3).sum(0)
    return (W * torch.where(third < 0, -1.0, 1.0).to(W.dtype)[None]).float()


def task_config(task: dict):
    """The :class:`Config` a task trains with (the data section records the ground truth's sizes)."""
    from latentdit.config import Config

    b = Budget(**task["budget"])
    d0 = task["d0"]
    hidden, depth = task.get("width", b.hidden), task.get("depth", b.depth)
    patch = task["block_dim"] if task["section"] == "blocks" else (2 if d0 <= 4 else 4)
    model = {"block": task.get("block", "dit"), "patch": patch, "patching": "1d", "hidden": hidden, "depth": depth,
             "heads": b.heads if hidden % b.heads == 0 else 1}
    for k in ("paper_heads", "paper_head_dim", "paper_ff"):
        if k in task:
            model[k] = task[k]
    seed, learn = task["seed"], task["section"] in ("encoder", "encoder_noisy")
    return Config.from_dict({
        "data": {"source": "gmm", "n": task["n"], "ambient_dim": task["D"], "latent_dim": d0,
                 "components": task["components"], "seed": law_seed(task)},
        "encoder": {"latent_dim": d0, "init": "random" if learn else "pca", "learn": learn},
        "model": model,
        "diffusion": {"T0": task["T0"], "T": b.T, "weighting": "edm"},
        "optim": {"lr": b.lr, "warmup_steps": b.warmup},
        "train": {"steps": b.max_steps, "batch_size": b.batch_size, "ema_decay": b.ema_decay, "seed": seed,
                  "device": "cpu", "log_every": max(b.val_every, 1), "checkpoint_every": b.checkpoint_every,
                  "val_every": b.val_every, "patience": b.patience, "val_points": b.val_points,
                  "val_min_delta": b.val_min_delta, "eval_every": task.get("eval_every", 0),
                  "plateau_decays": task.get("plateau_decays", 0), "noise": "ambient" if learn else b.noise},
        "sample": {"sampler": "dpm2m", "steps": b.sample_steps},
        "eval": {"num_samples": b.eval_samples, "sampler": "dpm2m", "steps": b.sample_steps,
                 "score_times": b.score_times, "seed": 1000 + seed},
    })


def task_data(task: dict, law, budget: Budget):
    """(TrainData, training points or None): nested subsets of one seeded draw for finite n; a
    population sampler for n = 0; held-out population points and the encoder basis shared by every
    n of the seed."""
    import torch

    from latentdit.build import TrainData
    from latentdit.train.batches import REFERENCE_POINTS, default_data

    seed, n, d0 = task["seed"], task["n"], task["d0"]
    if task["section"] == "encoder":
        return default_data(task_config(task)), None
    tau = task.get("tau", 0.0)  # encoder_noisy: x = B h + tau xi, full-rank noise off the subspace

    def draw(m: int, g):
        x = law.sample(m, generator=g)
        return x + tau * torch.randn(x.shape, generator=g, dtype=x.dtype) if tau > 0 else x

    val = draw(budget.val_points, torch.Generator().manual_seed(VAL_SEED + seed)).float()
    ref = draw(REFERENCE_POINTS, torch.Generator().manual_seed(seed + 2)).float()
    x = draw(max(task.get("n_max", n), n), torch.Generator().manual_seed(seed + 1))[:n].float() if n > 0 else ref
    if task["section"] == "encoder_noisy":
        return TrainData(x, None, 0, val_x=val), x
    # one encoder basis for every n of a seed (PCA of a reference draw; exact on noiseless data), so that
    # the latent coordinates the network sees do not change with n or D
    basis = law.B.float() if task.get("exact_encoder") or task["section"] == "blocks" else canonical_pca(ref, d0)
    sampler = None
    if n == 0:
        def sampler(m, g):
            return law.sample(m, generator=g).float()
    return TrainData(x, None, 0, sampler=sampler, basis=basis, val_x=val), (x if n > 0 else None)


def capacity(model) -> int:
    """Parameters of the transformer blocks (attention and feed-forward, adaLN of the DiT block): the
    capacity axis of the approximation sweep, without the time embedding and the input/output maps."""
    return sum(p.numel() for n, p in model.backbone.named_parameters() if n.split(".")[0] in ("blocks", "attn", "ff"))


def _paper_row(task: dict, t_start: float, cpu_start: float) -> dict:
    """A task of the sections with the paper's own estimators (no Trainer run)."""
    from latentdit.experiments.rates.paper_tasks import run_estimation_task, run_fstar_task

    row = (run_fstar_task if task["section"] == "fstar" else run_estimation_task)(task)
    return {**row, "seconds_total": time.time() - t_start, "cpu_seconds": time.process_time() - cpu_start}


def _trained(task: dict, cfg, data):
    """Train the task's run directory unless its export exists; returns (pipeline, training.json)."""
    from latentdit.evaluation import snapshot_metrics
    from latentdit.pipeline import LatentDiTPipeline
    from latentdit.train import TrainCallbacks, train

    run = Path(task["run_dir"])
    if not (run / "model" / "config.json").is_file():
        train(cfg, run, progress=False, data=data, callbacks=TrainCallbacks(evaluate=snapshot_metrics(cfg)))
    return LatentDiTPipeline.from_pretrained(run / "model"), json.loads((run / "model" / "training.json").read_text())


def _encoder_curve(run: Path) -> dict:
    """The Trainer's periodic evaluation, one point per eval_every steps."""
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    recs = [r for r in recs if "eval_subspace_error" in r]
    return dict(curve_steps=[r["step"] for r in recs], curve_subspace_error=[r["eval_subspace_error"] for r in recs],
                curve_score_integral=[r.get("eval_score_integral") for r in recs])


def _sample_metrics(task: dict, pipe, law, b: Budget, cfg, x_train) -> dict:
    """Latent W2 of generated samples to clean draws (and its two-sample floor), and with training
    points the PCA subspace error and the memorisation fraction."""
    import torch

    from latentdit.data.empirical import memorisation_fraction
    from latentdit.metrics.distances import aligned_latent, subspace_error, w2

    seed, model = task["seed"], pipe.model
    eg = torch.Generator().manual_seed(3000 + seed)
    with torch.no_grad():
        xg = pipe.sample_model_space(
            b.eval_samples, sampler=cfg.eval.sampler, steps=cfg.eval.steps, seed=1000 + seed).cpu()
    h_gen = aligned_latent(xg, model.W_B.detach(), law.B)
    clean = law.sample_latent(b.eval_samples, 0.0, generator=eg)
    out = {"w2_clean": w2(h_gen, clean),
           "w2_clean_floor": w2(law.sample_latent(b.eval_samples, 0.0, generator=eg), clean)}
    if x_train is not None:
        out["subspace_error_pca_n"] = subspace_error(top_subspace(x_train, task["d0"]), law.B)
        h_train = x_train.double() @ law.B
        fresh = law.sample_latent(b.eval_samples, cfg.diffusion.T0, generator=eg)
        out["memorisation_fraction"] = memorisation_fraction(h_gen, h_train, fresh, task.get("quantile", 0.1))
    return out


def run_task(task: dict, threads: int = 1) -> dict:
    """Train (or resume) and evaluate one task; returns its row metrics (JSON-serialisable)."""
    import torch

    from latentdit.evaluation.gmm import evaluate_ground_truth
    from latentdit.metrics.distances import subspace_error

    if threads > 0:
        torch.set_num_threads(threads)
    t_start, cpu_start = time.time(), time.process_time()
    if task["section"] in PAPER_SECTIONS:
        return _paper_row(task, t_start, cpu_start)
    b = Budget(**task["budget"])
    law, cfg = build_law(task), task_config(task)
    data, x_train = task_data(task, law, b)
    pipe, meta = _trained(task, cfg, data)
    model = pipe.model
    t_train, cpu_train = time.time() - t_start, time.process_time() - cpu_start
    if task["section"] == "encoder_noisy":  # the law of the data is not the mixture: subspaces only
        return {"subspace_error": subspace_error(model.W_B.detach(), law.B),
                "subspace_error_pca": subspace_error(top_subspace(x_train, task["d0"]), law.B),
                "population_loss": meta.get("best_val_loss"), "steps_trained": meta["steps_trained"],
                "converged": bool(meta.get("converged")), "train_seconds": t_train, "eval_seconds": 0.0,
                "train_cpu_seconds": cpu_train, "cpu_seconds": time.process_time() - cpu_start}
    ev = evaluate_ground_truth(pipe, law, sampler=cfg.eval.sampler, steps=cfg.eval.steps, score_points=b.score_points,
                               num_samples=b.eval_samples, tv_points=b.tv_points, seed=1000 + task["seed"],
                               times=b.score_times, x_train=x_train if task["section"] == "sample" else None)
    row = {**ev, "population_loss": meta.get("best_val_loss"), "best_val_step": meta.get("best_val_step"),
           "steps_trained": meta["steps_trained"], "converged": bool(meta.get("converged")),
           "params": capacity(model), "params_total": sum(p.numel() for p in model.parameters())}
    if task["section"] == "encoder":
        row.update(_encoder_curve(Path(task["run_dir"])))
    if task["section"] in ("sample", "t0"):
        row.update(_sample_metrics(task, pipe, law, b, cfg, x_train))
    row.update(train_seconds=t_train, eval_seconds=time.time() - t_start - t_train, train_cpu_seconds=cpu_train,
               cpu_seconds=time.process_time() - cpu_start)
    return row


# ----------------------------------------------------------------------------------------- sweep


def run_dir_for(out: Path, task: dict) -> Path:
    return Path(out) / RUNS_DIR / hashlib.sha1(config_key(task).encode()).hexdigest()[:16]


def run_sweep(store: RateStore, todo: list[dict], *, out: Path, runner: Callable[[dict, int], dict] = run_task,
              workers: int = 1, threads: int = 1, scheduler: str | None = None, progress: bool = True) -> dict:
    """Run every task not yet ``done`` in ``store`` through :func:`scheduler.run_tasks`; the driver
    records each result the moment it arrives. Returns counts ``{"skipped", "ran", "failed"}``."""
    from latentdit.experiments.rates.scheduler import run_tasks

    done = store.finished_keys()
    pending = [t for t in todo if config_key(t) not in done]
    counts = {"skipped": len(todo) - len(pending), "ran": 0, "failed": 0}

    def bare(task: dict) -> dict:
        return {k: v for k, v in task.items() if k != "run_dir"}

    def on_result(task: dict, value, seconds: float) -> None:
        if isinstance(value, BaseException):
            store.record_failure(bare(task), f"{type(value).__name__}: {value}")
            counts["failed"] += 1
        else:
            store.record(bare(task), value, seconds)
            counts["ran"] += 1

    submitted = [{**t, "run_dir": str(run_dir_for(out, t))} for t in pending]
    run_tasks(runner, submitted, on_result=on_result, scheduler=scheduler, workers=max(1, workers),
              threads=max(1, threads), progress=progress, on_start=lambda t: store.mark_running(bare(t)))
    return counts


def _size(task: dict) -> float:
    """A cost proxy of a task's training step: (tokens x width^2 x depth + D x width) x batch."""
    b = task["budget"]
    w, K = task.get("width", b["hidden"]), task.get("depth", b["depth"])
    batch = min(b["batch_size"], task["n"]) if task["n"] > 0 else b["batch_size"]
    return (task["d0"] * w * w * K + task["D"] * w) * batch


def estimate(plan: Plan, out: Path, *, threads: int = 1, cores: int = 2, probe_steps: int = 20) -> dict:
    """CPU-time estimate of ``plan`` on ``cores`` otherwise idle cores, every task at its step cap.

    Per section, the smallest and the largest task (by :func:`_size`) run for 1 and ``probe_steps``
    steps with their full evaluation; the per-step and fixed CPU costs are interpolated linearly in
    the size to every task; a pass over the held-out points costs a third of a training step per
    batch, a periodic evaluation about one final evaluation. An upper estimate: tasks that stop
    early cost less. CPU time, not wall-clock, so that a loaded machine does not inflate it."""
    per: dict[str, float] = {}
    todo = tasks(plan)
    for section in dict.fromkeys(t["section"] for t in todo):
        group = [t for t in todo if t["section"] == section]
        ends = [min(group, key=_size), max(group, key=_size)]
        fit = []
        for i, t in enumerate(ends):
            cost = []
            for steps in (1, probe_steps):
                probe = {**t, "budget": {**t["budget"], "max_steps": steps, "val_every": steps, "patience": 0},
                         "run_dir": str(Path(out) / "probe" / f"{plan.name}_{section}_{i}_{steps}")}
                r = run_task(probe, threads)
                cost.append((r["train_cpu_seconds"], r["cpu_seconds"] - r["train_cpu_seconds"]))
            fit.append((_size(t), max(cost[1][0] - cost[0][0], 0.0) / (probe_steps - 1), cost[0][0], cost[1][1]))
        (s0, st0, f0, e0), (s1, st1, f1, e1) = fit

        def lerp(a: float, b: float, x: float) -> float:
            return a if s1 == s0 else a + (b - a) * (x - s0) / (s1 - s0)

        total = 0.0
        for t in group:
            b, x = t["budget"], _size(t)
            step, fixed, ev = lerp(st0, st1, x), lerp(f0, f1, x), lerp(e0, e1, x)
            evals = b["max_steps"] // t["eval_every"] if t.get("eval_every") else 0
            total += (fixed + step * b["max_steps"] * (1 + b["val_points"] / b["batch_size"] / 3 / b["val_every"])
                      + ev * (1 + evals))
        per[section] = total / cores
    return {"estimate_seconds": per, "estimate_total_seconds": float(sum(per.values())), "estimate_cores": cores,
            "estimate_tasks": {s: sum(t["section"] == s for t in todo) for s in per},
            "estimate_note": f"CPU time of {probe_steps}-step probes of each section's smallest and largest task "
            f"({threads} thread(s)), interpolated to every task at its step cap, on {cores} idle cores (an upper "
            "estimate: early stopping shortens most tasks)"}


# ----------------------------------------------------------------------------------------- entry


def _cpu_total() -> float:
    import resource

    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime




def run_rates(out: Path, plan: Plan, *, workers: int = 1, threads: int = 1, scheduler: str | None = None,
              progress: bool = True, runner=run_task, attention: bool = True, with_estimate: bool = False) -> dict:
    """Run (or resume) the plan's tasks in ``out`` and write summary.json, report.md and the plots
    (with the attention-criterion section unless ``attention=False``; ``with_estimate``: also time
    the full plan, :func:`estimate`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prov = provenance_start()
    store = RateStore(out / DB_NAME)
    todo = tasks(plan)
    before = store.done_times(config_key(t) for t in todo)
    t0, cpu0 = time.time(), _cpu_total()
    try:
        counts = run_sweep(store, todo, out=out, runner=runner, workers=workers, threads=threads,
                           scheduler=scheduler, progress=progress)
        keys = {config_key(t) for t in todo}
        rows = store.results(keys)
        failures = [(p, m) for p, m in store.failures() if config_key(p) in keys]
        raw_rows = store.rows(keys)
    finally:
        store.close()
    meta = {"plan": plan.name, "configs": len(todo), "finished": len(rows), "failed": len(failures), "workers": workers,
            "ran_now": counts["ran"], "skipped": counts["skipped"], "failures": failures}
    timing_file = out / "timing.json"
    if rows and counts["ran"] > 0:
        meta["timing"] = add_session(timing_file, plan.name, {
            "wall_seconds": time.time() - t0, "cpu_seconds": _cpu_total() - cpu0, "cpus": os.cpu_count(),
            "tasks_ran": counts["ran"], "mean_task_seconds": float(np.mean([r["seconds"] for r in rows])),
            "provenance": provenance_end(prov)}, before)
    elif timing_file.is_file():  # a resumed run that ran nothing keeps the earlier figures
        meta["timing"] = json.loads(timing_file.read_text())
    elif rows and before:  # every earlier driver was stopped before it wrote timing.json
        meta["timing"] = add_session(timing_file, plan.name, None, before)
    if with_estimate and meta.get("timing") is not None and "estimate_total_seconds" not in meta["timing"]:
        meta["timing"].update(estimate(plan_for("full"), out, threads=threads))
    if meta.get("timing"):
        meta["timing"]["provenance"] = meta["timing"].get("provenance") or provenance_end(prov)
        atomic_write_json(timing_file, meta["timing"], indent=1)
    att = attention_phase(out, quick=plan.name != "full") if attention else None
    # the report is rebuilt from the rows file alone (latentdit rates --report-only reads the same file)
    write_rows(out / ROWS_NAME, [with_defaults(r, plan.name) for r in [plan_row(plan, provenance_end(prov), meta.get("timing")), *raw_rows]]
               + ([with_defaults(r, plan.name) for r in to_rows(att)] if att else []))
    summary = build_report(out, read_rows(out / ROWS_NAME))
    return {**summary, "meta": {**summary["meta"], **{k: meta[k] for k in ("workers", "ran_now", "skipped")}}}
