"""What host-memory reuse (latentdit/hostmem.py) buys the whole DiT at long sequence lengths.

    python docs/bench/hostmem.py --out docs/bench/hostmem.json [--lengths 4096,16384] [--repeats 3]

The network of ``latentdit bench dit`` (hidden 128, depth 4, batch 4, query/key size 4, QK-norm,
poly and ReLU linear attention) runs one operation (a forward pass, one NFE, or a training step)
in a fresh process per measurement, with the C library's allocator (``system``) or with reuse
(``reuse``). Each process builds the network, runs the operation twice to warm up, then times it
once; the processes alternate system, reuse, system, ... per (length, attention, operation), and
the medians over ``--repeats`` rounds are reported with their ratio and the minor page faults of
the timed operation.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys, time, torch
from latentdit.hostmem import reuse_host_memory
from latentdit.bench.dit import FULL, build, make_ops
L, mode, op, malloc, threads = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
torch.set_num_threads(threads)
got = reuse_host_memory(malloc == "reuse")
ops = make_ops(build(FULL, L, mode), FULL, L)
ops[op](); ops[op]()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
t0 = time.perf_counter(); ops[op](); dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0, "malloc": got}))
"""


def _once(L: int, mode: str, op: str, malloc: str, threads: int) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, str(L), mode, op, malloc, str(threads)], capture_output=True,
                       text=True, timeout=3600)
    if r.returncode != 0:
        raise SystemExit(f"child {L} {mode} {op} {malloc} failed: {r.stderr.strip()[-2000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    if out["malloc"] != malloc:
        raise SystemExit(f"asked for {malloc!r}, the child runs {out['malloc']!r} (not glibc?)")
    return out


def main() -> None:
    from latentdit.io import atomic_write_json, check_output_file
    from latentdit.provenance import provenance_end, provenance_start

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/bench/hostmem.json"))
    ap.add_argument("--lengths", default="4096,16384")
    ap.add_argument("--modes", default="poly,relu_linear")
    ap.add_argument("--ops", default="fwd,train")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    check_output_file(args.out)
    prov = provenance_start(["python", *sys.argv])
    prov["threads"] = args.threads  # the children's: this driver never imports torch
    rows = []
    for L in (int(x) for x in args.lengths.split(",")):
        for mode in args.modes.split(","):
            for op in args.ops.split(","):
                runs: dict[str, list[dict]] = {"system": [], "reuse": []}
                for _ in range(args.repeats):
                    for malloc in ("system", "reuse"):
                        runs[malloc].append(_once(L, mode, op, malloc, args.threads))
                med = {m: statistics.median(r["seconds"] for r in v) for m, v in runs.items()}
                row = {"L": L, "attention": mode, "op": op, "median_s": med,
                       "speedup": med["system"] / med["reuse"],
                       "faults_median": {m: statistics.median(r["faults"] for r in v) for m, v in runs.items()},
                       "times_s": {m: [r["seconds"] for r in v] for m, v in runs.items()}}
                rows.append(row)
                print(f"L={L} {mode} {op}: system {med['system']:.3f} s, reuse {med['reuse']:.3f} s "
                      f"(x{row['speedup']:.2f}); faults {row['faults_median']}", flush=True)
    atomic_write_json(args.out, {"rows": rows, "repeats": args.repeats, "threads": args.threads,
                                 "provenance": provenance_end(prov)}, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
