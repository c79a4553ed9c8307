"""Where a training step's time goes: torch.profiler on ours and diffusers' DiT at a matched size.

    python docs/bench/profile_step.py --out docs/bench/profile_step.json [--config mid] [--threads 1]

Each network takes one warm-up step, then ``--repeats`` profiled steps, interleaved (ours,
diffusers, ours, ...); medians over the profiled steps of the self CPU time per aten op. ``gemm_s`` is the time in matrix
products (``aten::mm``, ``aten::addmm``, ``aten::bmm``); ``other_s`` everything else. The headline
question it answers: how fast could our step be if everything but the GEMMs cost nothing?
(``floor_speedup`` = diffusers' step time / our GEMM time.)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

GEMMS = ("aten::mm", "aten::addmm", "aten::bmm")


def profile_step(train) -> dict:
    """Self CPU seconds per aten op of one call of ``train`` under torch.profiler."""
    with profile(activities=[ProfilerActivity.CPU]) as p:
        train()
    avg = p.key_averages()
    per_op = {e.key: e.self_cpu_time_total / 1e6 for e in avg if e.key.startswith("aten::")}
    total = sum(e.self_cpu_time_total for e in avg) / 1e6
    gemm = sum(per_op.get(k, 0.0) for k in GEMMS)
    return {"step_s": total, "gemm_s": gemm, "per_op": per_op}


def summarise(steps: list[dict]) -> dict:
    """Medians over the profiled steps (the step with the median total for the per-op table)."""
    med = statistics.median
    typical = sorted(steps, key=lambda r: r["step_s"])[len(steps) // 2]
    step, gemm = med(r["step_s"] for r in steps), med(r["gemm_s"] for r in steps)
    top = dict(sorted(typical["per_op"].items(), key=lambda kv: -kv[1])[:15])
    return {"step_s": step, "gemm_s": gemm, "other_s": med(r["step_s"] - r["gemm_s"] for r in steps),
            "gemm_share": gemm / step, "steps_s": [r["step_s"] for r in steps], "top_ops_s": top}


def main() -> None:
    from latentdit.io import atomic_write_json, check_output_file
    from latentdit.provenance import provenance_end, provenance_start
    from latentdit.bench.model import CONFIGS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/bench/profile_step.json"))
    ap.add_argument("--config", default="mid", choices=sorted(CONFIGS))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    check_output_file(args.out)
    prov = provenance_start(["python", *sys.argv])
    c = CONFIGS[args.config]
    out = {"config": args.config, "size": c, "threads": args.threads, "repeats": args.repeats,
           "loadavg_before": os.getloadavg()}
    from latentdit.bench.model import make_ops

    trains = {w: make_ops(w, c)["train"] for w in ("ours", "diffusers")}
    for f in trains.values():
        f()  # warm-up
    steps: dict[str, list[dict]] = {w: [] for w in trains}
    for _ in range(args.repeats):  # interleaved: ours, diffusers, ours, ...
        for w, f in trains.items():
            steps[w].append(profile_step(f))
    for which in trains:
        out[which] = r = summarise(steps[which])
        print(f"{which}: step {r['step_s']:.3f} s (profiled), GEMMs {r['gemm_s']:.3f} s "
              f"({100 * r['gemm_share']:.0f}%), other {r['other_s']:.3f} s", flush=True)
    out["speedup_profiled"] = out["diffusers"]["step_s"] / out["ours"]["step_s"]
    out["floor_speedup"] = out["diffusers"]["step_s"] / out["ours"]["gemm_s"]
    out["loadavg_after"] = os.getloadavg()
    print(f"profiled speedup x{out['speedup_profiled']:.2f}; if all but our GEMMs were free: "
          f"x{out['floor_speedup']:.2f}")
    out["provenance"] = provenance_end(prov)
    atomic_write_json(args.out, out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
