"""What aligned chunk lengths (``CHUNK_ALIGN`` in latentdit/attention/kernels.py) buy, side by side.

    python docs/bench/chunk_align.py --out docs/bench/chunk_align.json [--repeats 5] [--no-network]

The polynomial kernel runs over L in chunks whose length comes from a feature budget. With
``CHUNK_ALIGN = 1`` a balanced chunk can be any length (365 rows at the DiT's call, L = 16384);
with 16, every chunk is a multiple of 16 rows, so each row of the chunk buffers starts on a 64-byte
boundary. This script sets the constant to 1 and to 16 in turn, in one process, and times:

- ``dit_kernel``: the DiT block's call (batch 4 x 4 heads, query/key size 4 on the sphere, value
  size 32; the inputs of ``python -m latentdit.bench.attention_phases --dit``), forward and
  forward + backward, 2 threads;
- ``head8_kernel``: the kernel benchmark's head-8 call (4 heads, |logit| <= 1.5, unsplit), forward
  and forward + backward, 1 thread as in ``latentdit bench attention``;
- ``network``: the score network of ``latentdit bench dit`` with poly attention, forward and
  training step, 2 threads (skipped with ``--no-network``).

Repeats interleave the two settings (1, 16, 1, 16, ...) after one warm-up of each; the JSON has
every time, the medians and their ratio (aligned / unaligned) with the usual provenance.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from latentdit.attention import kernels
from latentdit.bench.attention_phases import _Case
from latentdit.hostmem import reuse_host_memory
from latentdit.io import atomic_write_json, check_output_file
from latentdit.provenance import provenance_end, provenance_start

SETTINGS = (1, 16)


def kernel_jobs(cs: _Case) -> dict:
    """The phase profiler's whole-kernel timings of one call (forward; forward + backward)."""
    return {"fwd": cs.forward, "fwdbwd": cs.fwdbwd}


def network_jobs(L: int) -> dict:
    from latentdit.bench.dit import FULL, build, make_ops
    ops = make_ops(build(FULL, L, "poly"), FULL, L)
    return {"fwd": ops["fwd"], "train": ops["train"]}


def measure(jobs: dict, threads: int, repeats: int) -> dict:
    torch.set_num_threads(threads)
    times = {op: {a: [] for a in SETTINGS} for op in jobs}
    for r in range(repeats + 1):
        for op, f in jobs.items():
            for a in SETTINGS:
                kernels.CHUNK_ALIGN = a
                t0 = time.perf_counter()
                f()
                if r:  # round 0 warms up both settings
                    times[op][a].append(time.perf_counter() - t0)
    kernels.CHUNK_ALIGN = SETTINGS[-1]
    out = {}
    for op, t in times.items():
        med = {str(a): statistics.median(t[a]) for a in SETTINGS}
        out[op] = {"median_s": med, "aligned_over_unaligned": med["16"] / med["1"],
                   "times_s": {str(a): t[a] for a in SETTINGS}}
        print(f"  {op}: unaligned {1e3 * med['1']:.1f} ms, aligned {1e3 * med['16']:.1f} ms "
              f"(x{med['16'] / med['1']:.3f})", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/bench/chunk_align.json"))
    ap.add_argument("--length", type=int, default=16384)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-network", action="store_true")
    args = ap.parse_args()
    if args.length < 64 or args.repeats < 1:
        raise SystemExit("error: need --length >= 64 and --repeats >= 1")
    check_output_file(args.out)
    reuse_host_memory(True)  # as every latentdit command
    prov = provenance_start(["python", *sys.argv])
    L, report = args.length, {}
    cases = {"dit_kernel": (lambda: _Case(L, 4, 0.0, 4, 1e-3, 0, sphere=True), 2),
             "head8_kernel": (lambda: _Case(L, 8, 1.5, 4, 1e-3, 0), 1)}
    for name, (make, threads) in cases.items():
        print(f"{name} (L = {L}, {threads} thread(s))", flush=True)
        report[name] = {"threads": threads, **measure(kernel_jobs(make()), threads, args.repeats)}
    if not args.no_network:
        print(f"network (L = {L}, 2 threads)", flush=True)
        report["network"] = {"threads": 2, **measure(network_jobs(L), 2, args.repeats)}
    prov["threads"] = 2
    atomic_write_json(args.out, {"L": L, "repeats": args.repeats, "settings": list(SETTINGS), **report,
                                 "provenance": provenance_end(prov)}, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
