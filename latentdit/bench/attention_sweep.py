"""Measurements of ``latentdit bench attention``: inputs with a known logit bound, timed runs of
exact SDPA, the polynomial method and Performer FAVOR+, their errors against float64 exact
attention, and the phase-transition sweep over max |logit| (see :mod:`latentdit.bench.attention`).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from latentdit.attention import certify, choose_exp_poly, performer_attention
from latentdit.attention.certificate import data_logit_bound
from latentdit.attention.cost import backward_flops, best_split, forward_flops, rank
from latentdit.attention.exact import reference_attention, reference_attention_grads
from latentdit.attention.kernels import choose_split, poly_attention, tune_split
from latentdit.attention.polynomials import exp_poly, quantize_bound
from latentdit.fits import loglog_slope
from latentdit.bench.model import matmul_gflops

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


def _certificate(run: Runner, m: int, L: int, args: argparse.Namespace) -> dict:
    """The certificate of one configuration and the factorisation the kernel picks for it."""
    return {"head_dim": m, "L": L, **{k: v for k, v in run.cert.as_dict().items() if k not in ("norms",)},
            "split": list(choose_split(m, run.poly.degree, m, run.q.device)),
            "split_cost_model": list(best_split(m, run.poly.degree, m)),
            "split_tuned": bool(args.tune)}


def _timed(run: Runner, methods: list[str], pas: str, args: argparse.Namespace, bar: tqdm) -> tuple[dict, dict]:
    """args.repeats interleaved timings of each method; returns (times, last outputs)."""
    times = {mt: [] for mt in methods}
    outs = {}
    for _ in range(args.repeats):
        for mt in methods:
            dt, out = run.time(mt, pas)
            times[mt].append(dt)
            outs[mt] = out
            bar.update(1)
    return times, outs


def _pass_rows(run: Runner, m: int, L: int, pas: str, sub, args: argparse.Namespace, bar: tqdm) -> list[dict]:
    """The result rows of one pass ("fwd" or "fwdbwd") of one configuration."""
    limit = args.exact_max_L if pas == "fwd" else (
        args.exact_fwdbwd_max_L if m == CONFIGS[0][0] else args.exact_fwdbwd_max_L_other)
    methods = [mt for mt in METHODS if mt != "exact" or L <= limit]
    times, outs = _timed(run, methods, pas, args, bar)
    bar.set_postfix_str(f"m={m} L={L} {pas}")
    errors = _errors(run, outs, pas, sub, args)
    probe = matmul_gflops(1024, args.repeats)  # same run, right after the timed repeats
    flops = forward_flops(HEADS, L, L, m, m, run.poly.degree)
    if pas == "fwdbwd":
        flops += backward_flops(HEADS, L, L, m, m, run.poly.degree)
    rows = []
    for mt in methods:
        rows.append({"method": mt, "L": L, "head_dim": m, "pass": pas,
                     "median_s": statistics.median(times[mt]), "times_s": times[mt],
                     "rel_error": errors.get(mt), "extrapolated": False,
                     "matmul_probe_gflops": probe,
                     **({"gemm_gflop": flops / 1e9, "fraction_of_matmul_probe":
                         flops / statistics.median(times[mt]) / (probe * 1e9)} if mt == "poly" else {}),
                     **({"rel_error_fwd": errors.get(mt + "_fwd")} if pas == "fwdbwd" else {}),
                     **({"grad_rel_errors": errors.get(mt + "_grads")} if pas == "fwdbwd" else {})})
    return rows


def _exact_single(results: list[dict], args: argparse.Namespace, bar: tqdm) -> dict | None:
    """One (not a median) exact forward at a length where it is otherwise extrapolated, to check the
    extrapolation; head size 4 only. None unless --exact-single-L is above --exact-max-L."""
    if not (args.exact_single_L and args.exact_single_L > args.exact_max_L):
        return None
    m, R = CONFIGS[0]
    q, k, v = make_inputs(args.exact_single_L, m, R, seed=args.seed)
    with torch.no_grad():
        t0 = time.perf_counter()
        F.scaled_dot_product_attention(q, k, v)
        dt = time.perf_counter() - t0
    bar.update(1)
    ext = next((r for r in results if r["method"] == "exact" and r["head_dim"] == m and r["pass"] == "fwd"
                and r["L"] == args.exact_single_L), None)
    return {"L": args.exact_single_L, "head_dim": m, "pass": "fwd", "time_s": dt,
            "extrapolated_s": None if ext is None else ext["median_s"]}


def timing_sweep(args: argparse.Namespace, bar: tqdm) -> dict:
    results = []
    certificates = []
    tuned = {}
    for m, R in CONFIGS:
        for L in args.lengths:
            run = Runner(L, m, R, args)
            if args.tune and m not in tuned:  # pick the fastest factorisation on this machine (untimed)
                tuned[m] = tune_split(m, run.poly.degree, m, n=HEADS, L=min(4096, max(args.lengths)))
            certificates.append(_certificate(run, m, L, args))
            sub = None
            if L > args.full_error_max_L:
                sub = torch.randperm(L, generator=torch.Generator().manual_seed(args.seed))[:args.error_rows]
            for pas in ("fwd", "fwdbwd"):
                results.extend(_pass_rows(run, m, L, pas, sub, args, bar))
    _extrapolate_exact(results, args)
    single = _exact_single(results, args, bar)
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
            b, a = loglog_slope(Ls, ts)
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
