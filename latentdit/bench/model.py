"""Model throughput: our latent DiT score network vs diffusers' ``DiTTransformer2DModel``.

``latentdit bench model --out FILE.json [--quick] [--repeats N]``

Both networks are built at a matched configuration (same width, depth, heads, token count, token
size, batch, class conditioning) and timed on the CPU in fp32, interleaved in one process
(ours-forward, diffusers-forward, ours-train, diffusers-train, repeated), reporting medians.

- forward: one no-grad evaluation in eval mode.
- training step: zero_grad, forward, loss, backward, AdamW step (the same optimiser settings for
  both; no clipping or EMA). Ours uses :meth:`LatentScoreNet.loss` (eq. 2.3 in latent form, EDM
  weighting), diffusers an epsilon-prediction MSE on the noised image. ``--compile`` adds both
  training steps under ``torch.compile``.
- matmul probe: median GFLOP/s of a square fp32 ``torch.mm`` in the same run; the forward FLOPs
  utilisation is (analytic forward FLOPs / forward time) / that rate.
- FLOPs: :func:`forward_flops` counts every matrix product of our forward analytically (linear
  layers, encoder/decoder, q k^T and attention-times-values); ``tests/test_bench.py`` checks it
  against ``torch.utils.flop_counter``. Diffusers' forward FLOPs are counted with the flop counter.
- peak memory: each (network, operation) runs in a fresh subprocess that builds the network and
  its inputs, returns freed heap (malloc_trim), reads VmRSS, resets the kernel's peak-RSS mark
  (/proc/self/clear_refs), runs the operation twice and reads VmHWM; the difference is the extra
  resident memory the operation needed on top of the network (for a training step: activations,
  gradients and optimiser state). ``tracemalloc`` does not see torch's allocations.

diffusers is the optional ``bench`` extra (``pip install diffusers``); it is imported only here.
"""

from __future__ import annotations


import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from latentdit.bench import bench_parser, interleaved_times, medians, parse_bench_args
from latentdit.diffusion import DSMLoss
from latentdit.io import atomic_write_json
from latentdit.provenance import provenance_end, provenance_start

# name -> matched configuration; tokens = (side / patch)^2 of size patch^2, latent d0 = side^2
CONFIGS: dict[str, dict] = {
    # mid-size: hidden 256, depth 4, 16 tokens, batch 256 (the FLOPs-utilisation configuration)
    "mid": dict(hidden=256, depth=4, heads=4, side=8, patch=2, batch=256, classes=10),
    # the size of configs/gmm.toml (hidden 64, depth 4, 4 tokens), batch 256
    "small": dict(hidden=64, depth=4, heads=4, side=4, patch=2, batch=256, classes=10),
}
QUICK = {"quick": dict(hidden=32, depth=1, heads=2, side=4, patch=2, batch=8, classes=10)}
HEADLINE = "mid"


def _require_diffusers():
    try:
        from diffusers import DiTTransformer2DModel
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise SystemExit("latentdit bench model needs diffusers (the optional 'bench' extra): "
                         "pip install diffusers") from e
    return DiTTransformer2DModel


def build_ours(c: dict, seed: int = 0):
    """Our LatentScoreNet (DiT block, class-conditional) on a d0 = side^2 latent, D = d0."""
    from latentdit.config import ModelConfig
    from latentdit.models.score import LatentScoreNet

    torch.manual_seed(seed)
    d0 = c["side"] ** 2
    cfg = ModelConfig(block="dit", hidden=c["hidden"], depth=c["depth"], heads=c["heads"], patch=c["patch"],
                      patching="2d", num_classes=c["classes"])
    return LatentScoreNet(d0, d0, **asdict(cfg), generator=torch.Generator().manual_seed(seed))


def build_diffusers(c: dict, seed: int = 0):
    """diffusers' DiT on a 1-channel side x side image with the same patching and widths."""
    DiT = _require_diffusers()
    torch.manual_seed(seed)
    return DiT(num_attention_heads=c["heads"], attention_head_dim=c["hidden"] // c["heads"], in_channels=1,
               num_layers=c["depth"], sample_size=c["side"], patch_size=c["patch"],
               num_embeds_ada_norm=c["classes"], norm_eps=1e-6)


def num_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def forward_flops(c: dict, batch: int | None = None) -> dict:
    """Analytic FLOPs (2 per multiply-add) of one forward of :func:`build_ours`, by part."""
    n = c["batch"] if batch is None else batch
    h, depth, p = c["hidden"], c["depth"], c["patch"]
    d0 = D = c["side"] ** 2
    L, d = (c["side"] // p) ** 2, p * p
    w = int(h * 4.0)
    freq = 128
    parts = {
        "encoder_decoder": 2 * (2 * D * d0),
        "token_embed": 2 * L * d * h,
        "time_mlp": 2 * freq * h + 2 * h * h,
        "adaLN": depth * 2 * h * 6 * h + 2 * h * 2 * h,
        "qkv_proj": depth * (2 * L * h * 3 * h + 2 * L * h * h),
        "attention": depth * 2 * (2 * L * L * h),
        "mlp": depth * 2 * (2 * L * h * w),
        "out": 2 * L * h * d,
    }
    parts = {k: v * n for k, v in parts.items()}
    parts["total"] = sum(parts.values())
    return parts


def counted_flops(model: torch.nn.Module, args: tuple) -> int:
    """FLOPs of model(*args) by torch.utils.flop_counter, with SDPA on its math path so it is counted."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        model(*args)
    return int(fc.get_total_flops())


def _inputs(c: dict, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    n, d0 = c["batch"], c["side"] ** 2
    x = torch.randn(n, d0, generator=g)
    return dict(x=x, noise=torch.randn(n, d0, generator=g), t=1e-3 + 10.0 * torch.rand(n, generator=g),
                y=torch.randint(0, c["classes"], (n,), generator=g),
                steps=torch.randint(0, 1000, (n,), generator=g), img=x.reshape(n, 1, c["side"], c["side"]))


def _optimizer(m: torch.nn.Module) -> torch.optim.Optimizer:
    try:
        return torch.optim.AdamW(m.parameters(), lr=1e-4, fused=True)
    except (RuntimeError, TypeError):  # pragma: no cover - older torch without fused CPU AdamW
        return torch.optim.AdamW(m.parameters(), lr=1e-4)


def make_ops(which: str, c: dict) -> dict[str, Callable[[], None]]:
    """{'fwd': ..., 'train': ...} closures for 'ours' or 'diffusers' at configuration c."""
    v = _inputs(c)
    if which == "ours":
        m = build_ours(c)

        def forward():
            return m(v["x"], v["t"], v["y"])

        def loss():
            return DSMLoss("edm")(m, v["x"], v["t"], v["noise"], v["y"])
    else:
        m = build_diffusers(c)
        noise = v["noise"].reshape_as(v["img"])
        a = torch.rand(c["batch"], 1, 1, 1, generator=torch.Generator().manual_seed(2))

        def forward():
            return m(v["img"], v["steps"], v["y"])

        def loss():
            xt = a.sqrt() * v["img"] + (1 - a).sqrt() * noise
            return torch.nn.functional.mse_loss(m(xt, v["steps"], v["y"]).sample, noise)
    opt = _optimizer(m)

    def fwd():
        m.eval()
        with torch.no_grad():
            forward()

    def train():
        m.train()
        opt.zero_grad(set_to_none=True)
        loss().backward()
        opt.step()
    return {"fwd": fwd, "train": train, "model": m}


def matmul_gflops(n: int, repeats: int) -> float:
    """Median fp32 torch.mm rate (GFLOP/s) for n x n matrices."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:  # pragma: no cover - not Linux
        pass
    return None


def _peak_memory_child(which: str, op: str, c: dict, threads: int) -> int:
    """In this (fresh) process: extra peak RSS (bytes) of running op twice on top of the built network.

    Freed heap is returned first (malloc_trim), the kernel's peak-RSS mark is reset
    (/proc/self/clear_refs, "5"), and the result is VmHWM after the op minus VmRSS before it. Where
    that is not available it falls back to the ru_maxrss difference (a lower bound).
    """
    import ctypes

    torch.set_num_threads(threads)
    ops = make_ops(which, c)
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # pragma: no cover - not glibc
        pass
    before_rss = _status_kib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:  # pragma: no cover
        reset = False
    before_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ops[op]()
    ops[op]()
    if reset and before_rss is not None:
        return max(0, _status_kib("VmHWM") - before_rss) * 1024
    return max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_max) * 1024  # KiB on Linux


def peak_memory(which: str, op: str, c: dict) -> int | None:
    code = ("import json,sys; from latentdit.bench.model import _peak_memory_child as f; "
            "print(f(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])))")
    r = subprocess.run([sys.executable, "-c", code, which, op, json.dumps(c), str(torch.get_num_threads())], capture_output=True, text=True,
                       timeout=1800)
    if r.returncode != 0:
        print(f"peak memory of {which}/{op} failed: {r.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return int(r.stdout.strip().splitlines()[-1])


def _compiled_jobs(name: str, c: dict) -> tuple[dict, dict]:
    """Both networks built again and wrapped by ``torch.compile``: (their training steps, compile seconds)."""
    jobs, compile_s = {}, {}
    for which in ("ours", "diffusers"):
        ops = make_ops(which, c)
        # ours as train.compile does it (the transformer only; the loss calls the network around it)
        (ops["model"].backbone if which == "ours" else ops["model"]).compile()
        t0 = time.perf_counter()
        ops["train"]()  # traces and compiles forward and backward
        compile_s[which] = time.perf_counter() - t0
        print(f"[{name}] compiled {which} in {compile_s[which]:.1f} s", flush=True)
        jobs[f"{which}_compiled_train"] = ops["train"]
    return jobs, compile_s


def _flop_record(c: dict, med: dict, gflops: float) -> dict:
    """Analytic and counted forward FLOPs, the achieved GFLOP/s and their fraction of the matmul peak."""
    n, flops, small = c["batch"], forward_flops(c), dict(c, batch=2)
    v = _inputs(small)
    ours_counted = counted_flops(build_ours(small).eval(), (v["x"], v["t"], v["y"])) * n // 2
    theirs_counted = counted_flops(build_diffusers(small).eval(), (v["img"], v["steps"], v["y"])) * n // 2
    out = {"ours_fwd_flops": flops["total"], "ours_fwd_flops_parts": flops,
           "ours_fwd_flops_counted": ours_counted, "diffusers_fwd_flops_counted": theirs_counted,
           "ours_fwd_gflops": flops["total"] / med["ours_fwd"] / 1e9,
           "diffusers_fwd_gflops": theirs_counted / med["diffusers_fwd"] / 1e9}
    out.update(ours_fwd_mfu=out["ours_fwd_gflops"] / gflops, diffusers_fwd_mfu=out["diffusers_fwd_gflops"] / gflops)
    return out


def _compiled_record(med: dict, n: int, compile_s: dict) -> dict:
    return {"compile_seconds": compile_s,
            "ours_compiled_train_samples_per_s": n / med["ours_compiled_train"],
            "diffusers_compiled_train_samples_per_s": n / med["diffusers_compiled_train"],
            "train_speedup_compiled": med["diffusers_compiled_train"] / med["ours_compiled_train"],
            "compile_gain_ours": med["ours_train"] / med["ours_compiled_train"],
            "compile_gain_diffusers": med["diffusers_train"] / med["diffusers_compiled_train"]}


def _print_summary(name: str, out: dict) -> None:
    print(f"[{name}] samples/s  fwd ours {out['ours_fwd_samples_per_s']:.1f} diffusers "
          f"{out['diffusers_fwd_samples_per_s']:.1f} (x{out['fwd_speedup']:.2f});  train ours "
          f"{out['ours_train_samples_per_s']:.1f} diffusers {out['diffusers_train_samples_per_s']:.1f} "
          f"(x{out['train_speedup']:.2f});  matmul {out['matmul_gflops']:.1f} GFLOP/s, ours fwd "
          f"{out['ours_fwd_gflops']:.1f} GFLOP/s = {100 * out['ours_fwd_mfu']:.0f}%", flush=True)
    if "compile_seconds" in out:
        print(f"[{name}] compiled train samples/s ours {out['ours_compiled_train_samples_per_s']:.1f} diffusers "
              f"{out['diffusers_compiled_train_samples_per_s']:.1f} (x{out['train_speedup_compiled']:.2f}); "
              f"compile gain ours x{out['compile_gain_ours']:.2f} diffusers x{out['compile_gain_diffusers']:.2f}",
              flush=True)


def bench_config(name: str, c: dict, repeats: int, mm_n: int, memory: bool, compile: bool = False) -> dict:
    """Interleaved medians for one matched configuration (plus the matmul probe in the same loop).

    With ``compile`` both networks are also built a second time, wrapped by ``torch.compile``
    (default inductor mode), and their training steps join the interleaved loop.
    """
    ours, theirs = make_ops("ours", c), make_ops("diffusers", c)
    p_ours, p_theirs = num_params(ours["model"]), num_params(theirs["model"])
    print(f"[{name}] {c}: parameters ours {p_ours:,}  diffusers {p_theirs:,}", flush=True)
    jobs = {"ours_fwd": ours["fwd"], "diffusers_fwd": theirs["fwd"],
            "ours_train": ours["train"], "diffusers_train": theirs["train"]}
    compile_s = {}
    if compile:
        more, compile_s = _compiled_jobs(name, c)
        jobs.update(more)
    for f in jobs.values():  # warm-up (allocations, optimiser state, kernel selection)
        f()
    mm: list[float] = []
    times = interleaved_times(jobs, repeats, name, before_repeat=lambda: mm.append(matmul_gflops(mm_n, 3)))
    med, n, gflops = medians(times), c["batch"], statistics.median(mm)
    out = {
        "config": c, "tokens": (c["side"] // c["patch"]) ** 2, "token_dim": c["patch"] ** 2,
        "params_ours": p_ours, "params_diffusers": p_theirs,
        "median_s": med, "times_s": times,
        "ours_fwd_samples_per_s": n / med["ours_fwd"], "diffusers_fwd_samples_per_s": n / med["diffusers_fwd"],
        "ours_train_samples_per_s": n / med["ours_train"],
        "diffusers_train_samples_per_s": n / med["diffusers_train"],
        "fwd_speedup": med["diffusers_fwd"] / med["ours_fwd"],
        "train_speedup": med["diffusers_train"] / med["ours_train"],
        "matmul_gflops": gflops, "matmul_gflops_all": mm, **_flop_record(c, med, gflops),
    }
    if compile:
        out.update(_compiled_record(med, n, compile_s))
    if memory:
        out["peak_memory_bytes"] = {f"{w}_{op}": peak_memory(w, op, c)
                                    for w in ("ours", "diffusers") for op in ("fwd", "train")}
    _print_summary(name, out)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = bench_parser("model", __doc__, quick_help="tiny configuration, 2 repeats, no memory subprocesses (a smoke test)",
                      out_help="JSON file to write")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (default 5)")
    ap.add_argument("--configs", default=None, help=f"comma-separated subset of {sorted(CONFIGS)}")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--compile", action="store_true",
                    help="also time both training steps under torch.compile (needs a C++ compiler)")
    args, argv = parse_bench_args(ap, argv)
    _require_diffusers()
    if args.quick:
        configs, repeats, mm_n = QUICK, args.repeats or 2, 256
    else:
        names = args.configs.split(",") if args.configs else list(CONFIGS)
        unknown = [k for k in names if k not in CONFIGS]
        if unknown:
            print(f"error: unknown configuration(s) {unknown}; choose from {sorted(CONFIGS)}", file=sys.stderr)
            return 2
        configs, repeats, mm_n = {k: CONFIGS[k] for k in names}, args.repeats or 5, 1024
    if repeats < 1:
        print("error: --repeats must be >= 1", file=sys.stderr)
        return 2
    prov = provenance_start(["latentdit", "bench", "model", *argv])
    memory = not (args.no_memory or args.quick)
    results = {name: bench_config(name, c, repeats, mm_n, memory, args.compile) for name, c in configs.items()}
    head = results[HEADLINE] if HEADLINE in results else next(iter(results.values()))
    import diffusers

    report = {
        "ours_train_samples_per_s": head["ours_train_samples_per_s"],
        "diffusers_train_samples_per_s": head["diffusers_train_samples_per_s"],
        "train_speedup": head["train_speedup"],
        **({"train_speedup_compiled": head["train_speedup_compiled"]} if args.compile else {}),
        "ours_fwd_mfu": head["ours_fwd_mfu"],
        "matmul_gflops": head["matmul_gflops"],
        "headline_config": HEADLINE if HEADLINE in results else next(iter(results)),
        "configs": results,
        "repeats": repeats, "matmul_n": mm_n,
        "environment": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                        "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                        "machine": platform.machine(), "python": platform.python_version(),
                        "optimizer": "AdamW(lr=1e-4, fused=True) for both", "dtype": "float32"},
        "provenance": provenance_end(prov),
    }
    atomic_write_json(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
