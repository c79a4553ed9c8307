"""Temporal coherence of finished video runs, rescored from their samples (a diagnostic, not a target).

    python docs/efficient/video_temporal.py RUN_OUT [RUN_OUT ...] --out docs/efficient/video_v3/temporal.json

RUN_OUT is the ``--out`` of ``python -m latentdit.experiments.video`` (its ``samples.npz`` and
``run/config.json``). For each run: :func:`latentdit.evaluation.video.clip_metrics` of its clips and
of fresh real clips of its configuration (the same real sets and classifier as the run's own
evaluation: seeds ``eval.seed + 1`` and ``+ 2``, the classifier of seed 0), so the identity and
motion figures repeat the run's report and the temporal ones are added next to them. Runs made after
the temporal metrics existed carry them in their own report; this rescoring is for the earlier ones.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from latentdit.config import Config
from latentdit.data.real import load_data
from latentdit.data.video import moving_mnist_from_config
from latentdit.evaluation.video import clip_metrics
from latentdit.io import atomic_write_json
from latentdit.metrics.classifier import train_classifier
from latentdit.provenance import provenance_end, provenance_start


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+", help="--out directories of finished video runs")
    ap.add_argument("--out", type=Path, required=True, help="the JSON to write")
    a = ap.parse_args(argv)
    for r in a.runs:
        if not (r / "samples.npz").is_file() or not (r / "run" / "config.json").is_file():
            raise SystemExit(f"error: {r} is not a finished video run (needs samples.npz and run/config.json)")
    prov = provenance_start(["python", "docs/efficient/video_temporal.py", *argv])
    mnist = load_data("mnist", normalise="minmax", seed=0)
    clf, test_acc = train_classifier(mnist, epochs=8, seed=0)
    rows = {}
    for r in a.runs:
        cfg = Config.from_dict(json.loads((r / "run" / "config.json").read_text()))
        d = np.load(r / "samples.npz")
        clips, labels = torch.from_numpy(d["x"]), torch.from_numpy(d["labels"])
        real = moving_mnist_from_config(cfg.data, n=len(clips), seed=cfg.eval.seed + 1)
        real_b = moving_mnist_from_config(cfg.data, n=len(clips), seed=cfg.eval.seed + 2).render()
        rows[r.name] = {"model": clip_metrics(clips, labels, real_b, clf, mnist.norm),
                        "real": clip_metrics(real.render(), real.labels, real_b, clf, mnist.norm),
                        "frames": cfg.data.frames, "attention": cfg.model.attention, "num_clips": len(clips)}
        print(r.name, json.dumps(rows[r.name]), flush=True)
    atomic_write_json(a.out, {"runs": rows, "classifier_test_accuracy": test_acc, "provenance": provenance_end(prov)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
