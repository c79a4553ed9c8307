"""Long sequences that learn: the certified DiT trained on a stationary ground truth, side by side.

``python -m latentdit.experiments.efficient --out docs/efficient``   (the plan below; resumable)
``python -m latentdit.experiments.efficient --out /tmp/eff --smoke`` (tiny sizes, seconds: a test)
``python -m latentdit.experiments.efficient --plan budget --out docs/efficient/budget --summary
docs/efficient/summary.json`` (L = 4,096 at the target's training budget, with the W2 excess at
four sampling seeds and the exact-score control: ``docs/efficient/budget_plan.md``)

Data: the mixture of stationary Gaussian processes of :mod:`latentdit.data.stationary`
(``data.source = "stationary"``, B = I, the identity encoder, fresh draws every step), whose
noised score is closed form by FFT at any length and whose component posterior needs the whole
sequence. Every model is trained by :func:`latentdit.train.train` (the one, crash-safe training
path) from a :class:`~latentdit.config.Config`; variants differ only in ``model.attention``:

- ``poly``: the paper's regime, certified by construction (query/key size 2, QK-norm with
  tau_max = 1.7, so |logit| <= 2.89), the polynomial method forward and backward;
- ``exact``: the same architecture with exact attention (SDPA);
- ``relu_linear``: ReLU linear attention (no certificate; QK-norm off, as efficient DiTs use it);
- ``none``: no attention (every token processed on its own): what a DiT does without attention;
- ``f0``: F = 0, the preconditioning alone -- the ``poly`` network at its initialisation (the DiT's
  output layer starts at zero), evaluated, never trained.

The plan (:data:`PLANS`, fixed in code): at L = 1,024 ``poly``, ``exact``, ``relu_linear`` and
``none`` for the same steps; at L = 4,096 ``poly``, ``relu_linear`` and ``none`` for the same steps
and ``exact`` for as many of those steps as its time budget buys (``exact_seconds``), with the loss
curves of every model of a length overlaid (``loss_curves.png``). Each trained attention model is also evaluated with the other
operator (poly <-> exact, relu_linear -> exact): the certificate says poly and exact are
interchangeable, and ReLU linear attention has no such promise.

Metrics (:mod:`latentdit.evaluation.long`): Thm 3.2's functional ``score_integral`` on 16
log-spaced times in [T0, T] (the same x_t draws for every model of one L, so differences are
paired), the per-t mse against the same architecture at initialisation (``beats_init_every_t``),
W2 of spectral summaries of generated samples with its true-vs-true floor (``w2_excess``), and the
training seconds. Outputs in ``--out``: ``rows.csv`` (one row per model, operator and t),
``models.json`` (one record per model and operator), ``loss_curves.png``, ``summary.json`` (the
``gt_*`` headline keys, merged into the file other parts write: :func:`write_summary`), and
``runs/`` (the training runs and the cached evaluations, ignored by git; a finished run or
evaluation is reused, an interrupted one resumed from its last checkpoint -- the time-limited exact
run then gets its budget again from there).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from latentdit.build import build_model, make_pipeline
from latentdit.config import Config, load_config
from latentdit.evaluation.long import exact_score_samples, ground_truth, long_quality, w2_excess_by_seed
from latentdit.experiments.efficient_report import (BUDGET_KEYS, budget_values, loss_curve, plot_loss_curves,
                                                    summary_values, write_rows, write_summary)
from latentdit.export import EXPORT_CONFIG, read_training_record
from latentdit.hostmem import reuse_host_memory
from latentdit.io import atomic_write_json
from latentdit.pipeline import LatentDiTPipeline
from latentdit.provenance import provenance_end, provenance_start
from latentdit.train import train
from latentdit.train.batches import default_data

TOKEN_SIZE = 4  # coordinates per token: d0 = D = TOKEN_SIZE x L
VARIANTS = {
    "poly": ["model.attention=poly", "model.qk_norm=true"],
    "exact": ["model.attention=exact", "model.qk_norm=true"],
    "relu_linear": ["model.attention=relu_linear", "model.qk_norm=false"],
    "none": ["model.attention=none", "model.qk_norm=true"],
}
SWAPS = {"poly": "exact", "exact": "poly", "relu_linear": "exact"}  # evaluated with the other operator too


@dataclass(frozen=True)
class Length:
    """One sequence length of the plan: models, steps, batch and evaluation sizes."""

    tokens: int
    steps: int
    batch: int
    variants: tuple[str, ...]
    score_points: int  # x_t draws per time of the score profile
    samples: int  # generated samples for the W2 of spectral summaries (0: none)
    exact_seconds: float = 0.0  # > 0: the exact model stops after this training time
    threads: int = 2  # torch CPU threads for training and evaluation
    w2_seeds: tuple[int, ...] = ()  # further sampling seeds of the W2 excess, with the exact-score control
    train_seed: int = 0  # the networks' initialisation and training draws (the law stays data.seed = 0)


PLANS = {  # docs/efficient-dit.md (full) and docs/efficient/budget_plan.md (budget)
    "full": (Length(1024, 3000, 8, ("poly", "exact", "relu_linear", "none"), 64, 256),
             Length(4096, 3000, 8, ("poly", "relu_linear", "none", "exact"), 64, 128, exact_seconds=1200.0)),
    "budget": (Length(4096, 6000, 8, ("poly", "none"), 64, 128, w2_seeds=(1, 2, 3)),),
    "budget_seed1": (Length(4096, 6000, 8, ("poly", "none"), 64, 128, w2_seeds=(1, 2, 3), train_seed=1),),
}
SMOKE = {
    "full": (Length(16, 6, 4, ("poly", "exact", "relu_linear", "none"), 8, 8, threads=1),
             Length(32, 6, 4, ("poly", "none", "exact"), 8, 8, exact_seconds=60.0, threads=1)),
    "budget": (Length(32, 8, 4, ("poly", "none"), 8, 8, threads=1, w2_seeds=(1,)),),
    "budget_seed1": (Length(32, 8, 4, ("poly", "none"), 8, 8, threads=1, w2_seeds=(1,), train_seed=1),),
}
BUDGET_SECONDS = 1800.0  # the target's training budget at L = 4,096 (budget plan: its reading rule)


def base_overrides(length: "Length") -> list[str]:
    """The configuration shared by every model of one length (the tuned recipe)."""
    d0, steps, batch = TOKEN_SIZE * length.tokens, length.steps, length.batch
    return [
        "data.source=stationary", f"data.ambient_dim={d0}", "data.components=4", "data.n=0", "data.seed=0",
        "encoder.init=identity", f"encoder.latent_dim={d0}", "encoder.learn=false",
        "model.block=dit", f"model.patch={TOKEN_SIZE}", "model.patching=1d", "model.hidden=64", "model.depth=2",
        "model.heads=8", "model.qk_dim=2", "model.tau_max=1.7", "model.mlp_ratio=2.0",
        "diffusion.times=log", "diffusion.weighting=edm",
        f"train.steps={steps}", f"train.batch_size={batch}", f"train.seed={length.train_seed}",
        f"train.threads={length.threads}",
        "train.log_every=10", f"train.checkpoint_every={max(10, steps // 10)}", "optim.lr=1e-3",
        f"optim.warmup_steps={max(1, steps // 20)}", "train.ema_decay=0.99",
        "sample.sampler=dpm2m", "sample.steps=20", "eval.score_times=16",
    ]


def variant_config(length: Length, variant: str) -> Config:
    extra = [f"train.time_limit={length.exact_seconds}"] if variant == "exact" and length.exact_seconds > 0 else []
    return load_config(None, base_overrides(length) + VARIANTS[variant] + extra)


def run_name(length: Length, variant: str) -> str:
    return f"{variant}_L{length.tokens}"


def trained(out: Path, length: Length, variant: str) -> tuple[LatentDiTPipeline, Config, dict, Path]:
    """Train (or resume, or reuse) one model; returns (its exported pipeline, cfg, training record, run dir)."""
    run = out / "runs" / run_name(length, variant)
    cfg = variant_config(length, variant)
    if not (run / "model" / EXPORT_CONFIG).exists():  # written last: the export is complete
        print(f"train {run.name}: {length.steps} steps, batch {length.batch}, d0 {TOKEN_SIZE * length.tokens}",
              flush=True)
        train(cfg, run, progress=False)
    return LatentDiTPipeline.from_pretrained(run), cfg, read_training_record(run), run


def initial_pipeline(cfg: Config) -> LatentDiTPipeline:
    """The pipeline of the ``poly`` network as :func:`latentdit.train.train` initialises it: F = 0
    (the preconditioning alone)."""
    data = default_data(cfg)
    model = build_model(cfg, data, generator=torch.Generator().manual_seed(cfg.train.seed))
    return make_pipeline(model, cfg, data)


def set_attention(model, mode: str) -> None:
    """Evaluate ``model`` with another attention operator (the weights are unchanged)."""
    for blk in model.backbone.blocks:
        blk.attention_mode = mode


def evaluation(out: Path, key: str, pipe: LatentDiTPipeline, cfg: Config, length: Length, samples: int) -> dict:
    """:func:`long_quality` of one (pipeline, operator), cached in ``out/runs/evals/key.json``; the
    pipeline samples with its own defaults (``cfg.sample``)."""
    path = out / "runs" / "evals" / f"{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    t0 = time.time()
    law = ground_truth(cfg)
    q = long_quality(pipe, law, length.score_points, seed=0, score_times=cfg.eval.score_times, n_samples=samples)
    if samples and length.w2_seeds:  # the estimator's spread over sampling seeds (seed 0 is the headline)
        draw = lambda n, s: pipe.sample_model_space(n, seed=s, batch_size=64)  # noqa: E731
        q["w2_excess_by_seed"] = {"0": q["w2_excess"], **w2_excess_by_seed(draw, law, pipe.T0, samples,
                                                                            list(length.w2_seeds))}
    q["eval_seconds"] = time.time() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, q)
    return q


def exact_score_control(out: Path, cfg: Config, pipe: LatentDiTPipeline, length: Length) -> dict:
    """The W2 excess of samples drawn with the law's exact score by the pipeline's sampler settings, at
    seed 0 and every ``w2_seeds`` (cached in ``out/runs/evals``): the sampler's share of the excess."""
    path = out / "runs" / "evals" / f"exact_score_L{length.tokens}.json"
    if not path.exists():
        law = ground_truth(cfg)
        draw = lambda n, s: exact_score_samples(pipe, law, n, s)  # noqa: E731
        atomic_write_json(path, {"w2_excess_by_seed": w2_excess_by_seed(draw, law, pipe.T0, length.samples,
                                                                        [0, *length.w2_seeds])})
    return json.loads(path.read_text())


def run_length(out: Path, length: Length) -> list[dict]:
    """Every model of one length: train, evaluate with its own and the other operator, record."""
    records = []
    torch.set_num_threads(length.threads)
    cfg0 = variant_config(length, "poly")
    pipe0 = initial_pipeline(cfg0)
    init = evaluation(out, f"f0_L{length.tokens}", pipe0, cfg0, length, length.samples)
    records.append({"model": "f0", "tokens": length.tokens, "evaluated_with": "none (F = 0)", "steps": 0,
                    "train_seconds": 0.0, **init})
    for variant in length.variants:
        pipe, cfg, meta, run = trained(out, length, variant)
        base = {"model": variant, "tokens": length.tokens, "steps": meta.get("step"),
                "steps_planned": length.steps, "train_seconds": loss_curve(run)["seconds"]}
        q = evaluation(out, run_name(length, variant), pipe, cfg, length, length.samples)
        records.append({**base, "evaluated_with": variant, **q})
        if variant in SWAPS:
            set_attention(pipe.model, SWAPS[variant])
            qs = evaluation(out, f"{run_name(length, variant)}__as_{SWAPS[variant]}", pipe, cfg, length, 0)
            records.append({**base, "evaluated_with": SWAPS[variant], **qs})
        print(f"  {variant} L {length.tokens}: score_integral {q['score_integral']:.4g} "
              f"(F = 0: {init['score_integral']:.4g}), w2_excess {q.get('w2_excess', float('nan')):.4g}", flush=True)
    if length.w2_seeds and length.samples:
        control = exact_score_control(out, cfg0, pipe0, length)
        records[0]["exact_score_w2_excess_by_seed"] = control["w2_excess_by_seed"]
    for r in records:  # per-t comparison with the same architecture at initialisation
        r["mse_over_init"] = [m / m0 for m, m0 in zip(r["score_profile"]["mse"], init["score_profile"]["mse"])]
        r["beats_init_every_t"] = all(x < 1 for x in r["mse_over_init"])
    return records


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m latentdit.experiments.efficient", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="directory for the runs, rows, figures and summary")
    ap.add_argument("--plan", choices=sorted(PLANS), default="full",
                    help="full: docs/efficient-dit.md; budget: L = 4,096 at the target's training budget, "
                         "budget_seed1: the same with training seed 1 (docs/efficient/budget_plan.md)")
    ap.add_argument("--smoke", action="store_true", help="tiny lengths and a few steps (seconds; for tests)")
    ap.add_argument("--summary", type=Path, default=None,
                    help="budget plan: merge its L = 4,096 keys into this summary if the poly model trained "
                         "within the budget (the plan's rule)")
    ap.add_argument("--lengths", type=int, nargs="+", default=None,
                    help="run only these sequence lengths of the plan (a part of it: the summary's gt_tokens "
                         "names the longest length run)")
    args = ap.parse_args(argv)
    reuse_host_memory()  # the allocator of every `latentdit` command (latentdit.hostmem)
    if args.summary is not None and args.plan != "budget":
        ap.error(f"--summary merges the budget plan's keys only; plan {args.plan} writes its own summary in --out")
    plan = (SMOKE if args.smoke else PLANS)[args.plan]
    if args.lengths:
        unknown = sorted(set(args.lengths) - {r.tokens for r in plan})
        if unknown:
            ap.error(f"--lengths {unknown} are not lengths of the plan ({[r.tokens for r in plan]})")
        plan = tuple(r for r in plan if r.tokens in args.lengths)
    args.out.mkdir(parents=True, exist_ok=True)
    command = ["python", "-m", "latentdit.experiments.efficient", *(sys.argv[1:] if argv is None else argv)]
    prov = provenance_start(command)
    t0 = time.time()
    records = []
    for length in plan:
        print(f"L = {length.tokens}", flush=True)
        records += run_length(args.out, length)
        print(f"  done ({time.time() - t0:.0f} s so far)", flush=True)
    done = provenance_end(prov)
    write_rows(args.out, records, done)
    plot_loss_curves(args.out, [(r.tokens, args.out / "runs" / run_name(r, v)) for r in plan for v in r.variants])
    values = summary_values(records, plan[-1].tokens, plan[0].tokens)
    if args.plan.startswith("budget"):
        values = budget_values(records, values, plan[-1].tokens)
        if args.summary is not None and (values["gt_train_seconds"] or float("inf")) <= BUDGET_SECONDS:
            write_summary(args.summary, "gt_budget", {k: values[k] for k in BUDGET_KEYS}, done)
            print(f"merged {', '.join(BUDGET_KEYS)} into {args.summary}", flush=True)
    write_summary(args.out / "summary.json", "gt", values, done)
    print(f"wrote {args.out / 'summary.json'}: " + ", ".join(f"{k} {v:.4g}" for k, v in values.items()
                                                              if isinstance(v, float)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
