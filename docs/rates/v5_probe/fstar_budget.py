"""How large a step cap would bring the fstar runs of the rates plan to the plan's convergence rule?

    python docs/rates/v5_probe/fstar_budget.py [--scale 4] [--workers 1] [--points 4:16 16:32] [--out ...json]

The convergence rule of plan version 4 (section fstar, Thm 3.1): a point is converged when doubling
the budget changes the seed mean of eps_hat by less than one seed standard error. In the full run
of v4 no fstar point met it at 3,000 steps (the change was 5.0 seed SE at (d0, width) = (4, 16) and
13.7 at (16, 32), the v4 probe's constant-LR figures), and no run reduced its LR on a plateau.

This probe runs the full plan's fstar tasks at the same two points, seeds 0-2, with the step cap and
the plateau patience multiplied by ``--scale`` (default 4: 12,000 and 24,000 steps, patience 16
checks; everything else as the plan), one thread per task. ``--points`` runs a subset of the two
(the reading then covers the points run). It writes per task eps_hat at the budget
and at twice it, and per point the change in seed SE, beside v4's figure at scale 1.

The reading, fixed before the probe ran:
- A point meets the rule at this scale if its change is below 1 seed SE.
- If both points meet it, a plan version 5 may take this cap for fstar; its cost is the scale times
  the fstar CPU time of v4 (7,311 train CPU s, docs/rates/rows.csv), which the report must set
  against the 4 h wall target.
- Otherwise the change per doubling is modelled as falling like a power of the budget between
  scale 1 (v4) and this scale, change(s) = change(1) s^-a, and the scale at which it would cross
  1 SE (with the SE of this scale) is reported, with the CPU time of the fstar section there. This is
  an extrapolation from two budgets, reported as such; if the change does not fall (a <= 0), no
  budget is predicted.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
POINTS = ((4, 16), (16, 32))
# the constant-LR change at the doubled budget in seed SE at scale 1 (docs/rates/v4_probe/README.md)
V4_CHANGE = {(4, 16): 4.997, (16, 32): 13.749}
V4_FSTAR_TRAIN_CPU_S = 7311.0  # sum of train_cpu_seconds of the fstar rows of docs/rates/rows.csv (both budgets)


def _run(task: dict) -> dict:
    import torch

    from latentdit.experiments.rates.run import run_task

    torch.set_num_threads(1)
    r = run_task(task)
    return ({k: task[k] for k in ("d0", "width", "seed")} | {"max_steps": task["budget"]["max_steps"]} |
            {k: r.get(k) for k in ("eps_hat", "eps_hat_2x", "steps_trained", "steps_trained_2x", "lr_decays",
                                   "lr_decays_2x", "train_cpu_seconds")})


def point_summary(rows: list[dict], d0: int, width: int, scale: float) -> dict:
    """The seed means at the budget and twice it, the seed SE, the change in SE, and the extrapolation."""
    rs = [r for r in rows if (r["d0"], r["width"]) == (d0, width)]
    e1, e2 = np.array([r["eps_hat"] for r in rs]), np.array([r["eps_hat_2x"] for r in rs])
    se = float(e1.std(ddof=1) / math.sqrt(len(e1)))
    change = float(abs(e2.mean() - e1.mean()) / se)
    out = {"d0": d0, "width": width, "seeds": len(rs), "mean": float(e1.mean()), "mean_2x": float(e2.mean()),
           "se": se, "change_in_se": change, "meets_rule": change < 1.0, "v4_change_in_se_scale_1": V4_CHANGE[(d0, width)]}
    a = math.log(V4_CHANGE[(d0, width)] / change) / math.log(scale) if change > 0 else float("inf")
    out["decay_exponent"] = a
    out["scale_needed"] = (1.0 if change < 1.0 else scale * change ** (1.0 / a)) if a > 0 else None
    return out


def main(argv: list[str] | None = None) -> int:
    from latentdit.experiments.rates.plan import plan_for, tasks
    from latentdit.experiments.rates.run import run_dir_for
    from latentdit.io import atomic_write_json
    from latentdit.provenance import provenance_end, provenance_start

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=4, help="multiplies the step cap and the patience (default 4)")
    ap.add_argument("--workers", type=int, default=1, help="tasks at a time, one thread each")
    ap.add_argument("--points", nargs="+", default=[f"{d}:{w}" for d, w in POINTS], metavar="D0:WIDTH",
                    help="the (d0, width) points to run, of " + " ".join(f"{d}:{w}" for d, w in POINTS))
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "rates" / "v5_probe" / "fstar_budget.json")
    a = ap.parse_args(argv)
    if a.scale < 2 or a.scale > 64:
        ap.error(f"--scale must be between 2 and 64, got {a.scale}")
    try:
        points = [tuple(int(v) for v in p.split(":")) for p in a.points]
    except ValueError:
        ap.error(f"--points takes D0:WIDTH pairs, got {a.points}")
    if not set(points) <= set(POINTS):
        ap.error(f"--points must be among {' '.join(f'{d}:{w}' for d, w in POINTS)}, got {a.points}")
    prov = provenance_start(["python", "docs/rates/v5_probe/fstar_budget.py", *(argv if argv is not None else sys.argv[1:])])
    base = [t for t in tasks(plan_for("full")) if t["section"] == "fstar" and (t["d0"], t["width"]) in points]
    todo = []
    for t in base:
        b = t["budget"]
        todo.append({**t, "budget": {**b, "max_steps": b["max_steps"] * a.scale, "patience": b["patience"] * a.scale}})
    with tempfile.TemporaryDirectory() as tmp:
        todo = [{**t, "run_dir": str(run_dir_for(Path(tmp), t))} for t in todo]
        with ProcessPoolExecutor(a.workers) as ex:
            rows = list(ex.map(_run, todo))
    summary = [point_summary(rows, d0, w, a.scale) for d0, w in POINTS if (d0, w) in points]
    needed = [p["scale_needed"] for p in summary]
    cost = {"fstar_train_cpu_seconds_at_scale": V4_FSTAR_TRAIN_CPU_S * a.scale,
            "fstar_train_cpu_seconds_at_scale_needed": (V4_FSTAR_TRAIN_CPU_S * max(needed)
                                                        if all(n is not None for n in needed) else None)}
    atomic_write_json(a.out, {"scale": a.scale, "rows": rows, "points": summary, "cost": cost,
                              "provenance": provenance_end(prov)})
    print(json.dumps({"points": summary, "cost": cost}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
