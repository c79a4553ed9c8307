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
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from latentdit.attention import certify, choose_exp_poly, performer_attention
from latentdit.attention.certificate import data_logit_bound
from latentdit.attention.cost import best_split, rank
from latentdit.attention.exact import reference_attention, reference_attention_grads
from latentdit.attention.kernels import choose_split, poly_attention, tune_split
from latentdit.attention.polynomials import exp_poly, quantize_bound

HEADS = 4
CONFIGS = ((4, 3.0), (8, 1.5))  # (head size, |logit| bound after centring)
METHODS = ("exact", "poly", "performer")


def make_inputs(L: int, m: int, R: float, *, heads: int = HEADS, seed: int = 0,
                dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v of shape (1, heads, L, m): unit-norm random directions, keys shifted by a common
    offset (removed by centring), q scaled so that the certified bound (scale 1/sqrt(m)) is R."""
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(1, heads, L, m, generator=g, dtype=torch.float64), dim=-1)
    k = F.normalize(torch.randn(1, heads, L, m, generator=g, dtype=torch.float64), dim=-1)
    k = k + torch.randn(1, heads, 1, m, generator=g, dtype=torch.float64)
    v = torch.randn(1, heads, L, m, generator=g, dtype=torch.float64)
    R0 = data_logit_bound(q, k, 1.0 / math.sqrt(m))[0]
    q = q * (R / R0) * (1 - 1e-6)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


class Runner:
    """One (head size, L) configuration: inputs, methods, timing and errors."""

    def __init__(self, L: int, m: int, R: float, args: argparse.Namespace):
        self.L, self.m, self.R, self.args = L, m, R, args
        self.q, self.k, self.v = make_inputs(L, m, R, seed=args.seed)
        self.scale = 1.0 / math.sqrt(m)
        self.cert = certify(self.q, self.k, self.scale, args.eps)
        self.poly = choose_exp_poly(self.cert.R_used, args.eps)
        self.dout = torch.randn(self.q.shape[:-1] + (m,), generator=torch.Generator().manual_seed(args.seed + 1))

    def run(self, method: str, q, k, v) -> torch.Tensor:
        if method == "exact":
            return F.scaled_dot_product_attention(q, k, v)
        if method == "poly":
            return poly_attention(q, k, v, self.poly, scale=self.scale, norms=self.cert.norms)
        return performer_attention(q, k, v, num_features=self.args.num_features, seed=self.args.seed)

    def time(self, method: str, pas: str) -> tuple[float, torch.Tensor | tuple]:
        if pas == "fwd":
            with torch.no_grad():
                t0 = time.perf_counter()
                out = self.run(method, self.q, self.k, self.v)
                return time.perf_counter() - t0, out
        q, k, v = (x.detach().requires_grad_() for x in (self.q, self.k, self.v))
        t0 = time.perf_counter()
        out = self.run(method, q, k, v)
        out.backward(self.dout)
        dt = time.perf_counter() - t0
        return dt, (q.grad, k.grad, v.grad)


def fit_exponent(Ls: list[int], ts: list[float]) -> float | None:
    if len(Ls) < 2:
        return None
    return float(np.polyfit(np.log(Ls), np.log(ts), 1)[0])


def timing_sweep(args: argparse.Namespace, bar: tqdm) -> dict:
    results = []
    certificates = []
    tuned = {}
    for m, R in CONFIGS:
        for L in args.lengths:
            run = Runner(L, m, R, args)
            if args.tune and m not in tuned:  # pick the fastest factorisation on this machine (untimed)
                tuned[m] = tune_split(m, run.poly.degree, m, n=HEADS, L=min(4096, max(args.lengths)))
            certificates.append({"head_dim": m, "L": L, **{k: v for k, v in run.cert.as_dict().items()
                                                          if k not in ("norms",)},
                                 "split": list(choose_split(m, run.poly.degree, m, run.q.device)),
                                 "split_cost_model": list(best_split(m, run.poly.degree, m)),
                                 "split_tuned": bool(args.tune)})
            sub = None
            if L > args.full_error_max_L:
                sub = torch.randperm(L, generator=torch.Generator().manual_seed(args.seed))[:args.error_rows]
            for pas in ("fwd", "fwdbwd"):
                limit = args.exact_max_L if pas == "fwd" else (
                    args.exact_fwdbwd_max_L if m == CONFIGS[0][0] else args.exact_fwdbwd_max_L_other)
                methods = [mt for mt in METHODS if mt != "exact" or L <= limit]
                times = {mt: [] for mt in methods}
                outs = {}
                for _ in range(args.repeats):
                    for mt in methods:
                        dt, out = run.time(mt, pas)
                        times[mt].append(dt)
                        outs[mt] = out
                        bar.update(1)
                bar.set_postfix_str(f"m={m} L={L} {pas}")
                errors = _errors(run, outs, pas, sub, args)
                for mt in methods:
                    results.append({"method": mt, "L": L, "head_dim": m, "pass": pas,
                                    "median_s": statistics.median(times[mt]), "times_s": times[mt],
                                    "rel_error": errors.get(mt), "extrapolated": False,
                                    **({"rel_error_fwd": errors.get(mt + "_fwd")} if pas == "fwdbwd" else {}),
                                    **({"grad_rel_errors": errors.get(mt + "_grads")} if pas == "fwdbwd" else {})})
                del outs
    _extrapolate_exact(results, args)
    single = None
    if args.exact_single_L and args.exact_single_L > args.exact_max_L:
        # one (not a median) exact forward at a length where it is otherwise extrapolated, to check
        # the extrapolation; head size 4 only
        m, R = CONFIGS[0]
        q, k, v = make_inputs(args.exact_single_L, m, R, seed=args.seed)
        with torch.no_grad():
            t0 = time.perf_counter()
            F.scaled_dot_product_attention(q, k, v)
            dt = time.perf_counter() - t0
        bar.update(1)
        ext = next((r for r in results if r["method"] == "exact" and r["head_dim"] == m and r["pass"] == "fwd"
                    and r["L"] == args.exact_single_L), None)
        single = {"L": args.exact_single_L, "head_dim": m, "pass": "fwd", "time_s": dt,
                  "extrapolated_s": None if ext is None else ext["median_s"]}
    return {"results": results, "certificates": certificates, "exact_single_run": single}


def _errors(run: Runner, outs: dict, pas: str, sub, args) -> dict:
    q, k, v = (x.double() for x in (run.q, run.k, run.v))
    errors: dict = {}
    if pas == "fwd":
        qs = q if sub is None else q[..., sub, :]
        ref = reference_attention(qs, k, v, run.scale)
        for mt, out in outs.items():
            errors[mt] = rel_error(out if sub is None else out[..., sub, :], ref)
        return errors
    if run.L > (args.grad_error_max_L if run.m == CONFIGS[0][0] else args.exact_fwdbwd_max_L_other):
        return errors
    refs = reference_attention_grads(q, k, v, run.dout.double(), run.scale)
    for mt, grads in outs.items():
        per = [rel_error(g, r) for g, r in zip(grads, refs)]
        errors[mt] = max(per)
        errors[mt + "_grads"] = dict(zip(("dq", "dk", "dv"), per))
    return errors


def _extrapolate_exact(results: list[dict], args) -> None:
    """Add exact rows for lengths it did not run at, from its fitted exponent (flagged)."""
    for m, _ in CONFIGS:
        for pas in ("fwd", "fwdbwd"):
            rows = [r for r in results if r["method"] == "exact" and r["head_dim"] == m and r["pass"] == pas]
            have = {r["L"] for r in rows}
            rows = sorted(rows, key=lambda r: r["L"])
            fit_rows = [r for r in rows if r["L"] >= 4096]
            fit_rows = fit_rows if len(fit_rows) >= 2 else rows[-2:]  # the two longest measured
            if len(fit_rows) < 2:
                continue
            Ls = [r["L"] for r in fit_rows]
            ts = [r["median_s"] for r in fit_rows]
            b, a = np.polyfit(np.log(Ls), np.log(ts), 1)
            for L in args.lengths:
                if L not in have:
                    results.append({"method": "exact", "L": L, "head_dim": m, "pass": pas,
                                    "median_s": float(math.exp(a + b * math.log(L))), "times_s": [],
                                    "rel_error": None, "extrapolated": True,
                                    "extrapolated_from": {"L": Ls, "exponent": float(b)}})


def phase_sweep(args: argparse.Namespace, bar: tqdm) -> dict:
    m, fixed_R = 4, 3.0
    fixed = choose_exp_poly(quantize_bound(3.0), args.eps)
    rows = []
    for L in args.phase_lengths:
        for R in args.phase_bounds:
            q, k, v = make_inputs(L, m, R, seed=args.seed + 7)
            scale = 1.0 / math.sqrt(m)
            cert = certify(q, k, scale, args.eps)
            sub = torch.randperm(L, generator=torch.Generator().manual_seed(args.seed))[:args.error_rows]
            qd, kd, vd = q.double(), k.double(), v.double()
            ref = reference_attention(qd[..., sub, :], kd, vd, scale)
            logits = scale * qd[..., sub, :] @ (kd - kd.mean(-2, keepdim=True)).transpose(-2, -1)
            true_max = float(logits.abs().max())
            # fixed degree (certified for |logit| <= 3); for larger bounds it is refitted on [-R, R]
            p_fixed = exp_poly("chebyshev", max(cert.R_used, quantize_bound(3.0)), fixed.degree)
            with torch.no_grad():
                out_fixed = poly_attention(q, k, v, p_fixed, scale=scale, norms=cert.norms)
                out_perf = performer_attention(q, k, v, num_features=args.num_features, seed=args.seed)
                err_cert = None
                if cert.certified and cert.rank <= args.phase_max_rank:
                    out_c = poly_attention(q, k, v, choose_exp_poly(cert.R_used, args.eps), scale=scale,
                                           norms=cert.norms)
                    err_cert = rel_error(out_c[..., sub, :], ref)
            rows.append({"L": L, "bound": R, "true_max_logit": true_max, "entry_ratio": cert.entry_ratio,
                         "fixed_degree": fixed.degree, "fixed_rank": rank(m, fixed.degree),
                         "fixed_error_bound": p_fixed.error_bound,
                         "rel_error_fixed_degree": rel_error(out_fixed[..., sub, :], ref),
                         "rel_error_performer": rel_error(out_perf[..., sub, :], ref),
                         "certified_degree": cert.degree, "certified_rank": cert.rank,
                         "certified_error_bound": cert.error_bound, "rel_error_certified": err_cert,
                         "predicted_speedup": cert.predicted_speedup, "criterion_ok": cert.ok,
                         "reason": cert.reason})
            bar.update(1)
    return {"head_dim": m, "eps": args.eps, "fixed_degree_fitted_for": fixed_R, "rows": rows}


def plot(data: dict, phase: dict | None, path: Path) -> None:
    """One PNG: timing (forward, forward+backward) on top, the phase transition below."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows_n = 1 if phase is None else 2
    fig, axes = plt.subplots(rows_n, 2, figsize=(12, 4.5 * rows_n), squeeze=False)
    colors = {"exact": "C0", "poly": "C1", "performer": "C2"}
    for ax, pas in zip(axes[0], ("fwd", "fwdbwd")):
        for m, R in CONFIGS:
            for mt in METHODS:
                rows = sorted((r for r in data["results"] if r["method"] == mt and r["head_dim"] == m
                               and r["pass"] == pas), key=lambda r: r["L"])
                meas = [r for r in rows if not r["extrapolated"]]
                if not meas:
                    continue
                ls = "-" if m == 4 else "--"
                ax.plot([r["L"] for r in meas], [r["median_s"] for r in meas], ls, marker="o",
                        color=colors[mt], label=f"{mt}, head {m}, |logit|<={R:g}")
                ext = [r for r in rows if r["extrapolated"]]
                if ext:
                    ax.plot([r["L"] for r in meas[-1:] + ext], [r["median_s"] for r in meas[-1:] + ext], ":",
                            marker="x", color=colors[mt])
        single = data.get("exact_single_run")
        if single and pas == single["pass"]:
            ax.plot([single["L"]], [single["time_s"]], "s", mfc="none", color=colors["exact"],
                    label="exact, head 4, one measured run")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length L")
        ax.set_ylabel("median time [s]  (x: extrapolated)")
        ax.set_title({"fwd": "forward", "fwdbwd": "forward + backward"}[pas] + f" ({HEADS} heads, fp32)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    if phase is not None:
        _plot_phase(phase, axes[1])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_phase(phase: dict, axes) -> None:
    Ls = sorted({r["L"] for r in phase["rows"]})
    for i, L in enumerate(Ls):
        rows = sorted((r for r in phase["rows"] if r["L"] == L), key=lambda r: r["bound"])
        x = [r["true_max_logit"] for r in rows]
        axes[0].plot(x, [r["rel_error_fixed_degree"] for r in rows], "-o", color=f"C{i}",
                     label=f"poly degree {rows[0]['fixed_degree']} (rank {rows[0]['fixed_rank']}), L={L}")
        axes[0].plot(x, [r["rel_error_performer"] for r in rows], ":", color=f"C{i}", label=f"FAVOR+, L={L}")
        axes[1].plot([r["bound"] for r in rows], [max(r["predicted_speedup"], 1e-3) for r in rows], "-o",
                     color=f"C{i}", label=f"L={L}")
    rows = sorted((r for r in phase["rows"] if r["L"] == Ls[0]), key=lambda r: r["bound"])
    axes[0].plot([r["true_max_logit"] for r in rows], [r["fixed_error_bound"] for r in rows], "k--",
                 label="certified entry-wise bound")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("max |logit| (after key centring)")
    axes[0].set_ylabel("relative error of the output")
    axes[0].set_title("fixed rank: error vs max |logit| (head size 4)")
    axes[0].legend(fontsize=7)
    axes[0].grid(True, which="both", alpha=0.3)
    ax2 = axes[1]
    ax2.axhline(1.0, color="k", lw=0.8)
    ax2.set_yscale("log")
    ax2.set_xlabel("certified bound R on |logit|")
    ax2.set_ylabel("predicted speed-up of the certified degree")
    for r in rows:
        if r["certified_degree"] is not None:
            ax2.annotate(f"g={r['certified_degree']}", (r["bound"], max(r["predicted_speedup"], 1e-3)),
                         fontsize=6, textcoords="offset points", xytext=(0, 5))
    ax2.set_title(f"criterion for eps={phase['eps']:g}: degree and predicted speed-up (head size 4)")
    ax2.legend(fontsize=7)
    ax2.grid(True, which="both", alpha=0.3)


def _summary(data: dict) -> dict:
    res = data["results"]

    def med(mt, L, m, pas):
        for r in res:
            if r["method"] == mt and r["L"] == L and r["head_dim"] == m and r["pass"] == pas:
                return r
        return None

    def speed(L, m, pas):
        e, p = med("exact", L, m, pas), med("poly", L, m, pas)
        if e is None or p is None:
            return None, None
        return e["median_s"] / p["median_s"], e["extrapolated"]

    out = {}
    Lmid = 16384 if any(r["L"] == 16384 for r in res) else max(r["L"] for r in res if r["extrapolated"] is False)
    out["summary_L"] = Lmid  # the "_16384" keys refer to this length (smaller only with --quick/--lengths)
    s, _ = speed(Lmid, 4, "fwd")
    out["speedup_fwd_16384"] = s
    s, _ = speed(Lmid, 4, "fwdbwd")
    out["speedup_fwdbwd_16384"] = s
    p = med("poly", Lmid, 4, "fwd")
    out["rel_error_fwd_16384"] = None if p is None else p["rel_error"]
    p = med("poly", Lmid, 4, "fwdbwd")
    out["rel_error_grad_16384"] = None if p is None else p["rel_error"]
    for mt in ("poly", "exact", "performer"):
        rows = sorted((r for r in res if r["method"] == mt and r["head_dim"] == 4 and r["pass"] == "fwd"
                       and not r["extrapolated"]), key=lambda r: r["L"])
        out[f"exponent_{mt}"] = fit_exponent([r["L"] for r in rows], [r["median_s"] for r in rows])
        rows_b = sorted((r for r in res if r["method"] == mt and r["head_dim"] == 4 and r["pass"] == "fwdbwd"
                         and not r["extrapolated"]), key=lambda r: r["L"])
        out[f"exponent_{mt}_fwdbwd"] = fit_exponent([r["L"] for r in rows_b], [r["median_s"] for r in rows_b])
        big = [r for r in rows if r["L"] >= 4096]  # without the fixed per-call costs of short sequences
        out[f"exponent_{mt}_L_ge_4096"] = fit_exponent([r["L"] for r in big], [r["median_s"] for r in big])
    Lmax = max(r["L"] for r in res)
    s, ext = speed(Lmax, 4, "fwd")
    out[f"speedup_fwd_{Lmax}"], out[f"speedup_fwd_{Lmax}_exact_extrapolated"] = s, ext
    s, ext = speed(Lmax, 4, "fwdbwd")
    out[f"speedup_fwdbwd_{Lmax}"], out[f"speedup_fwdbwd_{Lmax}_exact_extrapolated"] = s, ext
    s, _ = speed(Lmid, 8, "fwd")
    out["speedup_fwd_16384_head8"] = s
    p = med("poly", Lmid, 8, "fwd")
    out["rel_error_fwd_16384_head8"] = None if p is None else p["rel_error"]
    s, _ = speed(Lmid, 8, "fwdbwd")
    out["speedup_fwdbwd_16384_head8"] = s
    p = med("poly", Lmid, 8, "fwdbwd")
    out["rel_error_grad_16384_head8"] = None if p is None else p["rel_error"]
    return out


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
    torch.set_num_threads(args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    n_timing = 0
    for m, _ in CONFIGS:
        for L in args.lengths:
            for pas, lim in (("fwd", args.exact_max_L), ("fwdbwd", args.exact_fwdbwd_max_L if m == CONFIGS[0][0]
                                                              else args.exact_fwdbwd_max_L_other)):
                n_timing += args.repeats * (len(METHODS) - (0 if L <= lim else 1))
    n_timing += int(bool(args.exact_single_L) and args.exact_single_L > args.exact_max_L)
    n_phase = 0 if args.no_phase else len(args.phase_lengths) * len(args.phase_bounds)
    t0, load0 = time.time(), _load()
    with tqdm(total=n_timing + n_phase, desc="bench attention", file=sys.stderr) as bar:
        data = timing_sweep(args, bar)
        phase = None if args.no_phase else phase_sweep(args, bar)
    summary = _summary(data)
    report = {
        "command": "latentdit bench attention " + " ".join(sys.argv[1:] if argv is None else argv),
        **summary,
        "setting": {"heads": HEADS, "dtype": "float32", "threads": args.threads, "eps": args.eps,
                    "repeats": args.repeats, "configs": [{"head_dim": m, "logit_bound": R} for m, R in CONFIGS],
                    "performer_features": args.num_features, "seed": args.seed,
                    "rel_error": "||out - exact||_F / ||exact||_F vs float64 exact; fwdbwd rows: max over "
                                 "dq, dk, dv; rows above L=16384: a random subset of query rows"},
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "torch": torch.__version__, "load_average_start": load0},
        "wall_s": time.time() - t0,
        "results": data["results"],
        "certificates": data["certificates"],
        "exact_single_run": data["exact_single_run"],
        "phase_transition": phase,
    }
    report["machine"]["load_average_end"] = _load()
    args.out.write_text(json.dumps(report, indent=1))
    plot(data, phase, args.plot)
    print(json.dumps(summary, indent=1))
    print(f"wrote {args.out} and {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
