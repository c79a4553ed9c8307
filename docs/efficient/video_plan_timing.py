"""Steps per second of the video reference configuration, measured before its plan fixes the steps.

    python docs/efficient/video_plan_timing.py [--out docs/efficient/video_plan_timing.json]

Trains configs/moving_mnist.toml for 80 steps (40 on windows, 40 on whole clips; 200 clips, the
per-step cost does not depend on their number) in a temporary directory and writes the logged steps
per second of each phase with provenance. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from latentdit.cli import main as cli
from latentdit.io import atomic_write_json
from latentdit.provenance import provenance_end, provenance_start

ROOT = Path(__file__).resolve().parents[2]
SETS = ["data.n=200", "train.steps=80", "train.window_steps=40", "train.log_every=10", "train.checkpoint_every=0"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "efficient" / "video_plan_timing.json")
    a = ap.parse_args(argv)
    prov = provenance_start(["python", "docs/efficient/video_plan_timing.py", *(argv or sys.argv[1:])])
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        args = ["train", "--config", str(ROOT / "configs" / "moving_mnist.toml"), "--out", str(run), "--quiet"]
        if cli(args + [x for s in SETS for x in ("--set", s)]) != 0:
            raise SystemExit("the timing run failed")
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        rows = [r for r in rows if "loss" in r]
        ae = json.loads((run / "model" / "autoencoder.json").read_text())["train_seconds"]
    out = {"window_steps_per_s": [r["steps_per_s"] for r in rows if r.get("window_frames")],
           "clip_steps_per_s": [r["steps_per_s"] for r in rows if not r.get("window_frames")],
           "autoencoder_train_seconds": ae, "overrides": SETS, "rows": rows}
    atomic_write_json(a.out, {**out, "provenance": provenance_end(prov)})
    print(json.dumps({k: v for k, v in out.items() if k != "rows"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
