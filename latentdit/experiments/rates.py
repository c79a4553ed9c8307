"""The paper's statistical claims, measured: sweeps on the ground truth, fitted rates and a report.

``latentdit rates --out DIR [--quick] [--workers N]`` trains small latent DiTs on the subspace
Gaussian mixture of DESIGN.md Sec. 1 and measures, per configuration (D, d0, n, T0, seed):

- ``score_sigma_error``: sigma(t) ||s_W - grad log p_t||_{L2(P_t)} averaged over a log grid of
  t in [T0, T] (the quantity Thm 3.1 bounds by eps sqrt(d0), independent of D);
- ``score_sigma_sq_error``: the same average of the squared quantity (used for the n-rate of
  Thm 3.2; since sigma(t) <= 1 it is bounded by the unweighted average the theorem controls);
- ``score_rel_error``: ||s_W - grad log p_t|| / ||grad log p_t||, averaged the same way;
- ``subspace_error``: ||W_B W_B^T - B B^T||_F^2 of the model's encoder (PCA of the n clean
  training points, frozen) and ``subspace_error_noisy_pca`` (PCA of the n points observed through
  the forward process at T0, a subspace estimate whose error is statistical rather than at the
  rounding floor);
- ``w2_latent`` (and its same-size true-vs-true floor ``w2_latent_reference``) and, for d0 <= 2,
  ``tv_latent`` / ``tv_latent_reference``: the generated latent law after the best orthogonal
  alignment against the exact latent law at T0 (TV by a Gaussian KDE of the aligned samples);
- ``off_subspace_var`` against ``1 - exp(-T0)`` (Cor. 3.2.1 iii).

Sweeps (>= 3 seeds per point): D at fixed d0, d0 at fixed D, n (at d0 = 16 and, for TV, at d0 = 2),
and T0. The latent law depends on (d0, seed) only, so the D sweep changes nothing but the ambient
dimension. Every finished configuration is written at once to ``DIR/rates.sqlite``; a rerun
skips finished configurations. Training budget: a fixed number of optimiser steps per mode for every
configuration, so that each sweep varies only its own quantity; at large n the error is therefore
limited by optimisation as well as by the sample size (the report says so).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import sqlite3
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

DB_NAME = "rates.sqlite"

# ----------------------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class Budget:
    """Per-configuration training and evaluation budget (identical for every configuration of a plan)."""

    steps: int = 2000
    batch_size: int = 256
    hidden: int = 64
    depth: int = 4
    heads: int = 4
    lr: float = 1e-3
    warmup: int = 100
    ema_decay: float = 0.999
    T: float = 10.0
    eval_samples: int = 2000
    sample_steps: int = 50
    score_times: int = 12
    score_points: int = 2000
    tv_points: int = 20000


@dataclass(frozen=True)
class Plan:
    name: str
    seeds: tuple[int, ...]
    D_values: tuple[int, ...] = (32, 128, 512, 2048)
    d0_values: tuple[int, ...] = (4, 16, 64)
    n_values: tuple[int, ...] = (500, 2000, 8000, 32000)
    T0_values: tuple[float, ...] = (1e-3, 1e-2, 1e-1)
    tv_d0: int = 2
    base_D: int = 128
    base_d0: int = 16
    base_n: int = 8000
    base_T0: float = 1e-3
    components: int = 8
    budget: Budget = field(default_factory=Budget)


def plan_for(mode: str) -> Plan:
    """``full`` (the reference run), ``quick`` (same sweeps, smaller model and budget) or ``micro`` (tests)."""
    if mode == "full":
        return Plan("full", seeds=(0, 1, 2, 3, 4))
    if mode == "quick":
        return Plan("quick", seeds=(0, 1, 2),
                    budget=Budget(steps=200, batch_size=128, hidden=32, depth=2, heads=2, lr=2e-3, warmup=20,
                                  ema_decay=0.97, eval_samples=600, sample_steps=20, score_times=6,
                                  score_points=600, tv_points=6000))
    if mode == "micro":
        return Plan("micro", seeds=(0, 1, 2), D_values=(8, 16), d0_values=(4, 16), n_values=(60, 240),
                    T0_values=(1e-3, 1e-1), base_D=16, base_d0=4, base_n=60, components=2,
                    budget=Budget(steps=4, batch_size=32, hidden=8, depth=1, heads=1, lr=1e-3, warmup=1,
                                  ema_decay=0.5, eval_samples=64, sample_steps=3, score_times=2,
                                  score_points=64, tv_points=256))
    raise ValueError(f"unknown mode {mode!r}; choose full, quick or micro")


def _point(plan: Plan, **kw) -> dict:
    p = {"D": plan.base_D, "d0": plan.base_d0, "n": plan.base_n, "T0": plan.base_T0}
    p.update(kw)
    return p


def sweeps(plan: Plan) -> dict[str, tuple[str, list[dict]]]:
    """Sweep name -> (swept parameter, list of points without seed)."""
    return {
        "D": ("D", [_point(plan, D=D) for D in plan.D_values]),
        "d0": ("d0", [_point(plan, d0=d0) for d0 in plan.d0_values]),
        "n": ("n", [_point(plan, n=n) for n in plan.n_values]),
        "T0": ("T0", [_point(plan, T0=T0) for T0 in plan.T0_values]),
        "tv": ("n", [_point(plan, d0=plan.tv_d0, n=n) for n in plan.n_values]),
    }


def config_key(params: dict) -> str:
    return json.dumps(params, sort_keys=True, separators=(",", ":"))


def configurations(plan: Plan) -> list[dict]:
    """Unique configurations of all sweeps (shared points run once), each with its seed and budget."""
    seen, out = set(), []
    b = asdict(plan.budget)
    for _, (_, points) in sweeps(plan).items():
        for p in points:
            for s in plan.seeds:
                c = {**p, "seed": s, "components": plan.components, "budget": b}
                k = config_key(c)
                if k not in seen:
                    seen.add(k)
                    out.append(c)
    return out


# ----------------------------------------------------------------------------------------- store


class RateStore:
    """SQLite record of configurations: ``running`` when started, ``done`` (with its metrics) when finished.

    Each result is committed at once, so killing a sweep loses at most the configurations that were
    running; anything not ``done`` is run again by the next sweep.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path))
        self.db.execute("CREATE TABLE IF NOT EXISTS runs (key TEXT PRIMARY KEY, params TEXT NOT NULL, "
                        "status TEXT NOT NULL, result TEXT, seconds REAL, updated REAL)")
        self.db.commit()

    def close(self) -> None:
        self.db.close()

    def _put(self, key: str, params: dict, status: str, result: dict | None, seconds: float | None) -> None:
        self.db.execute("INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?)",
                        (key, json.dumps(params), status, None if result is None else json.dumps(result),
                         seconds, time.time()))
        self.db.commit()

    def mark_running(self, params: dict) -> None:
        self._put(config_key(params), params, "running", None, None)

    def record(self, params: dict, result: dict, seconds: float) -> None:
        self._put(config_key(params), params, "done", result, seconds)

    def record_failure(self, params: dict, message: str) -> None:
        self._put(config_key(params), params, "failed", {"error": message}, None)

    def finished_keys(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT key FROM runs WHERE status = 'done'")}

    def status(self, params: dict) -> str | None:
        r = self.db.execute("SELECT status FROM runs WHERE key = ?", (config_key(params),)).fetchone()
        return r[0] if r else None

    def results(self, keys: Iterable[str] | None = None) -> list[dict]:
        """Finished rows as ``{**params, **metrics, "seconds": s}`` (restricted to ``keys`` if given)."""
        want = None if keys is None else set(keys)
        out = []
        for key, params, result, seconds in self.db.execute(
                "SELECT key, params, result, seconds FROM runs WHERE status = 'done'"):
            if want is not None and key not in want:
                continue
            out.append({**json.loads(params), **json.loads(result), "seconds": seconds})
        return out

    def failures(self) -> list[tuple[dict, str]]:
        return [(json.loads(p), json.loads(r)["error"]) for p, r in
                self.db.execute("SELECT params, result FROM runs WHERE status = 'failed'")]


# ----------------------------------------------------------------------------------------- metrics


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
    from latentdit.diffusion import sample_times, sigma
    from latentdit.evaluate import generate
    from latentdit.metrics.distances import (aligned_latent, expected_off_subspace_variance,
                                             off_subspace_variance, score_errors, subspace_error, w2)
    from latentdit.models.score import LatentScoreNet
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
        xg = generate(ema, cfg, b.eval_samples, sampler="dpm2m", steps=b.sample_steps, seed=1000 + seed).cpu()
    h_gen = aligned_latent(xg, W, gmm.B)
    h_true = gmm.sample_latent(b.eval_samples, T0, generator=eg)
    h_ref = gmm.sample_latent(b.eval_samples, T0, generator=eg)
    # PCA of the training points seen through the forward process at T0
    tt0 = torch.tensor(T0, dtype=torch.float64)
    x_noisy = torch.exp(-0.5 * tt0) * x_data + sigma(tt0).sqrt() * torch.randn(x_data.shape, generator=eg,
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


# ----------------------------------------------------------------------------------------- analysis


def loglog_slope(x: Iterable[float], y: Iterable[float]) -> float:
    lx, ly = np.log(np.asarray(list(x), float)), np.log(np.asarray(list(y), float))
    return float(np.polyfit(lx, ly, 1)[0])


def fit_slopes(points: list[tuple[int, float, float]], level: float = 0.95) -> dict:
    """Per-seed log-log least-squares slopes from (seed, x, y) triples, their mean and a t-interval.

    Non-positive y values are dropped. With one usable seed the interval is that seed's slope +- inf.
    """
    from scipy.stats import t as student_t

    by_seed: dict[int, list[tuple[float, float]]] = {}
    for s, x, y in points:
        if y is not None and np.isfinite(y) and y > 0:
            by_seed.setdefault(s, []).append((x, y))
    slopes = [loglog_slope(*zip(*v)) for v in by_seed.values() if len({a for a, _ in v}) >= 2]
    if not slopes:
        return {"slope": float("nan"), "ci": [float("nan"), float("nan")], "seed_slopes": [], "n_seeds": 0}
    m = float(np.mean(slopes))
    if len(slopes) < 2:
        return {"slope": m, "ci": [-math.inf, math.inf], "seed_slopes": slopes, "n_seeds": 1}
    se = float(np.std(slopes, ddof=1) / math.sqrt(len(slopes)))
    half = float(student_t.ppf(0.5 + level / 2, len(slopes) - 1)) * se
    return {"slope": m, "ci": [m - half, m + half], "seed_slopes": slopes, "n_seeds": len(slopes)}


def verdict_upper(ci: list[float], predicted: float) -> str:
    """The claim bounds the growth exponent from above (error <= C x^predicted)."""
    lo, hi = ci
    if math.isnan(lo) or math.isnan(hi):
        return "inconclusive"
    if hi < predicted:
        return "tighter than the bound"
    if lo > predicted:
        return "violated"
    return "consistent"


@dataclass
class Claim:
    key: str
    title: str
    claim: str
    sweep: str
    metric: str
    predicted: float
    kind: str = "upper"  # upper: slope <= predicted; equal: metric ~ reference exactly
    reference: str | None = None  # metric with the finite-sample floor / the exact expected value
    xlabel: str = ""
    ylabel: str = ""
    note: str = ""


CLAIMS = [
    Claim("score_vs_D", "Score error does not depend on D (Thm 3.1)",
          "sigma(t) ||s_W - grad log p_t||_{L2(P_t)} <= eps sqrt(d0): no dependence on the ambient dimension D.",
          "D", "score_sigma_error", 0.0, xlabel="ambient dimension D", ylabel="sigma-scaled score error"),
    Claim("score_vs_d0", "Score error grows at most like sqrt(d0) (Thm 3.1)",
          "sigma(t) ||s_W - grad log p_t||_{L2(P_t)} <= eps sqrt(d0).",
          "d0", "score_sigma_error", 0.5, xlabel="latent dimension d0", ylabel="sigma-scaled score error"),
    Claim("score_vs_n", "Score estimation error falls with n (Thm 3.2)",
          "Average squared score error over [T0, T] is O~(xi / (T0 T)), xi ~ n^{-1/3} (+ eps^2): exponent -1/3 "
          "in n. Measured as the average over a log grid of t of sigma(t)^2 ||s_W - grad log p_t||^2, which the "
          "unweighted average bounds since sigma(t) <= 1.",
          "n", "score_sigma_sq_error", -1.0 / 3, xlabel="training samples n",
          ylabel="mean sigma^2 x squared score error"),
    Claim("subspace_vs_n", "Subspace recovery (Cor. 3.2.1 i)",
          "||W_B W_B^T - B B^T||_F^2 = O~(xi / c0), xi ~ n^{-1/3}: exponent -1/3 in n.",
          "n", "subspace_error", -1.0 / 3, reference="subspace_error_noisy_pca", xlabel="training samples n",
          ylabel="||W W^T - B B^T||_F^2"),
    Claim("subspace_noisy_pca_vs_n", "Subspace recovery from noised observations (Cor. 3.2.1 i, statistical)",
          "Same bound, for the PCA subspace of the n training points observed through the forward process at T0 "
          "(x_T0 = beta x + sqrt(sigma) z): an estimate whose error is statistical.",
          "n", "subspace_error_noisy_pca", -1.0 / 3, xlabel="training samples n",
          ylabel="||W W^T - B B^T||_F^2 (noisy PCA)"),
    Claim("latent_w2_vs_n", "Latent distribution recovery, W2 (Cor. 3.2.1 ii, d0 = 16)",
          "TV(true latent law at T0, generated law aligned by (W_B U)^T) = O~(sqrt(xi) log n): exponent -1/6 in n. "
          "For d0 = 16 the latent W2 is measured instead, next to its finite-sample floor (true vs true).",
          "n", "w2_latent", -1.0 / 6, reference="w2_latent_reference", xlabel="training samples n",
          ylabel="latent W2"),
    Claim("latent_tv_vs_n", "Latent distribution recovery, TV (Cor. 3.2.1 ii, d0 = 2)",
          "TV(true latent law at T0, generated law aligned by (W_B U)^T) = O~(sqrt(xi) log n): exponent -1/6 in n. "
          "TV between the exact density and a Gaussian KDE of the aligned generated samples.",
          "tv", "tv_latent", -1.0 / 6, reference="tv_latent_reference", xlabel="training samples n",
          ylabel="latent TV"),
    Claim("off_subspace_vs_T0", "Off-subspace law at the stopping time (Cor. 3.2.1 iii)",
          "The generated law's component orthogonal to W_B is Gaussian with covariance (1 - exp(-T0)) I for an "
          "exact sampler: log-log slope 1 in T0 and ratio 1 to 1 - exp(-T0).",
          "T0", "off_subspace_var", 1.0, kind="equal", reference="off_subspace_var_expected",
          xlabel="early-stopping time T0", ylabel="off-subspace variance per direction"),
]


def _rows_for(rows: list[dict], plan: Plan, sweep: str) -> tuple[str, list[dict]]:
    param, points = sweeps(plan)[sweep]
    want = {config_key({k: p[k] for k in ("D", "d0", "n", "T0")}) for p in points}
    return param, [r for r in rows if config_key({k: r[k] for k in ("D", "d0", "n", "T0")}) in want]


def analyse(rows: list[dict], plan: Plan) -> dict:
    """Fitted slopes, intervals and verdicts per claim, plus per-point means (for the report)."""
    out: dict = {}
    for c in CLAIMS:
        param, sel = _rows_for(rows, plan, c.sweep)
        sel = [r for r in sel if r.get(c.metric) is not None]
        xs = sorted({r[param] for r in sel})
        table = []
        for xv in xs:
            vals = [r[c.metric] for r in sel if r[param] == xv]
            refs = [r[c.reference] for r in sel if r[param] == xv and c.reference and r.get(c.reference) is not None]
            rel = [r["score_rel_error"] for r in sel if r[param] == xv]
            table.append({"x": xv, "mean": float(np.mean(vals)), "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
                          "seeds": len(vals), "reference": float(np.mean(refs)) if refs else None,
                          "score_rel_error": float(np.mean(rel)) if rel else None})
        fit = fit_slopes([(r["seed"], r[param], r[c.metric]) for r in sel])
        entry = {"title": c.title, "claim": c.claim, "sweep": c.sweep, "parameter": param, "metric": c.metric,
                 "predicted_exponent": c.predicted, "measured_slope": fit["slope"], "interval": fit["ci"],
                 "interval_level": 0.95, "seed_slopes": fit["seed_slopes"], "points": table, "notes": []}
        if c.kind == "equal":
            ratios = [r[c.metric] / r[c.reference] for r in sel]
            entry["ratio_mean"] = float(np.mean(ratios)) if ratios else float("nan")
            entry["ratio_range"] = [float(np.min(ratios)), float(np.max(ratios))] if ratios else [float("nan")] * 2
            ok_slope = fit["ci"][0] <= c.predicted <= fit["ci"][1] or abs(fit["slope"] - c.predicted) < 0.05
            ok_ratio = bool(ratios) and max(abs(q - 1) for q in ratios) <= 0.1
            entry["verdict"] = "consistent" if (ok_slope and ok_ratio) else "violated"
            entry["notes"].append(f"measured / expected variance: mean {entry['ratio_mean']:.4f}, range "
                                  f"[{entry['ratio_range'][0]:.4f}, {entry['ratio_range'][1]:.4f}]")
        else:
            entry["verdict"] = verdict_upper(fit["ci"], c.predicted) if fit["n_seeds"] else "inconclusive"
            if sel and max(r[c.metric] for r in sel) < 1e-5:
                entry["verdict"] = "tighter than the bound"
                entry["notes"].append(f"every value is at the rounding floor of a float32 encoder (max "
                                      f"{max(r[c.metric] for r in sel):.1e}): the data lie exactly on the subspace, "
                                      "so the second moment of any n >= d0 points has range span(B) and PCA recovers "
                                      "it exactly; the fitted slope is that of rounding noise")
            if param == "n" and c.metric not in ("subspace_error", "subspace_error_noisy_pca"):
                draws = plan.budget.steps * plan.budget.batch_size
                entry["notes"].append(f"fixed optimisation budget: {plan.budget.steps} steps x batch "
                                      f"{plan.budget.batch_size} = {draws} training draws for every n; where this is "
                                      "below n the network has not seen every sample, so a flat curve means the error "
                                      "is limited by optimisation, not by n")
        if c.key == "score_vs_D" and table:
            means = [p["mean"] for p in table]
            out["d_independence_spread"] = float(max(means) / min(means) - 1)
            entry["d_independence_spread"] = out["d_independence_spread"]
        out[c.key] = entry
    return out


# ----------------------------------------------------------------------------------------- report


def _plot_claim(entry: dict, c: Claim, rows: list[dict], plan: Plan, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    param, sel = _rows_for(rows, plan, c.sweep)
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    xs = np.array([p["x"] for p in entry["points"]], float)
    ms = np.array([p["mean"] for p in entry["points"]], float)
    pos = [r for r in sel if r.get(c.metric) is not None and r[c.metric] > 0]
    ax.scatter([r[param] for r in pos], [r[c.metric] for r in pos], s=12, alpha=0.5, label="per seed")
    if len(xs) and np.all(ms > 0):
        ax.plot(xs, ms, "o-", color="C0", label=f"mean, slope {entry['measured_slope']:.3f}")
        gx, gy = np.exp(np.mean(np.log(xs))), np.exp(np.mean(np.log(ms)))
        ax.plot(xs, gy * (xs / gx) ** c.predicted, "k--", label=f"predicted exponent {c.predicted:+.3g}")
    refs = [p["reference"] for p in entry["points"]]
    if c.reference and all(r is not None and r > 0 for r in refs) and refs:
        lab = "expected 1 - exp(-T0)" if c.kind == "equal" else f"{c.reference}"
        ax.plot(xs, refs, "s:", color="C3", label=lab)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(c.xlabel)
    ax.set_ylabel(c.ylabel)
    ax.set_title(c.title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}"
    return str(v)


def find_attention_json(explicit: Path | None = None) -> Path | None:
    if explicit is not None:
        return explicit if explicit.is_file() else None
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        p = base / "docs" / "bench" / "attention.json"
        if p.is_file():
            return p
    return None


def attention_section(path: Path | None, out_dir: Path) -> list[str]:
    lines = ["## Attention phase transition (Sec. 6, from the attention benchmark)", ""]
    if path is None:
        lines += ["`docs/bench/attention.json` was not found when this report was written; run "
                  "`latentdit bench attention --out docs/bench/attention.json` and rerun `latentdit rates` "
                  "(finished configurations are reused) to include it.", ""]
        return lines
    try:
        data = json.loads(path.read_text())
        rows = (data.get("phase_transition") or {}).get("rows") or []
    except (OSError, json.JSONDecodeError, AttributeError) as e:
        return lines + [f"`{path}` could not be read ({e}).", ""]
    if not rows:
        return lines + [f"`{path}` holds no phase-transition rows.", ""]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    for L in sorted({r.get("L") for r in rows}):
        rs = sorted((r for r in rows if r.get("L") == L), key=lambda r: r.get("true_max_logit", 0))
        xs = [r.get("true_max_logit") for r in rs]
        ys = [r.get("rel_error_fixed_degree") for r in rs]
        if all(v is not None and v > 0 for v in ys):
            ax.plot(xs, ys, "o-", label=f"L={L}, fixed degree")
    ax.set_yscale("log")
    ax.set_xlabel("max |logit|")
    ax.set_ylabel("relative error")
    ax.set_title("Polynomial attention: error vs entry bound", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "attention_phase.png", dpi=110)
    plt.close(fig)
    cols = [k for k in ("L", "bound", "true_max_logit", "rel_error_fixed_degree", "certified_degree",
                        "certified_rank", "rel_error_certified", "criterion_ok") if k in rows[0]]
    lines += [f"Source: `{path}`. A polynomial of fixed degree keeps a small error while the entries stay "
              "bounded and breaks down as max |logit| grows (the o(sqrt(log L)) criterion).", "",
              "![attention phase transition](attention_phase.png)", "",
              "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(k)) for k in cols) + " |")
    return lines + [""]


def write_report(out_dir: Path, plan: Plan, rows: list[dict], analysis: dict, *, meta: dict,
                 attention: Path | None = None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    b = plan.budget
    L = [f"# Statistical rates of latent DiTs, measured (`{plan.name}` mode)", "",
         "Generated by `latentdit rates`. Ground truth: x = B h in R^D, h a Gaussian mixture in R^d0 with "
         f"{plan.components} components; the latent law depends only on (d0, seed), B on (D, d0, seed). "
         f"Seeds per point: {len(plan.seeds)}. Encoder: PCA of the n training points (signs fixed by the data), "
         "frozen. Network: practical DiT block, EDM weighting, "
         f"hidden {b.hidden}, depth {b.depth}, {b.steps} AdamW steps of batch {b.batch_size} for every "
         "configuration (fixed budget: each sweep varies only its own quantity; at large n the score error is "
         "limited by optimisation as much as by n). Evaluation: score errors on "
         f"{b.score_times} log-spaced times in [T0, {b.T}] with {b.score_points} points each; "
         f"{b.eval_samples} samples from DPM-Solver++(2M) with {b.sample_steps} steps.", "",
         f"Base point: D = {plan.base_D}, d0 = {plan.base_d0}, n = {plan.base_n}, T0 = {plan.base_T0}. "
         f"Configurations: {meta.get('configs')} ({meta.get('finished')} finished, {meta.get('failed', 0)} failed); "
         f"workers: {meta.get('workers')}.", "",
         "Verdicts compare the 95% t-interval of the per-seed log-log slopes with the predicted exponent, read "
         "as an upper bound on the growth rate: interval below it = *tighter than the bound*, containing it = "
         "*consistent*, above it = *violated*. The paper's bounds carry constants and log factors (and a "
         "double-exponential factor in Thm 3.2), so only exponents are compared.", ""]
    tm = meta.get("timing")
    if tm:
        L += ["## Timing", "", f"Wall-clock of the sweep: {tm['wall_seconds']:.0f} s on {tm['cpus']} CPU cores "
              f"shared with other jobs (pessimistic: the machine's load average was far above its core count). "
              f"Per configuration: mean {tm['mean_config_seconds']:.1f} s wall "
              f"(train {tm['mean_train_seconds']:.1f} s, evaluation {tm['mean_eval_seconds']:.1f} s)."]
        if tm.get("cpu_seconds"):
            L += ["", f"CPU time of the sweep (all processes): {tm['cpu_seconds']:.0f} s, i.e. about "
                  f"{tm['cpu_seconds'] / max(1, min(meta.get('workers') or 1, tm['cpus'] or 1)):.0f} s of wall-clock on "
                  f"{min(meta.get('workers') or 1, tm['cpus'] or 1)} otherwise idle cores."]
        if tm.get("full_estimate_seconds"):
            idle = tm.get("full_estimate_idle_seconds")
            L += ["", f"Full-run estimate (`latentdit rates --out DIR`, {tm['full_configs']} configurations, "
                  f"{tm['full_workers']} workers; measured by timing the full budget on one configuration per d0): "
                  + (f"{idle / 3600:.2f} h on {tm['full_workers']} idle cores (from CPU time); " if idle else "")
                  + f"{tm['full_estimate_seconds'] / 3600:.2f} h at this run's wall-clock speed. "
                  f"{tm.get('full_estimate_detail', '')}"]
        L.append("")
    L += ["## Summary", "", "| claim | metric | predicted exponent | measured slope | 95% interval | verdict |",
          "|---|---|---|---|---|---|"]
    for c in CLAIMS:
        e = analysis[c.key]
        L.append(f"| {c.key} | {c.metric} | {c.predicted:+.3g} | {_fmt(e['measured_slope'])} | "
                 f"[{_fmt(e['interval'][0])}, {_fmt(e['interval'][1])}] | {e['verdict']} |")
    L += ["", f"D-independence spread (max / min - 1 of the mean sigma-scaled score error across D = "
          f"{list(plan.D_values)}): **{analysis.get('d_independence_spread', float('nan')):.3f}** (target <= 0.15).", ""]
    for c in CLAIMS:
        e = analysis[c.key]
        png = f"{c.key}.png"
        _plot_claim(e, c, rows, plan, out_dir / png)
        param = e["parameter"]
        fixed = {k: v for k, v in {"D": plan.base_D, "d0": plan.tv_d0 if c.sweep == "tv" else plan.base_d0,
                                   "n": plan.base_n, "T0": plan.base_T0}.items() if k != param}
        L += [f"## {c.title}", "", f"**Claim.** {c.claim}", "",
              f"**Setting.** `{c.metric}` against {param} in {[p['x'] for p in e['points']]} with "
              + ", ".join(f"{k} = {v}" for k, v in fixed.items()) + f"; {len(plan.seeds)} seeds.", "",
              f"![{c.key}]({png})", "",
              f"| {param} | mean | sd | seeds | " + (f"{c.reference} | " if c.reference else "")
              + "score_rel_error |", "|---|---|---|---|" + ("---|" if c.reference else "") + "---|"]
        for p in e["points"]:
            L.append(f"| {_fmt(p['x'])} | {_fmt(p['mean'])} | {_fmt(p['sd'])} | {p['seeds']} | "
                     + (f"{_fmt(p['reference'])} | " if c.reference else "") + f"{_fmt(p['score_rel_error'])} |")
        L += ["", f"**Measured slope.** {_fmt(e['measured_slope'])}, 95% interval "
              f"[{_fmt(e['interval'][0])}, {_fmt(e['interval'][1])}] (per-seed slopes "
              f"{', '.join(_fmt(s) for s in e['seed_slopes'])}); predicted exponent {c.predicted:+.4g}.", "",
              f"**Verdict.** {e['verdict']}."]
        if c.key == "score_vs_D":
            L.append(f" Spread across D: {e.get('d_independence_spread', float('nan')):.3f} (target <= 0.15).")
        for note in e["notes"]:
            L += ["", f"Note: {note}."]
        if c.reference and c.kind != "equal":
            L += ["", f"`{c.reference}` is shown beside the metric: for W2/TV it is the same estimator applied to "
                  "two independent true sample sets of the same size (the finite-sample floor); a measured value "
                  "at that floor cannot fall further with n."]
        L.append("")
    L += attention_section(attention, out_dir)
    fails = meta.get("failures") or []
    if fails:
        L += ["## Failed configurations", ""] + [f"- `{config_key(p)}`: {m}" for p, m in fails] + [""]
    (out_dir / "report.md").write_text("\n".join(L) + "\n")


def summary_dict(analysis: dict, plan: Plan, meta: dict) -> dict:
    claims = {}
    for c in CLAIMS:
        e = analysis[c.key]
        claims[c.key] = {"metric": c.metric, "parameter": e["parameter"], "measured_slope": e["measured_slope"],
                         "interval": e["interval"], "predicted_exponent": c.predicted, "verdict": e["verdict"],
                         "points": e["points"], **({"ratio_mean": e["ratio_mean"], "ratio_range": e["ratio_range"]}
                                                   if "ratio_mean" in e else {})}
    return {"mode": plan.name, "seeds": list(plan.seeds), "budget": asdict(plan.budget), "claims": claims,
            "d_independence_spread": analysis.get("d_independence_spread"), "meta": meta}


def _json_safe(o):
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_json_safe(v) for v in o]
    return o


# ----------------------------------------------------------------------------------------- timing probe


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


def run_rates(out: Path, plan: Plan, *, workers: int = 1, threads: int = 1, progress: bool = True, runner=run_config,
              attention: Path | None = None, estimate: bool = False) -> dict:
    """Run (or resume) the plan's sweeps in ``out`` and write report.md, summary.json and the plots."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
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
        timing_file.write_text(json.dumps(meta["timing"], indent=1) + "\n")
    analysis = analyse(rows, plan)
    write_report(out, plan, rows, analysis, meta=meta, attention=find_attention_json(attention))
    summary = _json_safe(summary_dict(analysis, plan, meta))
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="latentdit rates",
                                 description="Measure the paper's statistical rates on the ground-truth model.")
    ap.add_argument("--out", type=Path, required=True, help="output directory (holds the resumable store)")
    ap.add_argument("--quick", action="store_true", help="smaller model and budget (same sweeps, 3 seeds)")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                    help="parallel worker processes (default: min(2, CPU cores))")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per configuration (default 1)")
    ap.add_argument("--attention", type=Path, default=None,
                    help="attention benchmark JSON (default: docs/bench/attention.json if present)")
    ap.add_argument("--no-estimate", action="store_true", help="quick mode: skip the full-run timing probe")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    if a.workers < 1:
        from latentdit.errors import ConfigError

        raise ConfigError(f"--workers={a.workers} must be >= 1")
    plan = plan_for("quick" if a.quick else "full")
    try:
        s = run_rates(a.out, plan, workers=a.workers, threads=a.threads, progress=not a.no_progress and sys.stderr.isatty(),
                      attention=a.attention, estimate=a.quick and not a.no_estimate)
    except KeyboardInterrupt:
        print(f"interrupted; finished configurations are kept in {a.out / DB_NAME} and a rerun resumes",
              file=sys.stderr)
        return 130
    for k, c in s["claims"].items():
        print(f"{k:26s} slope {c['measured_slope'] if c['measured_slope'] is not None else float('nan'):+.3f} "
              f"(predicted {c['predicted_exponent']:+.3f}): {c['verdict']}")
    print(f"d_independence_spread {s['d_independence_spread']}")
    print(f"wrote {a.out / 'report.md'} and {a.out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
