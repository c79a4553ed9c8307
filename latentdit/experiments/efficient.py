"""Quality of the almost-linear-time DiT against exact attention, trained side by side.

``python -m latentdit.experiments.efficient --out DIR [--quick | --smoke] [--parts a b c d] [--seeds ...]``
``python -m latentdit.experiments.efficient --out DIR --time-steps N`` (steps/s of part (a)'s models)

Every model is trained by :func:`latentdit.train.train` (the one training path) from a
:class:`~latentdit.config.Config` on the long-sequence ground truth (``data.source = "long"``, B = I,
the identity encoder), with equal steps, the same data and the same seeds. Variants differ only in
``[model]`` keys:

- ``criterion``: the paper's regime, criterion by construction: query/key size ``qk_dim`` (2),
  QK-norm with tau_max = 1.7 (|logit| <= 2.89), the polynomial method forward and backward;
- ``unconstrained``: exact attention, full head size, no QK-norm (today's DiT);
- ``exact_same``: the ``criterion`` architecture trained with exact attention;
- ``relu_linear``: the ``criterion`` architecture with ReLU linear attention (no certificate).

Parts (each writes DIR/<part>.json and prints its progress; the trained runs go to DIR/runs/):

- (a) short L (64 tokens): ``criterion`` vs ``unconstrained`` over seeds;
- (b) long L: ``criterion`` vs ``exact_same`` at equal steps over seeds, and ``exact_same`` again
  stopped at the criterion model's training time (equal wall time; the JSON records the steps
  that time bought);
- (c) the ``criterion`` model of (b) (first seed) sampled with exact and with poly attention from
  the same noise: W2 between the two sample sets, each against the truth, and the true-vs-true W2
  over seeds (the spread the change must stay under);
- (d) ``relu_linear`` trained as in (b), next to (b)'s ``exact_same``.

Budgets (:data:`SIZES`, :data:`SEEDS`): steps are the budget, never wall-clock (except the
equal-wall-time run of (b)). Estimated from timed steps on 2 idle CPU cores (not an end-to-end
run): the full mode about 50 minutes ((a) 6 models x 2,000 steps at 64 tokens, about 17 min;
(b) 2 seeds at 4,096 tokens, batch 2, 200 steps, about 30 min with the evaluation, nearly all of it
exact attention, about 2.5 s per step against 0.1 s for poly; (c) 5 min, (d) 2 min), ``--quick``
about 13 minutes (same parts and seeds, 500 steps at 64 tokens and 100 steps at 1,024 tokens),
``--smoke`` seconds (tiny sizes, for tests). A model or a quality result
needed by two parts is computed once per invocation, and a finished run is resumed, not retrained.

Metrics: ``score_rel_error`` (||s - grad log p_t|| / ||grad log p_t|| on x_t ~ p_t, averaged over
a log grid of t; the closed form of :mod:`latentdit.data.long`), ``w2`` of generated samples
against fresh true samples at T0 and ``w2_reference`` (true vs true, same sizes).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from latentdit.timing import interleaved_times, medians
from latentdit.build import build_long_law as _law
from latentdit.config import load_config
from latentdit.evaluation.long import long_quality as quality
from latentdit.io import atomic_write_json
from latentdit.metrics.distances import w2
from latentdit.export import read_training_record
from latentdit.pipeline import LatentDiTPipeline
from latentdit.provenance import provenance_end, provenance_start
from latentdit.train import Trainer, train

VARIANTS = {
    "criterion": ["model.qk_dim=2", "model.qk_norm=true", "model.tau_max=1.7", "model.attention=poly"],
    "unconstrained": ["model.qk_dim=0", "model.qk_norm=false", "model.attention=exact"],
    "exact_same": ["model.qk_dim=2", "model.qk_norm=true", "model.tau_max=1.7", "model.attention=exact"],
    "relu_linear": ["model.qk_dim=2", "model.qk_norm=false", "model.attention=relu_linear"],
}
# (tokens, steps, batch, eval samples) per part and mode; token size 4, so d0 = D = 4 L
SIZES = {
    "full": {"short": (64, 2000, 64, 512), "long": (4096, 200, 2, 32)},
    "quick": {"short": (64, 500, 64, 256), "long": (1024, 100, 8, 32)},
    "smoke": {"short": (16, 6, 8, 16), "long": (64, 4, 4, 16)},
}
# default training seeds per mode: (part a, parts b-d)
SEEDS = {"full": ([0, 1, 2], [0, 1]), "quick": ([0, 1, 2], [0, 1]), "smoke": ([0], [0])}
_TRAINED: dict = {}  # run name -> (model, cfg, train seconds, steps): one training per invocation
_QUALITY: dict = {}  # (run name, n_eval, seed) -> quality()


def base_overrides(tokens: int, steps: int, batch: int, seed: int) -> list[str]:
    d0 = 4 * tokens
    return [
        "data.source=long", f"data.ambient_dim={d0}", "data.components=8", "data.n=2000", "data.seed=0",
        "encoder.init=identity", f"encoder.latent_dim={d0}", "encoder.learn=false",
        "model.block=dit", "model.patch=4", "model.patching=1d", "model.hidden=64", "model.depth=2",
        "model.heads=8", "model.mlp_ratio=2.0",
        f"train.steps={steps}", f"train.batch_size={batch}", f"train.seed={seed}", "train.threads=2",
        "train.log_every=10", "train.checkpoint_every=0", "optim.lr=1e-3",
        f"optim.warmup_steps={max(1, steps // 20)}", "train.ema_decay=0.99",
        "sample.sampler=dpm2m", "sample.steps=20", "eval.score_times=6",
    ]


def train_variant(out: Path, variant: str, tokens: int, steps: int, batch: int, seed: int,
                  time_limit: float = 0.0):
    """Train (or resume) one variant through latentdit.train.train; returns (pipeline, cfg, wall
    seconds, training seconds, steps done). ``time_limit`` > 0 stops it after that many seconds
    (the learning-rate schedule still spans ``steps``)."""
    extra = [f"train.time_limit={time_limit}"] if time_limit > 0 else []
    cfg = load_config(None, base_overrides(tokens, steps, batch, seed) + VARIANTS[variant] + extra)
    run = out / "runs" / (f"{variant}_L{tokens}_n{steps}_s{seed}" + (f"_wall{time_limit:.0f}" if time_limit > 0 else ""))
    t0 = time.time()
    if run not in _TRAINED:
        print(f"train {run.name}: {steps} steps, batch {batch}, d0 {4 * tokens}", flush=True)
        train(cfg, run, progress=False)
        pipe, meta = LatentDiTPipeline.from_pretrained(run), read_training_record(run)
        _TRAINED[run] = (pipe, cfg, meta.get("train_seconds"), meta.get("step"))
    model, cfg, train_s, done = _TRAINED[run]
    return model, cfg, time.time() - t0, train_s, done


def cached_quality(model, cfg, run: str, n_eval: int, seed: int) -> dict:
    """:func:`quality` once per (run, n_eval, seed) and invocation."""
    key = (run, n_eval, seed)
    if key not in _QUALITY:
        _QUALITY[key] = quality(model, _law(cfg), n_eval, seed, score_times=cfg.eval.score_times)
    return _QUALITY[key]


def set_attention(model, mode: str) -> None:
    for blk in model.backbone.blocks:
        blk.attention_mode = mode


def run_pair(out: Path, variants: list[str], size: tuple, seeds: list[int]) -> dict:
    tokens, steps, batch, n_eval = size
    rows = []
    for seed in seeds:
        for v in variants:
            model, cfg, wall, train_s, _ = train_variant(out, v, tokens, steps, batch, seed)
            q = cached_quality(model, cfg, f"{v}_L{tokens}_n{steps}_s{seed}", n_eval, seed)
            rows.append({"variant": v, "seed": seed, "tokens": tokens, "steps": steps, "batch": batch,
                         "train_seconds": train_s, **q})
            print(f"  {v} seed {seed}: score_rel_error {q['score_rel_error']:.4f}  w2 {q['w2']:.3f} "
                  f"(reference {q['w2_reference']:.3f})  train {train_s:.0f} s", flush=True)
    summary = {}
    for v in variants:
        mine = [r for r in rows if r["variant"] == v]
        summary[v] = {k: sum(r[k] for r in mine) / len(mine) for k in ("score_rel_error", "w2", "w2_reference")}
        if len(mine) > 1:  # the spread over seeds (sample standard deviation)
            summary[v].update({f"{k}_std": _std([r[k] for r in mine]) for k in ("score_rel_error", "w2")})
        summary[v]["seeds"] = [r["seed"] for r in mine]
    if len(variants) >= 2:
        a, b = variants[:2]
        summary["score_error_ratio"] = summary[a]["score_rel_error"] / summary[b]["score_rel_error"]
        summary["ratio_of"] = f"{a} / {b}"
    return {"rows": rows, "summary": summary}


def _std(xs: list[float]) -> float:
    mean = sum(xs) / len(xs)
    return (sum((x - mean) ** 2 for x in xs) / max(1, len(xs) - 1)) ** 0.5


def equal_wall_time(out: Path, size: tuple, seed: int, criterion_row: dict) -> dict:
    """(b) at equal wall time: exact_same stopped after the criterion model's training seconds."""
    tokens, steps, batch, n_eval = size
    budget = float(criterion_row["train_seconds"])
    model, cfg, _, train_s, done = train_variant(out, "exact_same", tokens, steps, batch, seed, time_limit=budget)
    q = quality(model, _law(cfg), n_eval, seed, score_times=cfg.eval.score_times)
    row = {"variant": "exact_same", "seed": seed, "time_limit": budget, "train_seconds": train_s,
           "steps_planned": steps, "steps_done": done, **q}
    print(f"  exact_same at the criterion's wall time {budget:.0f} s ({done} steps): "
          f"score_rel_error {q['score_rel_error']:.4f}", flush=True)
    return row


def sample_both(out: Path, size: tuple, seeds: list[int]) -> dict:
    """(c): one criterion model, sampled with poly and with exact attention from the same noise."""
    tokens, steps, batch, n_eval = size
    pipe, cfg, _, _, _ = train_variant(out, "criterion", tokens, steps, batch, seeds[0])
    model = pipe.model
    law = _law(cfg)
    res = {}
    for mode in ("poly", "exact"):  # sampling runs without autograd
        set_attention(model, mode)
        res[mode] = pipe.sample_model_space(n_eval, seed=1000, batch_size=64).double()
    set_attention(model, cfg.model.attention)  # the model may be shared with another part
    T0 = cfg.diffusion.T0
    refs = []
    for s in seeds + [s + 100 for s in seeds]:
        g = torch.Generator().manual_seed(5000 + s)
        refs.append(w2(law.sample(n_eval, T0, generator=g), law.sample(n_eval, T0, generator=g)))
    truth = law.sample(n_eval, T0, generator=torch.Generator().manual_seed(4242))
    spread = _std(refs)
    rep = {"tokens": tokens, "steps": steps, "num_samples": n_eval,
           "w2_poly_vs_exact": w2(res["poly"], res["exact"]),
           "w2_poly_vs_truth": w2(res["poly"], truth), "w2_exact_vs_truth": w2(res["exact"], truth),
           "w2_true_vs_true": refs, "w2_true_vs_true_std": spread,
           "max_abs_sample_difference": float((res["poly"] - res["exact"]).abs().max())}
    rep["w2_change"] = abs(rep["w2_poly_vs_truth"] - rep["w2_exact_vs_truth"])
    rep["w2_change_below_spread"] = rep["w2_change"] < spread
    print(f"  (c) W2 poly-exact {rep['w2_poly_vs_exact']:.4f}; vs truth poly {rep['w2_poly_vs_truth']:.3f} "
          f"exact {rep['w2_exact_vs_truth']:.3f}; true-vs-true spread {spread:.3f}", flush=True)
    return rep


def time_steps(out: Path, size: tuple, steps: int, threads: int) -> dict:
    """Training steps per second of part (a)'s models (no files but the report): ``criterion`` at
    its initial temperature and with every tau near tau_max (the worst-case certified degree), and
    ``unconstrained``; ``steps`` timed steps each after two warm-up steps, interleaved, medians."""
    tokens, _, batch, _ = size
    trainers = {}
    tmp = tempfile.TemporaryDirectory()  # the trainers write nothing before fit(); removed at return
    for name, variant in (("criterion", "criterion"), ("criterion_tau_max", "criterion"),
                          ("unconstrained", "unconstrained")):
        cfg = load_config(None, base_overrides(tokens, 10 ** 6, batch, 0) + VARIANTS[variant]
                          + [f"train.threads={threads}"])
        tr = trainers[name] = Trainer(cfg, Path(tmp.name) / name, progress=False)
        if name == "criterion_tau_max":
            with torch.no_grad():
                for blk in tr.model.backbone.blocks:
                    blk.tau_raw.fill_(4.0)  # tau = 0.98 tau_max
        for _ in range(2):
            tr.train_step()
    times = interleaved_times({k: tr.train_step for k, tr in trainers.items()}, steps, "train step")
    tmp.cleanup()
    med = medians(times)
    return {"tokens": tokens, "batch": batch, "threads": torch.get_num_threads(), "median_s": med,
            "steps_per_s": {k: 1.0 / v for k, v in med.items()}, "times_s": times}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m latentdit.experiments.efficient", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="directory for the runs and the JSONs")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="every part at a reduced budget (about 13 min)")
    mode.add_argument("--smoke", action="store_true", help="tiny lengths and a few steps (seconds; for tests)")
    ap.add_argument("--parts", nargs="+", default=["a", "b", "c", "d"], choices=["a", "b", "c", "d"])
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="training seeds of every part (default: 0 1 2 for (a), 0 1 for (b)-(d); smoke: 0)")
    ap.add_argument("--short-steps", type=int, default=None, help="training steps of part (a)")
    ap.add_argument("--long-steps", type=int, default=None, help="training steps of parts (b)-(d)")
    ap.add_argument("--time-steps", type=int, default=0, metavar="N",
                    help="only time N training steps of part (a)'s models, write DIR/step_times.json")
    args = ap.parse_args(argv)
    name = "smoke" if args.smoke else "quick" if args.quick else "full"
    sizes = dict(SIZES[name])
    for key, steps in (("short", args.short_steps), ("long", args.long_steps)):
        if steps is not None:
            if steps < 1:
                print(f"error: --{key}-steps must be >= 1", file=sys.stderr)
                return 2
            sizes[key] = (sizes[key][0], steps, *sizes[key][2:])
    short_seeds, long_seeds = (args.seeds, args.seeds) if args.seeds else SEEDS[name]
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    command = ["python", "-m", "latentdit.experiments.efficient", *(sys.argv[1:] if argv is None else argv)]
    if args.time_steps > 0:
        prov = provenance_start(command)
        rep = time_steps(args.out, sizes["short"], args.time_steps, 2 if name != "smoke" else 1)
        rep.update({"mode": name, "provenance": provenance_end(prov)})
        atomic_write_json(args.out / "step_times.json", rep)
        print(f"steps/s {rep['steps_per_s']}; wrote {args.out / 'step_times.json'}", flush=True)
        return 0
    for part in args.parts:
        prov = provenance_start(command)
        print(f"part ({part})", flush=True)
        if part == "a":
            rep = run_pair(args.out, ["criterion", "unconstrained"], sizes["short"], short_seeds)
        elif part == "b":
            rep = run_pair(args.out, ["criterion", "exact_same"], sizes["long"], long_seeds)
            crit = [r for r in rep["rows"] if r["variant"] == "criterion"]
            rep["equal_wall_time"] = [equal_wall_time(args.out, sizes["long"], r["seed"], r) for r in crit]
        elif part == "c":
            rep = sample_both(args.out, sizes["long"], long_seeds)
        else:
            rep = run_pair(args.out, ["relu_linear", "exact_same"], sizes["long"], long_seeds)
        rep.update({"mode": name, "quick": name != "full", "provenance": provenance_end(prov)})
        atomic_write_json(args.out / f"{part}.json", rep)
        print(f"wrote {args.out / (part + '.json')} ({time.time() - t0:.0f} s so far)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
