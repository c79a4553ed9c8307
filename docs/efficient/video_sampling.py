"""Is sampling what limits the video samples? A trained run re-sampled with other samplers (a diagnostic).

    python docs/efficient/video_sampling.py RUN_OUT --out docs/efficient/video_v3/sampling_R4.json

RUN_OUT is the ``--out`` of a finished ``python -m latentdit.experiments.video`` run (its ``run/``
directory). The trained model is sampled with each setting of :data:`SETTINGS` (sampler, NFE budget
in steps, guidance), ``eval.num_samples`` clips with the classes cycled and the run's sampling seed,
and scored by :func:`latentdit.evaluation.video.clip_metrics` against the run's second real set with
the classifier of seed 0: the same scoring as the run's own report, whose setting (dpm2m, 20 steps,
guidance 2) is the first row, so the first row repeats the report.

The plan, fixed before any of these samples was drawn. The settings: the run's own; 50 and 100
steps of dpm2m (the ODE more finely solved); 200 steps of Euler-Maruyama on the reverse SDE (noise
injected along the path, which can correct early placement errors); each of the last two also at
guidance 4. The reading, per setting against the first row: sampling limits the samples when the
per-frame accuracy rises by 0.1 or more (the per-clip figures of 100 clips carry a standard error of
up to 0.05); it does not when every setting is within 0.1 of the first row.

Amended after the first two rows of R4 (``video3_exact44``), before any other: dpm2m at 20 and at 50
steps gave per-frame accuracy 0.4984 and 0.4982, identity 0.0 and 0.0, speed W1 0.279 and 0.278
(the ODE is solved at 20 steps), and they took about 3 and 8 minutes of the 2 cores for 100 clips,
so the six settings would have held the machine for about two hours. The amended run
(``--settings dpm2m:20:2 em:200:2 dpm2m:20:4 em:200:4 --num 40``) drops the finer ODE solves,
keeps the reverse SDE and guidance 4, and samples 40 clips per setting, its own dpm2m 20-step row
the baseline of the reading (per-clip standard errors up to 0.08; the reading's 0.1 stays).

Added after the amended run's first three rows (guidance 4 raised the per-frame accuracy from 0.473
to 0.627 at dpm2m 20 steps; the reverse SDE at guidance 2 to 0.518), before any sample of this
addition: a guidance sweep, dpm2m at 20 steps with guidance 1, 2, 3, 4, 6, 8 and 12 on 40 clips
(``--settings dpm2m:20:1 dpm2m:20:2 dpm2m:20:3 dpm2m:20:4 dpm2m:20:6 dpm2m:20:8 dpm2m:20:12 --num
40``). It is reported whole, as per-frame accuracy, identity and speed W1 against guidance; no
guidance is picked from it for the run it samples. For a later reference run the rule is fixed
here: the smallest guidance of the sweep whose per-frame accuracy is within 0.02 of the sweep's
largest.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from latentdit.config import Config
from latentdit.data.real import load_data
from latentdit.data.video import moving_mnist_from_config
from latentdit.evaluation.video import clip_metrics
from latentdit.io import atomic_write_json
from latentdit.metrics.classifier import train_classifier
from latentdit.pipeline import LatentDiTPipeline
from latentdit.provenance import provenance_end, provenance_start

SETTINGS = (("dpm2m", 20, 2.0), ("dpm2m", 50, 2.0), ("dpm2m", 100, 2.0), ("em", 200, 2.0),
            ("dpm2m", 100, 4.0), ("em", 200, 4.0))


def _setting(text: str) -> tuple[str, int, float]:
    """'SAMPLER:STEPS:GUIDANCE' -> (sampler, steps, guidance); a one-line error otherwise."""
    parts = text.split(":")
    try:
        sampler, steps, guidance = parts[0], int(parts[1]), float(parts[2])
    except (IndexError, ValueError):
        raise SystemExit(f"error: --settings {text!r}: expected SAMPLER:STEPS:GUIDANCE, e.g. dpm2m:20:2") from None
    if len(parts) != 3 or not 1 <= steps <= 10_000 or not 0 <= guidance <= 100:
        raise SystemExit(f"error: --settings {text!r}: expected SAMPLER:STEPS:GUIDANCE with 1 <= STEPS <= 10000 "
                         "and 0 <= GUIDANCE <= 100")
    return sampler, steps, guidance


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="--out directory of a finished video run")
    ap.add_argument("--out", type=Path, required=True, help="the JSON to write")
    ap.add_argument("--num", type=int, default=None, help="clips per setting (default: the run's eval.num_samples)")
    ap.add_argument("--settings", nargs="+", default=None, metavar="SAMPLER:STEPS:GUIDANCE",
                    help="the settings to sample (default: SETTINGS)")
    a = ap.parse_args(argv)
    settings = SETTINGS if a.settings is None else [_setting(p) for p in a.settings]  # checked before any work
    if not (a.run / "run" / "config.json").is_file():
        raise SystemExit(f"error: {a.run} is not a finished video run (needs run/config.json)")
    prov = provenance_start(["python", "docs/efficient/video_sampling.py", *argv])
    cfg = Config.from_dict(json.loads((a.run / "run" / "config.json").read_text()))
    pipe = LatentDiTPipeline.from_pretrained(a.run / "run")
    num, k = a.num or cfg.eval.num_samples, pipe.model.num_classes
    labels = torch.arange(num) % max(k, 1)
    real_b = moving_mnist_from_config(cfg.data, n=num, seed=cfg.eval.seed + 2).render()
    mnist = load_data("mnist", normalise="minmax", seed=0)
    clf, test_acc = train_classifier(mnist, epochs=8, seed=0)
    rows = []
    for sampler, steps, guidance in settings:
        t0 = time.time()
        clips = pipe(num, labels=labels if k > 0 else None, steps=steps, sampler=sampler, guidance=guidance,
                     seed=cfg.eval.seed, batch_size=16)
        row = {"sampler": sampler, "steps": steps, "guidance": guidance, "sample_seconds": time.time() - t0,
               **clip_metrics(clips, labels, real_b, clf, mnist.norm)}
        rows.append(row)
        print(json.dumps({key: row[key] for key in ("sampler", "steps", "guidance", "accuracy",
                                                   "identity_consistency", "speed_w1_rel")}), flush=True)
    atomic_write_json(a.out, {"run": str(a.run), "frames": cfg.data.frames, "attention": cfg.model.attention,
                              "num_clips": num, "rows": rows, "classifier_test_accuracy": test_acc,
                              "provenance": provenance_end(prov)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
