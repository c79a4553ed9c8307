"""What the training-step changes bought: the real ``Trainer.train_step``, before and after, interleaved.

    python docs/bench/train_step.py --out docs/bench/train_step.json [--threads 1] [--repeats 7]

For each configuration (the demo's ``configs/mnist.toml`` and ``configs/gmm.toml``) three trainers
are built on the same data and seed and stepped in turn:

- ``before``: the tanh GELU, the single-tensor (for-loop) AdamW and a per-parameter EMA loop;
- ``fused``: the fused AdamW kernel and the multi-tensor EMA (``latentdit.train`` today), tanh GELU;
- ``after``: as ``fused`` with the exact (erf) GELU, the default ``model.activation``.

A timed repeat is ``--steps`` consecutive ``train_step`` calls of each trainer (the full step: batch
draw, loss, backward, clipping, optimiser, LR schedule, EMA); medians over ``--repeats``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


@torch.no_grad()
def per_parameter_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """The EMA update as it was: one lerp_ per parameter tensor."""
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm.detach(), 1 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


def make_trainer(config: Path, variant: str, run: Path, threads: int):
    import latentdit.train as T
    import latentdit.train.loop as loop  # Trainer.train_step looks ema_update up in this module
    from latentdit.config import load_config

    act = "gelu" if variant == "after" else "gelu_tanh"
    cfg = load_config(config, [f"model.activation={act}", f"train.threads={threads}", "train.time_limit=0"])
    tr = T.Trainer(cfg, run, progress=False)
    if variant == "before":
        kw = dict(lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, betas=(cfg.optim.beta1, cfg.optim.beta2))
        tr.opt = torch.optim.AdamW(T.param_groups(tr.model, cfg), foreach=False, **kw)
        tr.sched = torch.optim.lr_scheduler.LambdaLR(tr.opt, T.lr_lambda(cfg))

    def steps(n: int) -> None:
        saved = loop.ema_update
        if variant == "before":
            loop.ema_update = per_parameter_ema
        try:
            for _ in range(n):
                tr.train_step()
        finally:
            loop.ema_update = saved

    return steps


def main() -> None:
    from latentdit.io import atomic_write_json, check_output_file
    from latentdit.provenance import provenance_end, provenance_start
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/bench/train_step.json"))
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=20, help="train_step calls per timed repeat")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--configs", default="mnist,gmm")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    check_output_file(args.out)
    prov = provenance_start(["python", *sys.argv])
    out: dict = {"threads": args.threads, "steps_per_repeat": args.steps, "repeats": args.repeats,
                 "torch": torch.__version__, "loadavg_before": os.getloadavg(), "configs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs.split(","):
            config = ROOT / "configs" / f"{name}.toml"
            fns = {v: make_trainer(config, v, Path(tmp) / f"{name}_{v}", args.threads)
                   for v in ("before", "fused", "after")}
            for f in fns.values():
                f(3)  # warm-up: allocations, optimiser state
            times: dict[str, list[float]] = {k: [] for k in fns}
            for r in range(args.repeats):
                for k, f in fns.items():
                    t0 = time.perf_counter()
                    f(args.steps)
                    times[k].append((time.perf_counter() - t0) / args.steps)
                print(f"[{name}] repeat {r + 1}/{args.repeats}: "
                      + "  ".join(f"{k} {1e3 * v[-1]:.1f} ms" for k, v in times.items()), flush=True)
            med = {k: statistics.median(v) for k, v in times.items()}
            out["configs"][name] = {
                "median_step_s": med, "times_s": times,
                "speedup_fused_optimizer_and_ema": med["before"] / med["fused"],
                "speedup_erf_gelu": med["fused"] / med["after"],
                "speedup_total": med["before"] / med["after"],
            }
            c = out["configs"][name]
            print(f"[{name}] step ms before {1e3 * med['before']:.1f}  fused {1e3 * med['fused']:.1f}  after "
                  f"{1e3 * med['after']:.1f}: fused optimiser+EMA x{c['speedup_fused_optimizer_and_ema']:.2f}, "
                  f"erf GELU x{c['speedup_erf_gelu']:.2f}, total x{c['speedup_total']:.2f}", flush=True)
    out["loadavg_after"] = os.getloadavg()
    out["provenance"] = provenance_end(prov)
    atomic_write_json(args.out, out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
