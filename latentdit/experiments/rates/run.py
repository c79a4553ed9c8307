"""Running ``latentdit rates``: training and evaluating one configuration on the ground truth
(:func:`run_config`), the resumable parallel sweep (:func:`run_sweep`), the full-run timing probe
and :func:`run_rates`, which runs a plan and writes its report."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Callable

import numpy as np

from latentdit.experiments.rates.claims import analyse
from latentdit.experiments.rates.plan import Budget, Plan, config_key, configurations, plan_for
from latentdit.experiments.rates.report import find_attention_json, summary_dict, write_report
from latentdit.experiments.rates.store import DB_NAME, RateStore
from latentdit.io import atomic_write_json
from latentdit.provenance import provenance_end, provenance_start


def tv_to_density(q_samples: np.ndarray, log_p: Callable[[np.ndarray], np.ndarray], p_samples: np.ndarray) -> float:
    """TV(p, q) between an exact density p and a Gaussian KDE q of ``q_samples`` (n, d).

    Uses TV = E_{h ~ p} [ (1 - q(h) / p(h))_+ ] with ``p_samples`` drawn from p, which needs q only at
    points of p and no integration grid.
    """
    from scipy.stats import gaussian_kde

    q_samples = np.asarray(q_samples, dtype=np.float64)
    p_samples = np.asarray(p_samples, dtype=np.float64)
    kde = gaussian_kde(q_samples.T)
    log_q = kde.logpdf(p_samples.T)
    ratio = np.exp(np.clip(log_q - log_p(p_samples), -50, 50))
    return float(np.mean(np.clip(1.0 - ratio, 0.0, None)))


def build_gmm(D: int, d0: int, components: int, seed: int):
    """Ground truth whose latent law depends on (d0, seed) only and whose subspace B on (D, d0, seed)."""
    import torch

    from latentdit.data.gmm import SubspaceGMM, random_orthonormal

    lat = SubspaceGMM.random(d0, d0, components, seed=seed)
    B = random_orthonormal(D, d0, torch.Generator().manual_seed(1_000_003 * (seed + 1) + D))
    return SubspaceGMM(B, lat.weights, lat.means, lat.eigvecs, lat.eigvals)


def top_subspace(x, d0: int):
    """Top-d0 right singular vectors of the (uncentred) data matrix, i.e. the PCA basis of E[x x^T]
    (as :func:`latentdit.encoder.pca_basis`), by a randomised range finder with power iterations so
    that D = 2048 costs no D x D eigen-decomposition. Float64, (D, d0)."""
    import torch

    x = x.double()
    q = min(d0 + 10, min(x.shape))
    g = torch.Generator().manual_seed(0)
    Y = x.T @ (x @ torch.randn(x.shape[1], q, generator=g, dtype=torch.float64))
    for _ in range(4):
        Y, _ = torch.linalg.qr(Y)
        Y = x.T @ (x @ Y)
    Q, _ = torch.linalg.qr(Y)  # (D, q) spans the dominant right singular space
    _, _, vh = torch.linalg.svd(x @ Q, full_matrices=False)
    return Q @ vh.T[:, :d0]


def canonical_pca(x, d0: int):
    """PCA basis of the uncentred second moment with each column's sign fixed by the data itself
    (positive third moment of the projection), so the latent coordinates do not depend on D."""
    import torch

    W = top_subspace(x, d0)
    third = ((x.double() @ W) ** 3).sum(0)
    sign = torch.where(third < 0, -1.0, 1.0).to(W.dtype)
    return (W * sign[None]).float()


def run_config(params: dict, threads: int = 0) -> dict:
    """Train and evaluate one configuration; returns its metrics (JSON-serialisable)."""
    import torch

    from latentdit.config import Config
    from latentdit.diffusion import OU, sample_times
    from latentdit.metrics.distances import (aligned_latent, expected_off_subspace_variance,
                                             off_subspace_variance, score_errors, subspace_error, w2)
    from latentdit.models.score import LatentScoreNet
    from latentdit.pipeline import LatentDiTPipeline
    from latentdit.sampling import time_grid
    from latentdit.train import ema_decay_at, ema_update, lr_lambda

    if threads > 0:
        torch.set_num_threads(threads)
    b = Budget(**params["budget"])
    D, d0, n, T0, seed = params["D"], params["d0"], params["n"], params["T0"], params["seed"]
    t_start, cpu_start = time.time(), time.process_time()
    gmm = build_gmm(D, d0, params["components"], seed)
    g = torch.Generator().manual_seed(seed + 1)
    x_data = gmm.sample(n, generator=g)
    patch = 2 if d0 % 4 == 0 else 1
    heads = b.heads if b.hidden % b.heads == 0 else 1
    cfg = Config.from_dict({
        "data": {"source": "gmm", "n": n, "ambient_dim": D, "latent_dim": d0,
                 "components": params["components"], "seed": seed},
        "encoder": {"latent_dim": d0, "init": "pca", "learn": False},
        "model": {"block": "dit", "patch": patch, "patching": "auto", "hidden": b.hidden, "depth": b.depth,
                  "heads": heads},
        "diffusion": {"T0": T0, "T": b.T, "weighting": "edm"},
        "optim": {"lr": b.lr, "warmup_steps": b.warmup},
        "train": {"steps": b.steps, "batch_size": b.batch_size, "ema_decay": b.ema_decay, "seed": seed,
                  "device": "cpu"},
        "sample": {"sampler": "dpm2m", "steps": b.sample_steps},
        "eval": {"num_samples": b.eval_samples, "sampler": "dpm2m", "steps": b.sample_steps,
                 "score_times": b.score_times, "seed": 1000 + seed},
    })
    W = canonical_pca(x_data, d0)
    x = x_data.float()
    second = float((x.double() @ W.double()).pow(2).sum(1).mean() / d0)
    torch.manual_seed(seed)
    model = LatentScoreNet(cfg.model, D, d0, encoder_init=W, learn_encoder=False,
                           latent_second_moment=max(second, 1e-8),
                           generator=torch.Generator().manual_seed(seed))
    import copy

    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=b.lr, weight_decay=0.0, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    tg = torch.Generator().manual_seed(seed + 17)
    bs = min(b.batch_size, n)
    for step in range(b.steps):
        idx = torch.randint(0, n, (bs,), generator=tg)
        x0 = x[idx]
        t = sample_times(bs, T0, b.T, generator=tg)
        noise = torch.randn(x0.shape, generator=tg)
        loss = model.loss(x0, t, noise, weighting="edm")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ema_update(ema, model, ema_decay_at(cfg, step))
    loss = float(loss.detach())
    if not math.isfinite(loss):
        raise FloatingPointError(f"training diverged (loss {loss})")
    t_train = time.time() - t_start

    # ---------------------------------------------------------------- evaluation
    t_eval = time.time()
    eg = torch.Generator().manual_seed(2000 + seed)
    with torch.no_grad():
        ts = time_grid(T0, b.T, max(b.score_times - 1, 1), "log")
        errs = score_errors(lambda xx, tt: ema(xx, tt), gmm.score,
                            lambda m, tt: gmm.sample(m, tt, generator=eg), ts, b.score_points)
        xg = LatentDiTPipeline.from_config(ema, cfg).sample_model_space(
            b.eval_samples, sampler="dpm2m", steps=b.sample_steps, seed=1000 + seed).cpu()
    h_gen = aligned_latent(xg, W, gmm.B)
    h_true = gmm.sample_latent(b.eval_samples, T0, generator=eg)
    h_ref = gmm.sample_latent(b.eval_samples, T0, generator=eg)
    # PCA of the training points seen through the forward process at T0
    tt0 = torch.tensor(T0, dtype=torch.float64)
    x_noisy = OU.beta(tt0) * x_data + OU.sigma(tt0).sqrt() * torch.randn(x_data.shape, generator=eg,
                                                                          dtype=torch.float64)
    W_noisy = top_subspace(x_noisy, d0)
    out = {
        "score_sigma_error": errs["sigma_err_mean"],
        "score_sigma_sq_error": float(np.mean(np.square(errs["sigma_err"]))),
        "score_rel_error": errs["rel_err_mean"],
        "subspace_error": subspace_error(W, gmm.B),
        "subspace_error_noisy_pca": subspace_error(W_noisy, gmm.B),
        "c0": float(torch.linalg.eigvalsh(gmm.latent_second_moment())[0]),
        "w2_latent": w2(h_gen, h_true),
        "w2_latent_reference": w2(h_ref, h_true),
        "off_subspace_var": off_subspace_variance(xg, W),
        "off_subspace_var_expected": expected_off_subspace_variance(T0),
        "final_loss": loss,
    }
    if d0 <= 2:
        def log_p(h: np.ndarray) -> np.ndarray:
            return gmm.latent_log_prob(torch.from_numpy(h), T0).numpy()

        hp = gmm.sample_latent(b.tv_points, T0, generator=eg).numpy()
        out["tv_latent"] = tv_to_density(h_gen.numpy(), log_p, hp)
        out["tv_latent_reference"] = tv_to_density(h_ref.numpy(), log_p, hp)
    out["train_seconds"] = t_train
    out["eval_seconds"] = time.time() - t_eval
    out["cpu_seconds"] = time.process_time() - cpu_start
    return out


# ----------------------------------------------------------------------------------------- sweep


def _worker_init(threads: int) -> None:
    # set before torch is imported in the worker; run_config also calls torch.set_num_threads
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(max(1, threads))


def _timed(runner: Callable[[dict, int], dict], params: dict, threads: int) -> tuple[dict, float]:
    t = time.time()
    res = runner(params, threads)
    return res, time.time() - t


def run_sweep(store: RateStore, configs: list[dict], *, runner: Callable[[dict, int], dict] = run_config,
              workers: int = 1, threads: int = 1, progress: bool = True) -> dict:
    """Run every configuration not yet ``done`` in ``store``; record each result the moment it ends.

    ``workers > 1`` uses spawned processes; each configuration runs with ``threads`` torch threads
    (default 1: the models are small, so processes parallelise better than threads, and extra
    threads thrash on a loaded machine). Returns counts ``{"skipped", "ran", "failed"}``.
    """
    from tqdm.auto import tqdm

    done = store.finished_keys()
    pending = [c for c in configs if config_key(c) not in done]
    counts = {"skipped": len(configs) - len(pending), "ran": 0, "failed": 0}
    threads = max(1, threads)
    bar = tqdm(total=len(configs), initial=counts["skipped"], desc="rates", unit="config",
               dynamic_ncols=True, disable=not progress, file=sys.stderr)

    def finish(c: dict, fut_result=None, exc: BaseException | None = None) -> None:
        if exc is not None:
            store.record_failure(c, f"{type(exc).__name__}: {exc}")
            counts["failed"] += 1
        else:
            res, secs = fut_result
            store.record(c, res, secs)
            counts["ran"] += 1
        bar.update(1)
        bar.set_postfix(ran=counts["ran"], failed=counts["failed"])

    try:
        if workers <= 1:
            for c in pending:
                store.mark_running(c)
                try:
                    r = _timed(runner, c, threads)
                except Exception as e:  # noqa: BLE001 - recorded and reported, the sweep goes on
                    finish(c, exc=e)
                else:
                    finish(c, r)
        else:
            ctx = mp.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init,
                                     initargs=(threads,)) as ex:
                futs = {}
                queue = list(pending)
                try:
                    while queue or futs:
                        while queue and len(futs) < workers:
                            c = queue.pop(0)
                            store.mark_running(c)
                            futs[ex.submit(_timed, runner, c, threads)] = c
                        finished, _ = wait(list(futs), return_when=FIRST_COMPLETED)
                        for f in finished:
                            c = futs.pop(f)
                            exc = f.exception()
                            finish(c, None if exc else f.result(), exc)
                except BaseException:
                    for f in futs:
                        f.cancel()
                    raise
    finally:
        bar.close()
    return counts


def estimate_full(workers: int, threads: int = 1, probe_steps: int = 30) -> dict:
    """Time the full plan's budget on one configuration per distinct d0 (training for ``probe_steps``
    steps, extrapolated linearly, plus one full evaluation) and extrapolate to the whole full plan.

    Both wall-clock and CPU time (``time.process_time``) are measured; the CPU-time figure divided by
    the number of workers is what the run takes on otherwise idle cores (one thread per worker)."""
    full = plan_for("full")
    configs = configurations(full)
    wall: dict[int, float] = {}
    cpu: dict[int, float] = {}
    for d0 in sorted({c["d0"] for c in configs}):
        c = next(c for c in configs if c["d0"] == d0)
        probe = {**c, "budget": {**c["budget"], "steps": probe_steps}}
        short = {**probe, "budget": {**probe["budget"], "steps": 1}}
        r1 = run_config(short, threads)
        rp = run_config(probe, threads)
        # per-step cost from the difference of the two runs; fixed costs (data, PCA, eval) from the probe
        step_w = max(rp["train_seconds"] - r1["train_seconds"], 0.0) / (probe_steps - 1)
        wall[d0] = rp["train_seconds"] + rp["eval_seconds"] + step_w * (full.budget.steps - probe_steps)
        frac = rp["cpu_seconds"] / max(rp["train_seconds"] + rp["eval_seconds"], 1e-9)
        step_c = max(rp["cpu_seconds"] - r1["cpu_seconds"], 0.0) / (probe_steps - 1)
        cpu[d0] = rp["cpu_seconds"] + min(step_c, step_w * max(frac, 1e-3)) * (full.budget.steps - probe_steps) \
            if step_c > 0 else frac * wall[d0]
    total_wall = sum(wall[c["d0"]] for c in configs)
    total_cpu = sum(cpu[c["d0"]] for c in configs)
    return {"full_configs": len(configs), "full_workers": workers,
            "full_estimate_seconds": total_wall / max(1, workers),
            "full_estimate_cpu_seconds": total_cpu,
            "full_estimate_idle_seconds": total_cpu / max(1, workers),
            "full_estimate_detail": f"Per configuration by d0 (probe with {threads} torch thread(s)), wall-clock "
            "on this loaded machine / CPU time: "
            + ", ".join(f"d0={k}: {wall[k]:.0f} s / {cpu[k]:.0f} s" for k in wall) + "."}


# ----------------------------------------------------------------------------------------- entry


def _cpu_total() -> float:
    """User + system CPU seconds of this process and its reaped children (the worker processes)."""
    import resource

    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def _json_safe(o):
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_json_safe(v) for v in o]
    return o


def run_rates(out: Path, plan: Plan, *, workers: int = 1, threads: int = 1, progress: bool = True, runner=run_config,
              attention: Path | None = None, estimate: bool = False) -> dict:
    """Run (or resume) the plan's sweeps in ``out`` and write report.md, summary.json and the plots."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prov = provenance_start()
    store = RateStore(out / DB_NAME)
    t0 = time.time()
    cpu0 = _cpu_total()
    try:
        configs = configurations(plan)
        counts = run_sweep(store, configs, runner=runner, workers=workers, threads=threads, progress=progress)
        keys = [config_key(c) for c in configs]
        rows = store.results(keys)
        failures = [(p, m) for p, m in store.failures() if config_key(p) in set(keys)]
    finally:
        store.close()
    wall, cpu_used = time.time() - t0, _cpu_total() - cpu0
    meta = {"configs": len(configs), "finished": len(rows), "failed": len(failures), "workers": workers,
            "ran_now": counts["ran"], "skipped": counts["skipped"], "failures": failures}
    timing_file = out / "timing.json"
    previous = None
    if timing_file.is_file():
        previous = json.loads(timing_file.read_text())
    elif (out / "summary.json").is_file():
        previous = (json.loads((out / "summary.json").read_text()).get("meta") or {}).get("timing")
    if rows and (counts["ran"] > 0 or previous is None):
        # a run that did the work: its own wall-clock; a resumed run that ran nothing keeps the earlier figures
        meta["timing"] = {"wall_seconds": wall, "cpu_seconds": cpu_used, "cpus": os.cpu_count(),
                          "mean_config_seconds": float(np.mean([r["seconds"] for r in rows])),
                          "mean_train_seconds": float(np.mean([r["train_seconds"] for r in rows])),
                          "mean_eval_seconds": float(np.mean([r["eval_seconds"] for r in rows])),
                          "total_config_seconds": float(np.sum([r["seconds"] for r in rows]))}
    elif previous is not None:
        meta["timing"] = previous
    if rows and estimate and "full_estimate_seconds" not in meta.get("timing", {}):
        meta["timing"].update(estimate_full(max(1, workers), threads))
    if meta.get("timing"):
        if counts["ran"] > 0 or "provenance" not in meta["timing"]:
            meta["timing"]["provenance"] = provenance_end(prov)
        atomic_write_json(timing_file, meta["timing"], indent=1)
    analysis = analyse(rows, plan)
    write_report(out, plan, rows, analysis, meta=meta, attention=find_attention_json(attention))
    summary = _json_safe(summary_dict(analysis, plan, meta))
    summary["provenance"] = provenance_end(prov)
    atomic_write_json(out / "summary.json", summary, indent=1)
    return summary
