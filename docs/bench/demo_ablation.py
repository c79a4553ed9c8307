"""Sample one trained real-data run under several sampling settings and measure each.

    python docs/bench/demo_ablation.py --run runs/demo/run --num 1000 --out docs/bench/ablation.json \
        g=2,d=1,fid=1 g=1.5,d=1 g=2,d=0,s=100,sm=ei

Each setting is a comma-separated list: ``g`` guidance scale, ``d`` 1 for the final Tweedie step
(``sample.denoise``), ``s`` sampler steps (30), ``sm`` sampler (dpm2m), ``fid`` 1 to compute the
Inception FID too (about 4 minutes per 1,000 images on 2 CPU cores; the real set's features come
from the demo's cache). Every setting uses the same seed and the same balanced labels.

Reported per setting: ``var_ratio_quarters`` (generated / real variance of the latent coordinates,
median over each quarter of the PCA coordinates, largest variance first), ``off_subspace`` (mean
squared norm of the part of a sample off span(W_B)), ``classifier_accuracy`` and ``classifier_fd``
(the demo's classifier), and ``fid``. FIDs from different ``--num`` are not comparable (the
estimator is biased upwards at small sample sizes): compare settings within one file.
"""

from __future__ import annotations

import argparse
import json
import time
import sys
from pathlib import Path

import numpy as np
import torch


def parse_setting(text: str) -> dict:
    kv = dict(part.split("=", 1) for part in text.split(","))
    return {"guidance": float(kv.get("g", 1.0)), "denoise": bool(int(kv.get("d", 0))),
            "steps": int(kv.get("s", 30)), "sampler": kv.get("sm", "dpm2m"), "fid": bool(int(kv.get("fid", 0)))}


def main() -> None:
    from latentdit.evaluation.baselines import balanced_labels, classifier_features
    from latentdit.evaluation.real import load_real
    from latentdit.io import atomic_write_json, check_output_file
    from latentdit.metrics.fid import cache_dir, cached_features
    from latentdit.provenance import provenance_end, provenance_start
    from latentdit.metrics.classifier import classifier_accuracy, train_classifier
    from latentdit.metrics.fid import InceptionFeatures, fid_from_features
    from latentdit.evaluation import run_config
    from latentdit.pipeline import LatentDiTPipeline

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True,
                    help="a run directory or export (for a demo output DIR: DIR/run)")
    ap.add_argument("--num", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    ap.add_argument("settings", nargs="+")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.out is not None:
        check_output_file(args.out)
    prov = provenance_start(["python", *sys.argv])
    settings = {s: parse_setting(s) for s in args.settings}

    pipe, cfg = LatentDiTPipeline.from_pretrained(args.run), run_config(args.run)
    model = pipe.model
    loaded = load_real(cfg)
    W = model.W_B.detach().double()
    real_var = (loaded.x.double() @ W).var(0)
    clf, test_acc = train_classifier(loaded, epochs=8, seed=args.seed)
    f_clf_real = classifier_features(clf, loaded.x)
    labels = balanced_labels(args.num, model.num_classes) if model.num_classes else None
    ext, f_real = None, None
    out = {"run": str(args.run), "num": args.num, "seed": args.seed, "latent_dim": model.latent_dim,
           "classifier_test_accuracy": test_acc, "settings": {}}
    for name, s in settings.items():
        x = pipe.sample_model_space(args.num, sampler=s["sampler"], steps=s["steps"], seed=args.seed, labels=labels,
                                    guidance=s["guidance"], denoise=s["denoise"]).cpu()
        h = x.double() @ W
        ratio = (h.var(0) / real_var).numpy()
        q = max(len(ratio) // 4, 1)
        r = {**{k: v for k, v in s.items() if k != "fid"},
             "var_ratio_quarters": [float(np.median(ratio[i * q:(i + 1) * q])) for i in range(4)],
             "off_subspace": float((x.double() - h @ W.T).pow(2).sum(1).mean())}
        if labels is not None:
            r["classifier_accuracy"] = classifier_accuracy(clf, x, labels)
            r["classifier_fd"] = fid_from_features(f_clf_real, classifier_features(clf, x))
        if s["fid"]:
            if ext is None:
                ext = InceptionFeatures("cpu")
                f_real = cached_features(loaded.to_images(loaded.x), ext, cache=cache_dir(), progress=True)
            t0 = time.time()
            r["fid"] = fid_from_features(f_real, ext.features(loaded.to_images(x)))
            r["fid_seconds"] = time.time() - t0
        out["settings"][name] = r
        print(name, json.dumps(r), flush=True)
    if args.out is not None:
        out["provenance"] = provenance_end(prov)
        atomic_write_json(args.out, out)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
