"""Does a cosine LR bring the fstar runs of the rates plan nearer their plateau than v3's constant LR?

    python docs/rates/v4_probe/fstar_schedule.py [--out docs/rates/v4_probe/fstar_schedule.json]

Runs the full plan's fstar tasks at (d0, width) = (4, 16) and (16, 32), seeds 0-2, with the
schedule "cosine" (the same cap, warmup, patience and plateau rule; the LR falls to 5% at the cap),
two tasks at a time on one thread each, plus seed 0 of (4, 16) with v3's constant LR, to compare
with the row of the v3 run. Writes per task eps_hat at the budget and at twice it, and per point the
change at the doubled budget in seed standard errors (the plan's convergence rule: below 1).
Made before plan version 4 was fixed; run it on an idle machine.

The decision, fixed before the probe ran: plan version 4 takes the cosine schedule for fstar if its
change at the doubled budget, in seed standard errors, is below the constant LR's at both points
(v3's rows: 4.997 SE at (4, 16), 13.749 SE at (16, 32)); otherwise it keeps v3's constant LR.
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
# the constant-LR change at the doubled budget in seed SE, from docs/rates/v3/rows.csv (the decision's threshold)
V3_CONSTANT = {(4, 16): 4.997, (16, 32): 13.749}


def _run(task: dict) -> dict:
    import torch

    from latentdit.experiments.rates.run import run_task

    torch.set_num_threads(1)
    r = run_task(task)
    ran = json.loads((Path(task["run_dir"]) / "config.json").read_text())["optim"]["schedule"]
    if ran != task.get("schedule", "constant"):
        raise SystemExit(f"the run trained with schedule {ran!r}, not the task's {task.get('schedule')!r}")
    return ({k: task[k] for k in ("d0", "width", "seed")} | {"schedule": ran} |
            {k: r.get(k) for k in ("eps_hat", "eps_hat_2x", "steps_trained", "steps_trained_2x", "lr_decays",
                                   "lr_decays_2x", "train_cpu_seconds")})


def main(argv: list[str] | None = None) -> int:
    from latentdit.experiments.rates.plan import plan_for, tasks
    from latentdit.experiments.rates.run import run_dir_for
    from latentdit.io import atomic_write_json
    from latentdit.provenance import provenance_end, provenance_start

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "rates" / "v4_probe" / "fstar_schedule.json")
    a = ap.parse_args(argv)
    prov = provenance_start(["python", "docs/rates/v4_probe/fstar_schedule.py", *(argv or sys.argv[1:])])
    base = [t for t in tasks(plan_for("full")) if t["section"] == "fstar" and (t["d0"], t["width"]) in POINTS]
    with tempfile.TemporaryDirectory() as tmp:
        todo = [{**t, "schedule": "cosine"} for t in base]
        todo += [t for t in base if (t["d0"], t["width"], t["seed"]) == (4, 16, 0)]
        todo = [{**t, "run_dir": str(run_dir_for(Path(tmp) / t.get("schedule", "constant"), t))} for t in todo]
        with ProcessPoolExecutor(2) as ex:
            rows = list(ex.map(_run, todo))
    points = []
    for d0, w in POINTS:
        rs = [r for r in rows if (r["d0"], r["width"], r["schedule"]) == (d0, w, "cosine")]
        e1, e2 = np.array([r["eps_hat"] for r in rs]), np.array([r["eps_hat_2x"] for r in rs])
        se = float(e1.std(ddof=1) / math.sqrt(len(e1)))
        points.append({"d0": d0, "width": w, "mean": float(e1.mean()), "mean_2x": float(e2.mean()), "se": se,
                       "change_in_se": float(abs(e2.mean() - e1.mean()) / se),
                       "constant_lr_change_in_se_v3": V3_CONSTANT[(d0, w)]})
    cosine = all(p["change_in_se"] < p["constant_lr_change_in_se_v3"] for p in points)
    atomic_write_json(a.out, {"rows": rows, "points": points, "decision": "cosine" if cosine else "constant",
                              "provenance": provenance_end(prov)})
    print(json.dumps(points, indent=1), "decision:", "cosine" if cosine else "constant")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
