"""Inception feature throughput (images/s): the reference path against the fast paths, and the FID
error of bf16 autocast against fp32.

``latentdit bench inception --out FILE.json [--quick] [--threads N] [--images N] [--repeats R]
[--batch-sizes 16,50,100] [--fid-images N]``

Timed paths, on the same real MNIST digits (28 x 28, as in the demo), interleaved in every repeat,
median of ``--repeats``:

- ``reference``: the settings of earlier versions: fp32, the 28 -> 299 resize by ``grid_sample``
  on 3 channels, the network as shipped, batch 50, channels_last, inference_mode;
- ``fp32_b<B>``: the default path: the separable resize on one channel and the network with its
  batch norms folded into the convolutions (:func:`~latentdit.metrics.fid.fold_batch_norm`), batch
  B for each ``--batch-sizes`` (features equal to the reference's within ``feature_error``);
- ``bf16_b<B>``: the same under bfloat16 autocast (on the network as shipped).

``feature_error``: max |f - f_ref| and ||f - f_ref|| / ||f_ref|| of each path's features on the
timed images. ``fid_check`` (``--fid-images N``, 0 to skip): FID in fp32 and in bf16 of N real
images against N other real images (``real_halves``), against N Gaussian latent baseline images
(PCA, 64 dimensions, the demo's latent size; ``real_vs_baseline``) and against N real images
blurred by a 3 x 3 box filter (``real_vs_blurred``), and the differences bf16 - fp32.
"""

from __future__ import annotations

import copy
import sys
import time

import torch

from latentdit.bench import bench_parser, interleaved_times, medians, parse_bench_args
from latentdit.data.real import load_data
from latentdit.firststage.linear import pca_basis
from latentdit.evaluation.baselines import GaussianLatentBaseline
from latentdit.io import atomic_write_json
from latentdit.metrics.fid import InceptionFeatures, fid_from_features
from latentdit.provenance import provenance_end, provenance_start

FULL = dict(images=100, repeats=3, batch_sizes=(16, 50, 100), fid_images=500)
QUICK = dict(images=4, repeats=1, batch_sizes=(2,), fid_images=6)
REFERENCE_BATCH = 50


def _variants(base, batch_sizes) -> dict:
    """name -> (extractor sharing ``base``'s network, batch size)."""
    base.network()  # build the folded fp32 network once; the copies share it

    def make(precision: str, fast: bool):
        e = copy.copy(base)
        e.precision, e.fast_resize, e.fold_bn = precision, fast, fast
        return e

    out = {"reference": (make("fp32", False), REFERENCE_BATCH)}
    for precision in ("fp32", "bf16"):
        out.update({f"{precision}_b{b}": (make(precision, True), b) for b in batch_sizes})
    return out


def _errors(feats: dict[str, torch.Tensor]) -> dict:
    ref = feats["reference"]
    return {k: {"max_abs": float((f - ref).abs().max()), "rel_fro": float((f - ref).norm() / ref.norm())}
            for k, f in feats.items() if k != "reference"}


def fid_check(base, loaded, n: int, batch: int) -> dict:
    """FID of real vs real, baseline and blurred images, in fp32 and bf16 (see the module doc)."""
    images = loaded.to_images(loaded.x)
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    real_a, real_b, rest = images[perm[:n]], images[perm[n:2 * n]], images[perm[2 * n:3 * n]]
    blurred = torch.nn.functional.avg_pool2d(rest[:, None], 3, stride=1, padding=1, count_include_pad=False)[:, 0]
    W, _ = pca_basis(loaded.x, min(64, loaded.dim))
    baseline = loaded.to_images(GaussianLatentBaseline.fit(loaded.x, W).sample(n, torch.Generator().manual_seed(1)))
    out: dict = {"images_per_set": n}
    for precision in ("fp32", "bf16"):
        e = _variants(base, (batch,))[f"{precision}_b{batch}"][0]
        t0 = time.perf_counter()
        f = {k: e.features(v, batch) for k, v in (("a", real_a), ("b", real_b), ("base", baseline), ("blur", blurred))}
        out[precision] = {"real_halves": fid_from_features(f["a"], f["b"]),
                          "real_vs_baseline": fid_from_features(f["a"], f["base"]),
                          "real_vs_blurred": fid_from_features(f["a"], f["blur"]),
                          "seconds": time.perf_counter() - t0}
        print(f"[fid-check] {precision}: " + "  ".join(f"{k} {v:.3f}" for k, v in out[precision].items()), flush=True)
    out["bf16_minus_fp32"] = {k: out["bf16"][k] - out["fp32"][k]
                              for k in ("real_halves", "real_vs_baseline", "real_vs_blurred")}
    out["max_abs_dfid"] = max(abs(v) for v in out["bf16_minus_fp32"].values())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = bench_parser("inception", __doc__, quick_help="4 images, one repeat, a 6-image FID check (a smoke test)",
                      out_help="JSON file to write")
    ap.add_argument("--images", type=int, default=None, help="images per timed run (default 100)")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 3)")
    ap.add_argument("--batch-sizes", default=None, help="batch sizes of the bf16 path, comma-separated (16,50,100)")
    ap.add_argument("--fid-images", type=int, default=None, help="images per set in the FID check (500; 0 skips)")
    args, argv = parse_bench_args(ap, argv)
    p = dict(QUICK if args.quick else FULL)
    for k in ("images", "repeats", "fid_images"):
        if getattr(args, k) is not None:
            p[k] = getattr(args, k)
    if args.batch_sizes:
        p["batch_sizes"] = tuple(int(b) for b in args.batch_sizes.split(","))
    if p["images"] < 1 or p["repeats"] < 1 or p["fid_images"] < 0 or min(p["batch_sizes"]) < 1:
        ap.error("--images, --repeats and --batch-sizes must be positive and --fid-images >= 0")
    prov = provenance_start(["latentdit", "bench", "inception", *argv])

    loaded = load_data("mnist", normalise="minmax", seed=0)
    if 3 * p["fid_images"] > len(loaded) or p["images"] > len(loaded):
        ap.error(f"--images must be <= {len(loaded)} and --fid-images <= {len(loaded) // 3} (3 disjoint real sets)")
    images = loaded.to_images(loaded.x[:p["images"]])
    base = InceptionFeatures("cpu")
    variants = _variants(base, p["batch_sizes"])
    feats = {k: e.features(images[:max(2, min(b, len(images)))], b) for k, (e, b) in variants.items()}  # warm-up
    feats = {k: e.features(images, b) for k, (e, b) in variants.items()}
    jobs = {k: (lambda e=e, b=b: e.features(images, b)) for k, (e, b) in variants.items()}
    times = interleaved_times(jobs, p["repeats"], "inception")
    med = medians(times)
    ips = {k: len(images) / t for k, t in med.items()}
    best = {p_: max((k for k in ips if k.startswith(p_)), key=ips.get) for p_ in ("fp32", "bf16")}
    report = {"images_per_s": ips, "speedup_over_reference": {k: v / ips["reference"] for k, v in ips.items()},
              "best": best, "feature_error": _errors(feats), "times_s": times, "median_s": med,
              "params": {**p, "batch_sizes": list(p["batch_sizes"]), "reference_batch": REFERENCE_BATCH},
              "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
              "cpu_native_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
              "torch": torch.__version__}
    print("images/s: " + "  ".join(f"{k} {v:.2f}" for k, v in ips.items()), flush=True)
    if p["fid_images"] > 0:
        report["fid_check"] = fid_check(base, loaded, p["fid_images"], REFERENCE_BATCH)
    report["provenance"] = provenance_end(prov)
    atomic_write_json(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
