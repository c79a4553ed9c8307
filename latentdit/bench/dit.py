"""The whole latent DiT score network at long sequence lengths: exact vs poly vs ReLU linear attention.

``latentdit bench dit --out FILE.json [--quick] [--repeats N] [--lengths ...]``

One network (the DiT block in the paper's regime: hidden 128, depth 4, 4 heads with query/key
size 4 and value size 32, QK-norm with tau_max = 1.7, so |logit| <= 2.89 by construction; 1-D
tokens of size 4, D = d0 = 4 L with the identity encoder, batch 4) is built once per length and
copied four times with identical weights; the copies differ only in ``model.attention``:

- ``exact``: torch SDPA;
- ``poly``: the polynomial method with the degree certified for eps = 1e-3 from the QK-norm bound;
- ``relu_linear``: ReLU linear attention, the efficient-DiT baseline (a different operator);
- ``none``: no attention (every token on its own): the rest of the network, which every attention
  shares, so ``speedup_*_no_attention`` (exact over none) bounds any attention's speed-up.

The zero-initialised layers of DiT (adaLN, output) are given small random weights and every
temperature is set near tau_max, so that attention shapes the output as in a trained network and
the bound is the worst case. Measured per length, interleaved (fwd exact, fwd poly, fwd relu,
train exact, ...), ``--repeats`` times after one warm-up, medians reported:

- forward: one no-grad score evaluation (one NFE) in eval mode;
- train: zero_grad, the DSM loss of eq. (2.3) (EDM weighting), backward, AdamW step;
- rel_error_forward: ||f_T poly - f_T exact|| / ||f_T exact|| of the backbone outputs with
  identical weights (before any training step); ``attention_share`` = ||f_T exact - f_T none|| /
  ||f_T exact|| says how much of that output the attention carries;
- peak memory (unless ``--no-memory``): extra peak RSS of one operation in a fresh subprocess
  (see :mod:`latentdit.bench.model`).

Lengths: {1024, 4096, 16384} by default; ``--long`` adds L = 65536 (poly and ReLU linear only,
about 40 s per poly training step on 2 cores). Exact attention is measured up to
``--exact-max-len`` (default 16384; one exact training step at 65536 would take about 20 minutes);
above it the exact times are extrapolated with the power law fitted to the measured exact times,
t(L) = t(L_max) (L / L_max)^p with p the least-squares exponent over the measured lengths (below
the asymptotic 2, so the extrapolated speed-up is conservative), recorded per row as
``"extrapolated": true`` with ``exact_extrapolation`` (method, exponents, lengths used);
``--exact-once`` times exact there once per operation instead (``"exact_measured_once": true``).
``exponent_poly_train`` is the least-squares slope of log(poly training step time) against log L
over all lengths.

Per length, a square fp32 matmul probe right after the timed repeats gives
``fraction_of_matmul_probe_{fwd,train}``: the poly attention GEMM FLOPs over the poly time less the
ReLU linear time, and ``speedup_*_bound_at_probe``: exact over (none + those FLOPs at the probe's
rate), the most poly attention could give on this machine with its GEMMs at the probe's rate and
everything else free (:func:`probe_fraction`). One full sampling run (dpm2m, ``--sampling-nfe`` = 20
network evaluations, batch 4) at ``--sampling-length`` (default 16384) with exact and with poly
attention from the same noise records the wall time of each and the samples' relative difference
(``sampling``; ``--no-sampling`` skips it).
"""

from __future__ import annotations

import copy
import gc
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from latentdit.bench import bench_parser, interleaved_times, medians, parse_bench_args
from latentdit.attention.cost import backward_flops, forward_flops
from latentdit.attention.kernels import executed_split
from latentdit.bench.model import _status_kib, matmul_gflops
from latentdit.hostmem import host_malloc_mode, release_host_memory, reuse_host_memory
from latentdit.config import ModelConfig
from latentdit.fits import loglog_slope
from latentdit.models.blocks import attention_summary
from latentdit.models.score import LatentScoreNet
from latentdit.provenance import provenance_end, provenance_start
from latentdit.diffusion import DSMLoss
from latentdit.sampling import CountingCalls, sample
from latentdit.io import atomic_write_json, save_figure

MODES = ("exact", "poly", "relu_linear", "none")
FULL = dict(hidden=128, depth=4, heads=4, qk_dim=4, tau_max=1.7, token=4, batch=4, eps=1e-3,
            lengths=[1024, 4096, 16384])
LONG_LENGTH = 65536  # added by --long (exact extrapolated unless --exact-max-len covers it)
TAU_RAW = 4.0  # every temperature near its cap: tau = tau_max * sigmoid(4) = 0.98 tau_max
QUICK = dict(hidden=32, depth=1, heads=2, qk_dim=2, tau_max=1.7, token=4, batch=2, eps=1e-3,
             lengths=[64, 256, 1024])


def build(c: dict, L: int, mode: str, seed: int = 0):
    """The score network of the module docstring at length L with attention ``mode``."""

    cfg = ModelConfig(block="dit", hidden=c["hidden"], depth=c["depth"], heads=c["heads"], qk_dim=c["qk_dim"],
                      patch=c["token"], patching="1d", qk_norm=True, tau_max=c["tau_max"], attention=mode,
                      attention_eps=c["eps"])
    d0 = c["token"] * L
    torch.manual_seed(seed)
    model = LatentScoreNet(d0, d0, **asdict(cfg), identity_encoder=True)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.backbone.named_parameters():
            if name.endswith("tau_raw"):
                p.fill_(TAU_RAW)
            elif "adaLN" in name or name.startswith("out."):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


def set_mode(model, mode: str) -> None:
    model.cfg.attention = mode
    for blk in model.backbone.blocks:
        blk.attention_mode = mode


def make_ops(model, c: dict, L: int, seed: int = 1) -> dict:
    """{'fwd', 'train', 'backbone'} closures on fixed inputs for one model copy."""
    g = torch.Generator().manual_seed(seed)
    n, d0 = c["batch"], c["token"] * L
    x, noise = torch.randn(n, d0, generator=g), torch.randn(n, d0, generator=g)
    t = 1e-3 + 5.0 * torch.rand(n, generator=g)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def fwd():
        model.eval()
        with torch.no_grad():
            model(x, t)

    def train():
        model.train()
        opt.zero_grad(set_to_none=True)
        DSMLoss("edm")(model, x, t, noise).backward()
        opt.step()

    def backbone():
        model.eval()
        with torch.no_grad():
            return model.backbone(model.reshape(x), model.precond.c_noise(t))

    return {"fwd": fwd, "train": train, "backbone": backbone}


def _peak_child(c: dict, L: int, mode: str, op: str, threads: int, malloc: str = "system") -> int:
    """In a fresh process: extra peak RSS (bytes) of one ``op`` on top of the built network."""
    torch.set_num_threads(threads)
    reuse_host_memory(malloc == "reuse")  # the allocator the timings ran with
    ops = make_ops(build(c, L, mode), c, L)
    release_host_memory()
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    ops[op]()
    return max(0, _status_kib("VmHWM") - before) * 1024


def peak_memory(c: dict, L: int, mode: str, op: str) -> int | None:
    code = ("import json,sys; from latentdit.bench.dit import _peak_child as f; "
            "print(f(json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6]))")
    r = subprocess.run([sys.executable, "-c", code, json.dumps(c), str(L), mode, op, str(torch.get_num_threads()),
                        host_malloc_mode()],
                       capture_output=True, text=True, timeout=7200)
    if r.returncode != 0:
        print(f"peak memory {mode}/{op} at L={L} failed: {r.stderr.strip().splitlines()[-1:]}", flush=True)
        return None
    return int(r.stdout.strip().splitlines()[-1])


def bench_length(c: dict, L: int, repeats: int, exact: bool, memory: bool, exact_once: bool = False) -> dict:
    """Interleaved medians at one length (exact only when ``exact``). ``exact_once`` (with ``exact``
    false): exact is still timed, but once per operation after the others, without warm-up or
    reference forward (flagged ``exact_measured_once``)."""

    modes = [m for m in MODES if exact or m != "exact"]
    peaks = None
    if memory:  # first, while this process holds no network of this length: the subprocesses need the RAM
        gc.collect()
        release_host_memory()  # under reuse the heap keeps the last length's high-water mark otherwise
        peaks = {f"{m}_{op}": peak_memory(c, L, m, op) for m in modes for op in ("fwd", "train")}
    base = build(c, L, "exact")
    models = {}
    for m in modes:
        models[m] = copy.deepcopy(base)
        set_mode(models[m], m)
    ops = {m: make_ops(models[m], c, L) for m in modes}
    plan = attention_summary(models["poly"].backbone, batch=c["batch"])
    out: dict = {"L": L, "d0": c["token"] * L, "modes": modes, "planned_poly": plan["planned"],
                 "certificate": plan["layers"][0]["certificate"]}
    t0 = time.perf_counter()
    ref = {m: ops[m]["backbone"]() for m in modes}  # identical weights: no training step yet
    if exact:
        e = ref["exact"]
        out["rel_error_forward"] = float((ref["poly"] - e).norm() / e.norm())
        out["rel_error_forward_relu_linear"] = float((ref["relu_linear"] - e).norm() / e.norm())
        out["attention_share"] = float((ref["none"] - e).norm() / e.norm())
    print(f"[L={L}] reference forwards {time.perf_counter() - t0:.1f} s; planned {plan['planned']}"
          + (f"; poly vs exact rel error {out['rel_error_forward']:.2e} (attention share "
             f"{out['attention_share']:.2f})" if exact else ""), flush=True)
    jobs = {f"{m}_{op}": ops[m][op] for op in ("fwd", "train") for m in modes}
    for k, f in jobs.items():  # warm-up: allocations, optimiser state, polynomial fits
        t0 = time.perf_counter()
        f()
        print(f"[L={L}] warm-up {k} {time.perf_counter() - t0:.2f} s", flush=True)
    times = interleaved_times(jobs, repeats, f"L={L}")
    out["median_s"] = medians(times)
    out["times_s"] = times
    out.update(probe_fraction(c, L, out["median_s"], out["certificate"]["degree"], repeats))
    if exact_once and not exact:
        once = make_ops(base, c, L)  # the exact copy: base is built with mode "exact"
        for op in ("fwd", "train"):
            t0 = time.perf_counter()
            once[op]()
            out["median_s"][f"exact_{op}"] = time.perf_counter() - t0
            out["times_s"][f"exact_{op}"] = [out["median_s"][f"exact_{op}"]]
            print(f"[L={L}] exact {op} measured once: {out['median_s'][f'exact_{op}']:.1f} s", flush=True)
        out["exact_measured_once"] = True
    if peaks is not None:
        out["peak_memory_bytes"] = peaks
    return out


def probe_fraction(c: dict, L: int, med: dict, degree: int, repeats: int) -> dict:
    """The matmul probe of this run (square fp32 mm, right after the timed repeats) and the fraction of it
    that poly attention reaches: its GEMM FLOPs (:mod:`latentdit.attention.cost`, all layers, on the
    sphere's features of QK-norm) over the poly time less the ReLU linear time (which overstates the
    fraction: ReLU linear attention is not free); ``poly_floor_{op}_s`` = the attention-free time plus
    those FLOPs at the probe's rate."""
    n, mv, m = c["batch"] * c["heads"], c["hidden"] // c["heads"], c["qk_dim"]
    split = executed_split(m, degree, mv, sphere=True)
    fwd = c["depth"] * forward_flops(n, L, L, m, mv, degree, split)
    train = fwd + c["depth"] * backward_flops(n, L, L, m, mv, degree, split)
    probe = matmul_gflops(1024, repeats) * 1e9
    rec = {"matmul_probe_gflops": probe / 1e9, "poly_attention_gflop_fwd": fwd / 1e9,
           "poly_attention_gflop_train": train / 1e9}
    for op, flops in (("fwd", fwd), ("train", train)):
        extra = med[f"poly_{op}"] - med[f"relu_linear_{op}"]
        rec[f"fraction_of_matmul_probe_{op}"] = flops / extra / probe if extra > 0 else None
        rec[f"poly_floor_{op}_s"] = med[f"none_{op}"] + flops / probe
    return rec


def sampling_run(c: dict, L: int, nfe: int = 20, seed: int = 2) -> dict:
    """One full sampling run (dpm2m, ``nfe`` network evaluations, batch ``c['batch']``) at length L with
    exact and with poly attention from the same noise: the wall time of each and how far apart the
    samples end."""
    model = build(c, L, "exact")
    rec: dict = {"L": L, "nfe": nfe, "sampler": "dpm2m", "batch": c["batch"]}
    samples = {}
    for mode in ("poly", "exact"):
        set_mode(model, mode)
        model.eval()
        calls = CountingCalls(model.denoise)
        t0 = time.perf_counter()
        samples[mode] = sample(calls, (c["batch"], c["token"] * L), sampler="dpm2m", steps=nfe,
                               generator=torch.Generator().manual_seed(seed))
        rec[f"{mode}_s"] = time.perf_counter() - t0
        assert calls.calls == nfe, (calls.calls, nfe)
        print(f"[sampling L={L}] {mode}: {nfe} NFE in {rec[f'{mode}_s']:.1f} s", flush=True)
    rec["speedup"] = rec["exact_s"] / rec["poly_s"]
    d = samples["poly"] - samples["exact"]
    rec["rel_diff"] = float(d.norm() / samples["exact"].norm())
    rec["max_abs_diff"] = float(d.abs().max())
    return rec


def _extrapolate(rows: list[dict], key: str, L: int) -> float:
    """t(L) = t(L_max) (L / L_max)^p, p the least-squares exponent of ``key`` over every length
    where it was measured (L_max the longest of them); a single measured length scales linearly."""
    pts = [(r["L"], r["median_s"][key]) for r in rows if key in r["median_s"]]
    L_max, t_max = pts[-1]
    p = fit_exponent([a for a, _ in pts], [b for _, b in pts]) if len(pts) >= 2 else 1.0
    return t_max * (L / L_max) ** p


def fit_exponent(Ls: list[int], ts: list[float]) -> float:
    """Least-squares slope of log t against log L (:func:`latentdit.fits.loglog_slope`)."""
    return loglog_slope(Ls, ts)[0]


def summarise(rows: list[dict], exact_max: int) -> dict:
    measured_L = [r["L"] for r in rows if "exact_fwd" in r["median_s"]]
    for r in rows:
        if "exact_fwd" not in r["median_s"]:
            r["exact_extrapolated_s"] = {k: _extrapolate(rows, k, r["L"]) for k in ("exact_fwd", "exact_train")}
            r["extrapolated"] = True
            r["exact_extrapolation"] = {
                "method": "power law t(L_max) (L / L_max)^p fitted to the measured exact times",
                "from_lengths": measured_L,
                "exponents": {k: fit_exponent(measured_L, [x["median_s"][k] for x in rows if x["L"] in measured_L])
                              if len(measured_L) >= 2 else 1.0 for k in ("exact_fwd", "exact_train")}}
    by_L = {r["L"]: r for r in rows}

    def exact_t(r, op):
        return r["median_s"].get(f"exact_{op}", r.get("exact_extrapolated_s", {}).get(f"exact_{op}"))

    for r in rows:
        r["speedup_forward"] = exact_t(r, "fwd") / r["median_s"]["poly_fwd"]
        r["speedup_train"] = exact_t(r, "train") / r["median_s"]["poly_train"]
        r["speedup_forward_relu_linear"] = exact_t(r, "fwd") / r["median_s"]["relu_linear_fwd"]
        r["speedup_train_relu_linear"] = exact_t(r, "train") / r["median_s"]["relu_linear_train"]
        for op, name in (("fwd", "forward"), ("train", "train")):
            r[f"speedup_{name}_no_attention"] = exact_t(r, op) / r["median_s"][f"none_{op}"]
            r[f"speedup_{name}_bound_at_probe"] = exact_t(r, op) / r[f"poly_floor_{op}_s"]
    Ls = sorted(by_L)
    rep = {"exponent_poly_train": fit_exponent(Ls, [by_L[L]["median_s"]["poly_train"] for L in Ls]),
           "exponent_poly_forward": fit_exponent(Ls, [by_L[L]["median_s"]["poly_fwd"] for L in Ls])}
    measured = [L for L in Ls if "exact_fwd" in by_L[L]["median_s"]]
    if len(measured) >= 2:
        rep["exponent_exact_train"] = fit_exponent(measured, [by_L[L]["median_s"]["exact_train"] for L in measured])
    head = 16384 if 16384 in by_L else max(measured)
    for k in ("speedup_forward", "speedup_train", "fraction_of_matmul_probe_fwd", "fraction_of_matmul_probe_train"):
        rep[f"{k}_{head}"] = by_L[head].get(k)
    rep[f"poly_over_relu_linear_forward_{head}"] = by_L[head]["median_s"]["poly_fwd"] / by_L[head]["median_s"]["relu_linear_fwd"]
    for k in ("speedup_forward_no_attention", "speedup_train_no_attention", "speedup_forward_bound_at_probe",
              "speedup_train_bound_at_probe"):
        rep[f"{k}_{head}"] = by_L[head][k]
    if "rel_error_forward" in by_L[head]:
        rep[f"rel_error_forward_{head}"] = by_L[head]["rel_error_forward"]
    rep["headline_length"] = head
    if LONG_LENGTH in by_L:  # --long: the speed-ups there, flagged when exact was extrapolated
        r = by_L[LONG_LENGTH]
        rep[f"speedup_forward_{LONG_LENGTH}"] = r["speedup_forward"]
        rep[f"speedup_train_{LONG_LENGTH}"] = r["speedup_train"]
        rep[f"extrapolated_{LONG_LENGTH}"] = bool(r.get("extrapolated", False))
        rep[f"exact_measured_once_{LONG_LENGTH}"] = bool(r.get("exact_measured_once", False))
    return rep


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, op in zip(axes, ("fwd", "train")):
        for m, col in zip(MODES, ("C3", "C0", "C2", "C7")):
            pts = [(r["L"], r["median_s"][f"{m}_{op}"]) for r in rows if f"{m}_{op}" in r["median_s"]]
            ax.loglog(*zip(*pts), "o-", color=col, label=m)
            ext = [(r["L"], r["exact_extrapolated_s"][f"exact_{op}"]) for r in rows if "exact_extrapolated_s" in r]
            if m == "exact" and ext:
                ax.loglog([pts[-1][0]] + [e[0] for e in ext], [pts[-1][1]] + [e[1] for e in ext], "x--",
                          color=col, label="exact (extrapolated)")
        ax.set_xlabel("tokens L")
        ax.set_ylabel("seconds")
        ax.set_title("forward (one NFE)" if op == "fwd" else "training step")
        ax.legend()
    save_figure(fig, path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = bench_parser("dit", __doc__, quick_help="tiny network and lengths, no memory runs (smoke test)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (default 3)")
    ap.add_argument("--lengths", type=int, nargs="+", default=None, help="token counts L")
    ap.add_argument("--long", action="store_true",
                    help=f"also L = {LONG_LENGTH} (poly and relu_linear; exact extrapolated above --exact-max-len)")
    ap.add_argument("--exact-max-len", type=int, default=16384, help="longest L at which exact is measured")
    ap.add_argument("--exact-once", action="store_true",
                    help="above --exact-max-len time exact once per operation instead of extrapolating")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--sampling-length", type=int, default=None,
                    help="L of the full sampling run, exact vs poly (default 16384; --quick: 256)")
    ap.add_argument("--sampling-nfe", type=int, default=20, help="network evaluations of that run")
    ap.add_argument("--no-sampling", action="store_true", help="skip the full sampling run")
    args, argv = parse_bench_args(ap, argv)
    c = dict(QUICK if args.quick else FULL)
    lengths = list(args.lengths or c.pop("lengths"))
    c.pop("lengths", None)
    if args.long and LONG_LENGTH not in lengths:
        lengths.append(LONG_LENGTH)
    lengths = sorted(lengths)
    repeats = args.repeats or (2 if args.quick else 3)
    if repeats < 1 or any(L < 2 for L in lengths) or len(lengths) < 2:
        print("error: need --repeats >= 1 and at least two lengths >= 2", file=sys.stderr)
        return 2
    if min(lengths) > args.exact_max_len:
        print("error: --exact-max-len must cover at least the shortest length", file=sys.stderr)
        return 2
    memory = not (args.no_memory or args.quick)
    prov = provenance_start(["latentdit", "bench", "dit", *argv])
    t_start = time.time()
    print(f"bench dit: {c}, lengths {lengths}, repeats {repeats}, threads {torch.get_num_threads()}", flush=True)
    rows = [bench_length(c, L, repeats, L <= args.exact_max_len, memory, args.exact_once) for L in lengths]
    sampling = None
    if not args.no_sampling:
        sampling = sampling_run(c, args.sampling_length or (256 if args.quick else 16384), args.sampling_nfe)
    report = {**summarise(rows, args.exact_max_len), "sampling": sampling, "config": c, "lengths": rows, "repeats": repeats,
              "exact_max_len": args.exact_max_len,
              "wall_seconds": time.time() - t_start,
              "environment": {"torch": torch.__version__, "cpu_count": os.cpu_count(),
                              "machine": platform.machine(), "python": platform.python_version(),
                              "dtype": "float32", "host_malloc": host_malloc_mode()}}
    report["provenance"] = provenance_end(prov)
    atomic_write_json(args.out, report)
    plot(rows, args.out.with_suffix(".png"))
    head = report["headline_length"]
    print(f"L={head}: forward x{report[f'speedup_forward_{head}']:.1f}, train x{report[f'speedup_train_{head}']:.1f} "
          f"(poly vs exact), poly at {report[f'fraction_of_matmul_probe_fwd_{head}'] or 0:.0%} of the matmul probe; "
          + ("" if sampling is None else f"sampling {sampling['nfe']} NFE at L={sampling['L']} x{sampling['speedup']:.1f}; ")
          + f"poly train exponent {report['exponent_poly_train']:.2f}; wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
