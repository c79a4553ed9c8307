"""The FID that the linear latent alone costs: real images projected onto the PCA subspace.

    python docs/bench/fid_floor.py --out docs/bench/fid_floor.json [--dims 64,256] [--num 2000]

A model of eq. (2.5) generates x = W_B h, so even a perfect latent distribution produces the
projections W_B W_B^T x of real images, never the images themselves. For each d0 this script takes
``--num`` random real images of the demo's data (MNIST, normalised as for training), projects them
onto the top-d0 PCA subspace (the demo's frozen encoder) and reports the Inception FID of the
projections against the whole real set (``fid_projection``): what a model that learned the latent
distribution exactly would score at that d0. The real set's features come from the demo's cache (``~/.cache/latentdit``).
"""

from __future__ import annotations

import argparse
import time
import sys
from pathlib import Path

import torch


def main() -> None:
    from latentdit.io import atomic_write_json, check_output_file
    from latentdit.provenance import provenance_end, provenance_start
    from latentdit.firststage.linear import pca_basis
    from latentdit.experiments.demo import DEMO_CONFIG
    from latentdit.evaluation.real import load_real
    from latentdit.metrics.fid import cache_dir, cached_features
    from latentdit.config import Config
    from latentdit.metrics.fid import InceptionFeatures, fid_from_features

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/bench/fid_floor.json"))
    ap.add_argument("--dims", default="64,256")
    ap.add_argument("--num", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    check_output_file(args.out)
    prov = provenance_start(["python", *sys.argv])
    loaded = load_real(Config.from_dict(DEMO_CONFIG))
    ext = InceptionFeatures("cpu")
    f_real = cached_features(loaded.to_images(loaded.x), ext, cache=cache_dir(), progress=True)
    pick = torch.randperm(len(loaded), generator=torch.Generator().manual_seed(args.seed))[:args.num]
    out: dict = {"data": loaded.name, "num_real": len(loaded), "num": args.num, "dims": {}}
    for d0 in (int(d) for d in args.dims.split(",")):
        t0 = time.time()
        W, retained = pca_basis(loaded.x, d0)
        x = loaded.x[pick]
        proj = (x @ W) @ W.T
        f = ext.features(loaded.to_images(proj), progress=True)
        out["dims"][d0] = {"fid_projection": fid_from_features(f_real, f), "pca_retained_energy": retained,
                           "seconds": time.time() - t0}
        print(f"d0={d0}: FID of projected real images {out['dims'][d0]['fid_projection']:.2f} "
              f"(energy retained {retained:.3f})", flush=True)
    out["provenance"] = provenance_end(prov)
    atomic_write_json(args.out, out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
