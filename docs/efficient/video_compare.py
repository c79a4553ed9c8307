"""The video plan's comparisons between runs, read with the plan's rules (docs/efficient/video_plan.md).

    python docs/efficient/video_compare.py [--dir docs/efficient/video_v3] [--out docs/efficient/video_v3/comparisons.json]

Reads every run report ``R<k>_<variant>_F<frames>.json`` in ``--dir`` (R1 and R5 predate the temporal
figures in the report; theirs come from ``temporal.json``, the rescoring of their samples) and
writes, per run, the figures of the plan and, per pair of the plan, the differences with the plan's
reading:
- per-clip figures (identity consistency, speed W1 / mean real speed): a difference counts when it
  is at least 0.1 (the plan: 100 clips carry a binomial standard error of up to 0.05);
- temporal figures (class agreement excess, shape step ratio): a difference counts when it exceeds
  twice the standard error of the difference (the two runs' clip standard errors in quadrature) and
  0.05 in absolute value;
- the per-frame accuracy and the held-out DSM loss of the learning check, beside them (one seed per
  run: no interval, no rule).
The sign convention: ``diff = first - second``; ``better`` says which run the difference favours
(lower speed W1, excess further above 0, shape ratio lower, loss lower are better).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# (first, second, what the pair reads) as in the plan
PAIRS = (("R1", "R2", "attention adds (poly against no attention, 164 frames)"),
         ("R6", "R4", "the logit bound and query/key size together (44 frames, exact)"),
         ("R7", "R4", "the logit bound at query/key size 2 (44 frames, exact)"),
         ("R6", "R7", "query/key size 16 against 2 without a bound (44 frames, exact)"),
         ("R4", "R5", "exact against poly under the same bound (44 frames)"),
         ("R3", "R1", "ReLU linear against poly (164 frames)"))
TEMPORAL = ("class_agreement_excess", "shape_step_ratio")
PER_CLIP = ("identity_consistency", "speed_w1_rel")
LOWER_IS_BETTER = {"speed_w1_rel", "shape_step_ratio", "loss_trained"}


def load_runs(folder: Path) -> dict:
    """{run id: figures} from the run reports in ``folder`` (temporal figures of R1/R5 from temporal.json)."""
    rescored = {}
    tpath = folder / "temporal.json"
    if tpath.is_file():
        for run in json.loads(tpath.read_text())["runs"].values():
            rescored[(run["attention"], run["frames"])] = run["model"]
    runs = {}
    for p in sorted(folder.glob("R*_*_F*.json")):
        m = re.match(r"(R\d+)_", p.name)
        rep = json.loads(p.read_text())
        ev = dict(rep["eval"])
        if "shape_step_ratio" not in ev:
            ev.update({k: v for k, v in rescored.get((rep["variant"], rep["frames"]), {}).items()
                       if k.startswith(("class_agreement", "shape_step"))})
        runs[m.group(1)] = {"file": p.name, "variant": rep["variant"], "frames": rep["frames"], "tokens": rep["tokens"],
                            "steps_trained": rep["steps_trained"], "loss_trained": rep["loss_trained"],
                            "loss_init": rep["loss_init"], "beats_init": rep["beats_init"],
                            "beats_gaussian": rep["beats_gaussian"], "accuracy": ev["accuracy"],
                            **{k: ev.get(k) for k in PER_CLIP},
                            **{k: ev.get(k) for t in TEMPORAL for k in (t, t + "_se")},
                            "constant_velocity": ev.get("constant_velocity"),
                            "model": {k: rep["config"]["model"].get(k) for k in ("qk_norm", "qk_dim", "attention")}}
    return runs


def _better(key: str, diff: float) -> str:
    if key == "class_agreement_excess":
        return "first" if diff > 0 else "second"
    return ("first" if diff < 0 else "second") if key in LOWER_IS_BETTER else ("first" if diff > 0 else "second")


def compare(a: dict, b: dict) -> dict:
    """The differences of run ``a`` minus run ``b`` with the plan's reading of each."""
    out = {}
    for k in PER_CLIP:
        d = a[k] - b[k]
        out[k] = {"diff": d, "counts": abs(d) >= 0.1, "better": _better(k, d)}
    for k in TEMPORAL:
        if a.get(k) is None or b.get(k) is None:
            continue
        d, se = a[k] - b[k], math.hypot(a[k + "_se"], b[k + "_se"])
        out[k] = {"diff": d, "se": se, "counts": abs(d) > 2 * se and abs(d) > 0.05, "better": _better(k, d)}
    for k in ("accuracy", "loss_trained"):  # reported beside the readings, no rule of the plan
        d = a[k] - b[k]
        out[k] = {"diff": d, "better": _better(k, d)}
    return out


def main(argv: list[str] | None = None) -> int:
    from latentdit.io import atomic_write_json
    from latentdit.provenance import provenance_end, provenance_start

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=ROOT / "docs" / "efficient" / "video_v3")
    ap.add_argument("--out", type=Path, default=None, help="default: DIR/comparisons.json")
    a = ap.parse_args(argv)
    if not a.dir.is_dir():
        ap.error(f"--dir {a.dir} is not a directory")
    prov = provenance_start(["python", "docs/efficient/video_compare.py", *(argv if argv is not None else sys.argv[1:])])
    runs = load_runs(a.dir)
    pairs = [{"first": x, "second": y, "reads": what, **compare(runs[x], runs[y])}
             for x, y, what in PAIRS if x in runs and y in runs]
    missing = [f"{x} vs {y}" for x, y, _ in PAIRS if x not in runs or y not in runs]
    atomic_write_json(a.out or a.dir / "comparisons.json",
                      {"runs": runs, "pairs": pairs, "not_run": missing, "provenance": provenance_end(prov)})
    for p in pairs:
        cells = "; ".join(f"{k} {v['diff']:+.4f}" + (f" (SE {v['se']:.4f})" if "se" in v else "")
                          + (" counts" if v.get("counts") else "") for k, v in p.items() if isinstance(v, dict))
        print(f"{p['first']} - {p['second']} ({p['reads']}): {cells}")
    if missing:
        print("not run:", ", ".join(missing))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
