"""Before/after timing of the overhead removals, interleaved in one process.

    python docs/bench/before_after.py --base 465c42e --out docs/bench/before_after.json [--threads 1]

"before" is the DiT block forward and the samplers as of commit ``--base`` (loaded from git), "after"
the working tree. The same model weights and inputs are used for both; every repeat runs before and
after back to back, and medians are reported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import subprocess
import time
import types
from pathlib import Path

import torch


def load_module(commit: str, path: str, name: str) -> types.ModuleType:
    src = subprocess.run(["git", "show", f"{commit}:{path}"], capture_output=True, text=True, check=True).stdout
    mod = types.ModuleType(name)
    exec(compile(src, f"{commit}:{path}", "exec"), mod.__dict__)
    return mod


def interleave(fns: dict, repeats: int) -> dict:
    for f in fns.values():
        f()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()} | {"all": times}


def main() -> None:
    from latentdit.io import atomic_write_json, check_output_file
    from latentdit.provenance import provenance_end, provenance_start
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="465c42e")
    ap.add_argument("--out", type=Path, default=Path("docs/bench/before_after.json"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    check_output_file(args.out)
    prov = provenance_start(["python", *sys.argv])
    from latentdit import sampling as new_sampling
    from latentdit.bench.model import CONFIGS, _inputs, build_ours
    from latentdit.data.gmm import SubspaceGMM

    old_blocks = load_module(args.base, "latentdit/models/blocks.py", "old_blocks")
    old_sampling = load_module(args.base, "latentdit/sampling.py", "old_sampling")
    out: dict = {"base": args.base, "threads": torch.get_num_threads(), "loadavg_before": os.getloadavg()}

    # model: the same network with the old (unfused) and the new block/backbone forward
    c = CONFIGS["mid"]
    m = build_ours(c)
    v = _inputs(c)
    new_fwd = {blk: blk.forward for blk in m.backbone.blocks} | {m.backbone: m.backbone.forward}

    def use(old: bool) -> None:
        for mod, f in new_fwd.items():
            cls = old_blocks.DiTBackbone if mod is m.backbone else old_blocks.DiTBlock
            mod.forward = types.MethodType(cls.forward, mod) if old else f

    def step(old: bool):
        def run():
            use(old)
            m.zero_grad(set_to_none=True)
            m.loss(v["x"], v["t"], v["noise"], v["y"]).backward()
        return run

    def fwd(old: bool):
        def run():
            use(old)
            with torch.no_grad():
                m(v["x"], v["t"], v["y"])
        return run

    use(True)
    with torch.no_grad():
        a = m(v["x"], v["t"], v["y"])
    use(False)
    with torch.no_grad():
        b = m(v["x"], v["t"], v["y"])
    out["model_max_abs_diff"] = float((a - b).abs().max())
    r = interleave({"fwd_before": fwd(True), "fwd_after": fwd(False), "fwd_bwd_before": step(True),
                    "fwd_bwd_after": step(False)}, args.repeats)
    out["model_mid"] = r
    print({k: round(x, 4) for k, x in r.items() if k != "all"}, flush=True)

    # samplers: per-step loop overhead with a trivial score, and wall time with the exact score
    x0 = torch.randn(4000, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    g = SubspaceGMM.random(64, 4, 4, seed=0)
    jobs = {}
    for name in ("em", "dpm2m", "heun"):
        for tag, mod in (("before", old_sampling), ("after", new_sampling)):
            ts = new_sampling.time_grid(1e-3, 10.0, 200, new_sampling.DEFAULT_GRID[name])
            ts20 = new_sampling.time_grid(1e-3, 10.0, 20, new_sampling.DEFAULT_GRID[name])
            fn = mod.SAMPLERS[name]
            jobs[f"{name}_trivial200_{tag}"] = (lambda fn=fn, ts=ts: fn(lambda x, t: -x, x0[:64], ts,
                                                generator=torch.Generator().manual_seed(1)))
            jobs[f"{name}_exact20_{tag}"] = (lambda fn=fn, ts=ts20: fn(g.score_fn(), x0, ts,
                                             generator=torch.Generator().manual_seed(1)))
    r = interleave(jobs, args.repeats)
    out["samplers"] = r
    print({k: round(x, 5) for k, x in r.items() if k != "all"}, flush=True)
    same = {}
    for name in ("em", "dpm2m", "heun"):
        ts = new_sampling.time_grid(1e-3, 10.0, 20, new_sampling.DEFAULT_GRID[name])
        a = old_sampling.SAMPLERS[name](g.score_fn(), x0, ts, generator=torch.Generator().manual_seed(1))
        b = new_sampling.SAMPLERS[name](g.score_fn(), x0, ts, generator=torch.Generator().manual_seed(1))
        same[name] = float((a - b).abs().max())
    out["sampler_max_abs_diff"] = same
    out["loadavg_after"] = os.getloadavg()
    out["provenance"] = provenance_end(prov)
    atomic_write_json(args.out, out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
