"""Where the polynomial attention kernel spends its time, phase by phase, against each phase's floor.

``python -m latentdit.bench.attention_phases --lengths 4096 16384 --out phases.json`` (or
``latentdit bench attention --phases``) times, on the inputs of ``latentdit bench attention``
(:func:`latentdit.bench.attention_sweep.make_inputs`), interleaved and ``--repeats`` times:

- ``features``: building the feature maps of the keys and of the queries, chunk by chunk as the
  forward pass builds them (with the top degree peeled where the kernel peels it);
- ``key_product``: the key-side products (all of :func:`~latentdit.attention.products.key_products`
  less the key features);
- ``query_product``: the query-side products (:func:`~latentdit.attention.products.query_products`
  less the query features and the normalisation);
- ``normalisation``: the division by the denominator column and its copy, per chunk;
- ``forward`` and ``backward`` (forward + backward less forward).

Floors, measured in the same run: a FLOP floor for the products and the backward (their GEMM FLOPs,
:mod:`latentdit.attention.cost`, over the median rate of a square fp32 matmul, ``peak_gflops``,
and over the rate of the same batched GEMM shapes on resident data, ``shape_gflops``) and a memory
floor for the features and the normalisation (bytes written and read once over the bandwidth of a
64 MiB copy). ``fraction_of_matmul_probe`` = forward GEMM FLOPs / forward time / peak rate.
Both wall-clock and process CPU time are recorded (the CPU time is steadier on a shared machine).

``--dit`` profiles instead the call the DiT block of ``latentdit bench dit`` makes (batch 4 x 4 heads,
query/key size 4, value size 32, QK-norm rows of norm tau = 0.98 tau_max, |logit| <= tau^2): the
inputs lie on spheres, so every phase runs on the sphere's features (:mod:`latentdit.attention.sphere`).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from latentdit.attention.certificate import certify
from latentdit.attention.cost import backward_flops, forward_flops, product_flops
from latentdit.attention.features import FeatureBuilder, make_plan
from latentdit.attention.kernels import PolyAttentionFunction, _acc_dtype, _padded_T, chunk_length, poly_attention
from latentdit.attention.polynomials import choose_exp_poly
from latentdit.attention.products import ValueCols, key_products, peeled, query_products
from latentdit.attention.sphere import sphere_plan
from latentdit.bench.model import matmul_gflops
from latentdit.bench.attention_sweep import CONFIGS, HEADS, make_inputs
from latentdit.bench.dit import FULL, TAU_RAW
from latentdit.hostmem import reuse_host_memory
from latentdit.io import atomic_write_json
from latentdit.provenance import provenance_end, provenance_start

PHASES = ("features", "key_product", "query_product", "normalisation", "forward", "backward")


def _timed(jobs: dict[str, Callable[[], object]], repeats: int) -> dict[str, dict[str, float]]:
    """Median wall and process-CPU seconds of every job, interleaved, after one warm-up round."""
    wall: dict = {k: [] for k in jobs}
    cpu: dict = {k: [] for k in jobs}
    for rep in range(repeats + 1):
        for k, f in jobs.items():
            w0, c0 = time.perf_counter(), time.process_time()
            f()
            if rep:
                wall[k].append(time.perf_counter() - w0)
                cpu[k].append(time.process_time() - c0)
    return {k: {"wall_s": statistics.median(wall[k]), "cpu_s": statistics.median(cpu[k])} for k in jobs}


def copy_bandwidth(repeats: int = 5, mib: int = 64) -> float:
    """Bytes per second moved (read + write) by copying a ``mib`` MiB fp32 tensor into a resident one."""
    a = torch.randn(mib << 18)
    b = torch.empty_like(a)
    b.copy_(a)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        b.copy_(a)
        times.append(time.perf_counter() - t0)
    return 2 * a.numel() * 4 / statistics.median(times)


DIT = {"batch": FULL["batch"], "heads": FULL["heads"], "head_dim": FULL["qk_dim"],
       "value_dim": FULL["hidden"] // FULL["heads"], "tau": FULL["tau_max"] / (1.0 + math.exp(-TAU_RAW))}


def dit_inputs(L: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k (batch * heads, L, 4) with every row of norm tau, as the block's QK-norm leaves them, and v."""
    gen = torch.Generator().manual_seed(seed)
    n = DIT["batch"] * DIT["heads"]
    qk = torch.randn(2, n, L, DIT["head_dim"], generator=gen)
    qk = qk * (DIT["tau"] * (qk * qk).sum(-1, keepdim=True).rsqrt())
    return qk[0], qk[1], torch.randn(n, L, DIT["value_dim"], generator=gen)


class _Case:
    """The kernel's inputs and buffers for one (head size, bound, L), as the forward pass uses them;
    ``sphere``: the DiT block's call (:data:`DIT`, m and R ignored), on the sphere's features."""

    def __init__(self, L: int, m: int, R: float, heads: int, eps: float, seed: int, sphere: bool = False):
        if sphere:
            self.q, self.k, self.v = dit_inputs(L, seed)
            m, R = DIT["head_dim"], DIT["tau"] ** 2
            self.poly = choose_exp_poly(R, eps)
            self.run = lambda q, k, v: poly_attention(q, k, v, self.poly, scale=1.0, center=False, sphere=True)
            q3, v3 = self.q / DIT["tau"], self.v  # the kernel's inputs: |x| = 1
        else:
            self.q, self.k, self.v = make_inputs(L, m, R, heads=heads, seed=seed)
            scale = 1.0 / math.sqrt(m)
            cert = certify(self.q, self.k, scale, eps)
            self.poly = choose_exp_poly(cert.R_used, eps)
            self.run = lambda q, k, v: poly_attention(q, k, v, self.poly, scale=scale, norms=cert.norms,
                                                      split=("degree", 0))
            q3 = torch.nn.functional.normalize(self.q[0].float(), dim=-1)  # |<xq, xk>| <= 1 like the kernel's inputs
            v3 = self.v[0].float()
        self.n, self.L, self.m, self.mv, self.c = q3.shape[0], L, m, self.v.shape[-1], self.v.shape[-1] + 1
        self.R, self.sphere = R, sphere
        self.plan = make_plan(m, self.poly.degree)
        if sphere:
            sp = sphere_plan(m, self.poly.degree)
            self.peel, self.built, r_cols = (sp, sp.top), sp, sp.r_red
        else:
            self.peel = peeled(self.plan, self.c)
            self.built, r_cols = (self.plan if self.peel is None else self.peel[0]), self.plan.r1
        self.step = chunk_length(self.n, L, max(self.built.r1, self.c * (m + 1)), self.q.device)
        self.xT = _padded_T(q3, self.step)
        self.vc = ValueCols(v3, self.step)
        self.Ut = torch.randn(self.n, self.c, r_cols)
        self.dout = torch.randn_like(self.v)
        self.F = torch.randn(self.n, self.built.r1, self.step)

    def features(self) -> None:
        feats = FeatureBuilder.get(self.built, self.n, self.step, self.xT)
        for _ in range(2):  # keys and queries
            for a in range(0, self.xT.shape[-1], self.step):
                feats(self.xT[:, :, a:a + self.step])

    def key(self) -> None:
        feats = FeatureBuilder.get(self.built, self.n, self.step, self.xT)
        key_products(feats, self.xT, self.vc, self.step, self.c, _acc_dtype(self.xT.dtype), self.peel)

    def query(self) -> None:
        feats = FeatureBuilder.get(self.built, self.n, self.step, self.xT)
        query_products(feats, self.xT, self.Ut, self.step, self.c, self.L, self.peel)

    def normalisation(self) -> None:
        Y = torch.randn(self.n, self.c, self.step)
        out, den = Y.new_empty(self.n, self.L, self.mv), Y.new_empty(self.n, self.L)
        for a in range(0, self.L, self.step):
            b = min(self.L, a + self.step) - a
            torch.div(Y[:, :-1, :b], Y[:, -1:, :b], out=out[:, a:a + b].transpose(1, 2))
            den[:, a:a + b] = Y[:, -1, :b]

    def forward(self) -> None:
        with torch.no_grad():
            self.run(self.q, self.k, self.v)

    def fwdbwd(self) -> None:
        q, k, v = (x.detach().requires_grad_() for x in (self.q, self.k, self.v))
        self.run(q, k, v).backward(self.dout)

    def gemm_probe(self) -> None:
        """The key- and query-side GEMM shapes of one chunk, on resident data, as many times as chunks."""
        for _ in range(self.xT.shape[-1] // self.step):
            torch.bmm(self.vc.buf, self.F.transpose(1, 2))
            torch.bmm(self.Ut[:, :, :self.F.shape[1]], self.F)


def phase_profile(L: int, m: int, R: float, *, heads: int = 4, eps: float = 1e-3, repeats: int = 5,
                  seed: int = 0, sphere: bool = False) -> dict:
    """One profile (see the module doc) for head size m with |logit| <= R at L tokens (``sphere``:
    the DiT block's call instead)."""
    cs = _Case(L, m, R, heads, eps, seed, sphere)
    m, R, split = cs.m, cs.R, ("sphere", 0) if sphere else ("degree", 0)
    t = _timed({"features": cs.features, "key": cs.key, "query": cs.query, "normalisation": cs.normalisation,
                "forward": cs.forward, "fwdbwd": cs.fwdbwd, "gemm_probe": cs.gemm_probe}, repeats)
    peak = matmul_gflops(1024, repeats) * 1e9
    bandwidth = copy_bandwidth(repeats)
    n, mv, g = cs.n, cs.mv, cs.poly.degree
    fwd_flops = forward_flops(n, L, L, m, mv, g, split)
    shape_rate = forward_flops(n, cs.xT.shape[-1], cs.xT.shape[-1], m, mv, g, split) / t["gemm_probe"]["wall_s"]
    feat_bytes = 2 * 2 * n * L * cs.built.r1 * 4  # both sides, written once and read once
    half = {k: {u: v / 2 for u, v in t["features"].items()} for k in ("key", "query")}  # one side's features

    def less(a: dict, *b: dict) -> dict:
        return {u: max(0.0, a[u] - sum(x[u] for x in b)) for u in a}

    phases = {"features": (t["features"], feat_bytes / bandwidth, "memory"),
              "key_product": (less(t["key"], half["key"]), product_flops(n, L, m, mv, g, split) / peak, "flop"),
              "query_product": (less(t["query"], half["query"], t["normalisation"]),
                                product_flops(n, L, m, mv, g, split) / peak, "flop"),
              "normalisation": (t["normalisation"], n * L * (2 * mv + 2) * 4 / bandwidth, "memory"),
              "forward": (t["forward"], fwd_flops / peak, "flop"),
              "backward": (less(t["fwdbwd"], t["forward"]), backward_flops(n, L, L, m, mv, g, split) / peak, "flop")}
    rows = [{"phase": k, **tm, "floor_s": fl, "floor": kind, "wall_over_floor": tm["wall_s"] / fl if fl else None}
            for k, (tm, fl, kind) in phases.items()]
    return {"L": L, "head_dim": m, "logit_bound": R, "heads": n, "value_dim": mv, "degree": g, "sphere": sphere,
            "rank": cs.plan.r1, "features_built": cs.built.r1, "peeled": cs.peel is not None, "chunk": cs.step,
            "forward_gflop": fwd_flops / 1e9, "backward_gflop": backward_flops(n, L, L, m, mv, g, split) / 1e9,
            "peak_gflops": peak / 1e9, "shape_gflops": shape_rate / 1e9, "copy_gbytes_per_s": bandwidth / 1e9,
            "fraction_of_matmul_probe": fwd_flops / t["forward"]["wall_s"] / peak, "phases": rows}


def format_profile(p: dict) -> str:
    lines = [f"head size {p['head_dim']}, |logit| <= {p['logit_bound']:g}, L = {p['L']}: degree {p['degree']}, "
             f"rank {p['rank']} ({p['features_built']} built), matmul {p['peak_gflops']:.0f} GFLOP/s "
             f"(same shapes {p['shape_gflops']:.0f}), copy {p['copy_gbytes_per_s']:.1f} GB/s; forward reaches "
             f"{100 * p['fraction_of_matmul_probe']:.0f}% of the matmul probe"]
    for r in p["phases"]:
        ratio = "-" if r["wall_over_floor"] is None else f"{r['wall_over_floor']:.1f}x"
        lines.append(f"  {r['phase']:<14} {1e3 * r['wall_s']:9.2f} ms wall {1e3 * r['cpu_s']:9.2f} ms cpu   "
                     f"{r['floor']} floor {1e3 * r['floor_s']:8.2f} ms  ({ratio})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m latentdit.bench.attention_phases", description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="JSON file (default: print only)")
    ap.add_argument("--dit", action="store_true", help="profile the DiT block's call (QK-norm inputs on spheres)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    reuse_host_memory()  # the allocator of every `latentdit` command, `bench dit` included (latentdit.hostmem)
    prov = provenance_start(["python", "-m", "latentdit.bench.attention_phases", *(sys.argv[1:] if argv is None else argv)])
    cases = [(DIT["head_dim"], DIT["tau"] ** 2)] if args.dit else CONFIGS
    profiles = [phase_profile(L, m, R, heads=HEADS, repeats=args.repeats, sphere=args.dit)
                for m, R in cases for L in args.lengths]
    for p in profiles:
        print(format_profile(p), flush=True)
    if args.out is not None:
        atomic_write_json(args.out, {"profiles": profiles, "provenance": provenance_end(prov)}, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
