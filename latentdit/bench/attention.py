"""``latentdit bench attention``: exact SDPA vs the polynomial method vs Performer FAVOR+.

Sweep 1 (timing): 4 heads, head size 4 with |logit| <= 3 and head size 8 with |logit| <= 1.5 (after
key centring; the certified bound is exactly that), L in {1024, 4096, 16384, 65536}, forward and
forward+backward, fp32. Repeats are interleaved across methods (side by side) and medians
reported. Relative errors are against float64 exact attention computed directly (forward: all
query rows up to L = 16384, a random subset of rows above; gradients: max over dq, dk, dv of the
relative Frobenius error, where the float64 reference fits). Exact runs that would take too long
are extrapolated from the exact method's fitted exponent (flagged ``extrapolated``).

Sweep 2 (phase transition): head size 4, max |logit| from 0.25 to 8 and several L: the error of
a fixed-degree polynomial (the one certified for |logit| <= 3), the degree/rank the criterion needs
for eps and its predicted speed-up, and FAVOR+ for contrast.

Run as ``python -m latentdit.bench.attention --out docs/bench/attention.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from latentdit.bench.attention_phases import format_profile, phase_profile
from latentdit.bench.attention_report import plot, summarize
from latentdit.io import atomic_write_json, check_output_file
from latentdit.progress import progress_bar
from latentdit.provenance import cpu_info, provenance_end, provenance_start
from latentdit.bench.attention_sweep import CONFIGS, HEADS, METHODS, phase_sweep, timing_sweep


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="latentdit bench attention", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="results JSON file")
    ap.add_argument("--plot", type=Path, default=None,
                    help="PNG with the timing and phase-transition plots (default: --out with .png)")
    ap.add_argument("--quick", action="store_true", help="small fast sweep (smoke test)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats per method (median reported)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads for every method (default 1: on a shared 2-core machine "
                         "OpenMP barriers stall whenever another process holds a core)")
    ap.add_argument("--eps", type=float, default=1e-3, help="certified relative error of the poly method")
    ap.add_argument("--num-features", type=int, default=256, help="FAVOR+ random features")
    ap.add_argument("--lengths", type=int, nargs="+", default=None)
    ap.add_argument("--exact-max-L", type=int, default=None,
                    help="largest L for timing exact forward (beyond: extrapolated)")
    ap.add_argument("--exact-fwdbwd-max-L", type=int, default=None,
                    help="largest L for timing exact forward+backward (beyond: extrapolated)")
    ap.add_argument("--exact-single-L", type=int, default=None,
                    help="also time one exact forward (head size 4) at this extrapolated length, to "
                         "check the extrapolation (default 0: skip)")
    ap.add_argument("--no-tune", dest="tune", action="store_false",
                    help="use the cost model's factorisation instead of timing the candidates first")
    ap.add_argument("--no-phase", action="store_true", help="skip the phase-transition sweep")
    ap.add_argument("--phases", action="store_true",
                    help="also profile the poly kernel phase by phase against its FLOP and memory floors "
                         "(latentdit.bench.attention_phases) at every length <= 16384")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    quick = args.quick
    args.lengths = args.lengths or ([256, 512, 1024] if quick else [1024, 4096, 16384, 65536])
    args.exact_max_L = args.exact_max_L or (1024 if quick else 16384)
    args.exact_fwdbwd_max_L = args.exact_fwdbwd_max_L or (1024 if quick else 16384)
    if args.exact_single_L is None:
        args.exact_single_L = 0
    args.full_error_max_L = 16384
    args.grad_error_max_L = 16384
    # head size 8 has no forward+backward target: its exact forward+backward (and float64 gradient
    # reference) stop earlier to keep the run short
    args.exact_fwdbwd_max_L_other = min(args.exact_fwdbwd_max_L, 1024 if quick else 4096)
    args.error_rows = 256 if quick else 2048
    args.phase_lengths = [256, 1024] if quick else [1024, 4096, 16384]
    args.phase_bounds = [0.5, 1.5, 3.0, 5.0] if quick else [0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0]
    args.phase_max_rank = 2000 if quick else 3000
    args.plot = args.plot or args.out.with_suffix(".png")
    return args


def _load() -> list[float] | None:
    try:
        return list(os.getloadavg())
    except OSError:  # pragma: no cover - not on every platform
        return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_output_file(args.out)
    check_output_file(args.plot, "--plot")
    torch.set_num_threads(args.threads)
    prov = provenance_start(["latentdit", "bench", "attention", *(sys.argv[1:] if argv is None else argv)])
    n_timing = 0
    for m, _ in CONFIGS:
        for L in args.lengths:
            for pas, lim in (("fwd", args.exact_max_L), ("fwdbwd", args.exact_fwdbwd_max_L if m == CONFIGS[0][0]
                                                              else args.exact_fwdbwd_max_L_other)):
                n_timing += args.repeats * (len(METHODS) - (0 if L <= lim else 1))
    n_timing += int(bool(args.exact_single_L) and args.exact_single_L > args.exact_max_L)
    n_phase = 0 if args.no_phase else len(args.phase_lengths) * len(args.phase_bounds)
    t0, load0 = time.time(), _load()
    with progress_bar(total=n_timing + n_phase, desc="bench attention") as bar:
        data = timing_sweep(args, bar)
        phase = None if args.no_phase else phase_sweep(args, bar)
        profiles = None
        if args.phases:
            profiles = [phase_profile(L, m, R, heads=HEADS, eps=args.eps, repeats=args.repeats, seed=args.seed)
                        for m, R in CONFIGS for L in args.lengths if L <= 16384]
    summary = summarize(data)
    report = {
        "command": "latentdit bench attention " + " ".join(sys.argv[1:] if argv is None else argv),
        **summary,
        "setting": {"heads": HEADS, "dtype": "float32", "threads": args.threads, "eps": args.eps,
                    "repeats": args.repeats, "configs": [{"head_dim": m, "logit_bound": R} for m, R in CONFIGS],
                    "performer_features": args.num_features, "seed": args.seed,
                    "rel_error": "||out - exact||_F / ||exact||_F vs float64 exact; fwdbwd rows: max over "
                                 "dq, dk, dv; rows above L=16384: a random subset of query rows"},
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpu": cpu_info(),
                    "cpu_count": os.cpu_count(), "torch": torch.__version__, "load_average_start": load0},
        "wall_s": time.time() - t0,
        "results": data["results"],
        "certificates": data["certificates"],
        "exact_single_run": data["exact_single_run"],
        "phase_transition": phase,
        "phase_profiles": profiles,
    }
    report["machine"]["load_average_end"] = _load()
    report["provenance"] = provenance_end(prov)
    atomic_write_json(args.out, report, indent=1)
    plot(data, phase, args.plot)
    print(json.dumps(summary, indent=1))
    for p in profiles or ():
        print(format_profile(p))
    print(f"wrote {args.out} and {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
