"""The attention criterion (Prop. 4.1-4.2) as a phase transition in L, from the library's own
polynomial method, certificate and cost model (:mod:`latentdit.attention`).

Setting of the criterion: head size m = O(log L), every entry of the queries and keys bounded by
B, target accuracy 1/poly(L). Here

- m = :func:`head_size` (L) = max(2, round(ln L / 2)), proportional to log L;
- eps = 1 / L;
- logits <q, k> with no 1/sqrt(m) temperature (the paper's attention), so |logit| <= R = m B^2;
- the cost of one layer's :data:`HEADS` heads of value size m at Lq = Lk = L from
  :func:`latentdit.attention.cost.predicted_times`.

The criterion in the theorem's units (:func:`exponent_rows`): Alman and Song bound the logits by
R; with c = R / ln L the polynomial of the certified degree g for 1/L has rank r = C(m + g, g) and
attention costs L r m instead of L^2 m, so the rank exponent log_L(r) is the exponent the method
saves (0: linear time, 1: no better than quadratic). Plotted against c for each L, the curves
collapse if c is the right unit; points where no degree <= MAX_DEGREE certifies 1/L, or where the
rank passes MAX_RANK, are marked as capped rather than drawn as measurements.

Two further results per L:

1. the phase transition (:func:`phase_rows`): the certified relative error of the best Chebyshev
   polynomial the method can afford at L (the largest degree whose modelled cost is still below
   exact attention's) on [-R, R], against B / sqrt(ln L). The error stays below 1/L while B is
   small and jumps to O(1) past a threshold; since m, the target and the affordable degree all move
   with L, the curves for different L differ;
2. the break-even bound B*(L) (:func:`break_even`): the largest B at which the certificate
   (:func:`latentdit.attention.certificate.certify`) still finds a polynomial that certifies 1/L
   and is predicted faster than exact attention, plotted against sqrt(ln L) (the o(sqrt(log L))
   threshold of Prop. 4.1-4.2 is a statement about how B* may grow).

A measured check (:func:`measured_rows`) runs the polynomial attention at small L against exact
attention on inputs with entries uniform in [-B, B]: the measured error must stay within the
certified bound.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from latentdit.attention.certificate import certify
from latentdit.attention.cost import MAX_RANK, predicted_times, rank
from latentdit.attention.exact import reference_attention
from latentdit.attention.kernels import poly_attention
from latentdit.attention.polynomials import MAX_DEGREE, choose_exp_poly, exp_poly, quantize_bound
from latentdit.experiments.rates.plots import colours
from latentdit.io import save_figure

HEADS = 32  # heads of one layer in the cost model (a DiT layer of many small heads)
PNG = "attention_phase.png"


def head_size(L: int) -> int:
    """m = max(2, round(ln L / 2)): a head size proportional to log L (Prop. 4.1's m = O(log L))."""
    return max(2, round(math.log(L) / 2))


def affordable_degree(L: int, m: int, heads: int = HEADS) -> int | None:
    """The largest degree g <= MAX_DEGREE whose rank C(m + g, g) <= MAX_RANK and whose modelled cost
    at Lq = Lk = L is below exact attention's; None when even degree 1 is not cheaper."""
    best = None
    for g in range(1, MAX_DEGREE + 1):
        if rank(m, g) > MAX_RANK:
            break
        exact, poly = predicted_times(heads, L, L, m, m, g)
        if poly < exact:
            best = g
    return best


def phase_rows(lengths, ratios) -> list[dict]:
    """Certified error of the affordable polynomial against B / sqrt(ln L), for each L."""
    rows = []
    for L in lengths:
        m, eps, g = head_size(L), 1.0 / L, affordable_degree(L, head_size(L))
        for u in ratios:
            B = u * math.sqrt(math.log(L))
            R = m * B * B
            err = None
            if g is not None:
                R_used = quantize_bound(R)
                err = math.inf if R_used > 700 else min(exp_poly("chebyshev", R_used, g).error_bound, math.inf)
            rows.append({"L": L, "m": m, "eps": eps, "B": B, "B_over_sqrt_log_L": u, "R": R,
                         "affordable_degree": g, "affordable_rank": None if g is None else rank(m, g),
                         "error_bound": err, "meets_target": err is not None and err <= eps})
    return rows


def _certified_ok(L: int, m: int, B: float, heads: int = HEADS):
    q = torch.empty(heads, L, m)
    return certify(q, q, 1.0, 1.0 / L, logit_bound=m * B * B, v_dim=m)


def break_even(L: int, *, iters: int = 30, heads: int = HEADS) -> dict:
    """B*(L): the largest entry bound at which the certificate still finds a polynomial certifying
    eps = 1/L that is predicted faster than exact attention (bisection; the degree, hence the
    cost, grows with B). ``B_star`` is None when not even B -> 0 pays off at this L."""
    m = head_size(L)
    out = {"L": L, "m": m, "eps": 1.0 / L, "sqrt_log_L": math.sqrt(math.log(L)), "B_star": None, "R_star": None,
           "degree": None, "rank": None, "predicted_speedup": None}
    if not _certified_ok(L, m, 1e-6, heads).ok:
        return out
    lo, hi = 1e-6, 1.0
    while _certified_ok(L, m, hi, heads).ok:
        lo, hi = hi, 2 * hi
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _certified_ok(L, m, mid, heads).ok else (lo, mid)
    c = _certified_ok(L, m, lo, heads)
    out.update(B_star=lo, R_star=m * lo * lo, degree=c.degree, rank=c.rank, predicted_speedup=c.predicted_speedup)
    out["B_star_over_sqrt_log_L"] = lo / out["sqrt_log_L"]
    out["c_star"] = out["R_star"] / math.log(L)
    out["limit"] = _limit(L, m, hi)
    return out


def _limit(L: int, m: int, B: float) -> str:
    """What stops the certificate just above B*: "MAX_DEGREE" (no degree certifies 1/L), "MAX_RANK"
    (the certified degree's rank passes the cap) or "cost" (a polynomial exists but is slower)."""
    poly = choose_exp_poly(quantize_bound(m * B * B), 1.0 / L)
    if poly is None:
        return "MAX_DEGREE"
    return "MAX_RANK" if rank(m, poly.degree) > MAX_RANK else "cost"


def spread_error(out: torch.Tensor, exact: torch.Tensor, v: torch.Tensor) -> float:
    """max_i |out_i - exact_i| / max_{i,j} |v_j - exact_i|: the error measure the certificate bounds
    by error_bound / (1 - error_bound) (see :mod:`latentdit.attention.polynomials`)."""
    spread = (v[..., None, :, :] - exact[..., :, None, :]).abs().amax()
    return float((out - exact).abs().amax() / spread)


@torch.no_grad()
def measured_rows(lengths, ratios, seed: int = 0) -> list[dict]:
    """Polynomial attention (certified degree for 1/L when affordable, else the affordable degree)
    against exact attention on q, k with entries uniform in [-B, B] and v ~ N(0, 1), one head."""
    rows = []
    g_ = torch.Generator().manual_seed(seed)
    for L in lengths:
        m, eps = head_size(L), 1.0 / L
        g_aff = affordable_degree(L, m)
        for u in ratios:
            B = u * math.sqrt(math.log(L))
            R_used = quantize_bound(m * B * B)
            poly = choose_exp_poly(R_used, eps)
            if poly is None or (g_aff is not None and poly.degree > g_aff):
                if g_aff is None:
                    continue
                poly = exp_poly("chebyshev", R_used, g_aff)
            q = (2 * torch.rand(1, L, m, generator=g_, dtype=torch.float64) - 1) * B
            k = (2 * torch.rand(1, L, m, generator=g_, dtype=torch.float64) - 1) * B
            v = torch.randn(1, L, m, generator=g_, dtype=torch.float64)
            rows_q = slice(0, min(L, 128))
            exact = reference_attention(q[:, rows_q], k, v, 1.0)
            out = poly_attention(q, k, v, poly, scale=1.0, center=False)[:, rows_q]
            eb = poly.error_bound
            rows.append({"L": L, "m": m, "B": B, "B_over_sqrt_log_L": u, "degree": poly.degree, "error_bound": eb,
                         "guaranteed": eb / (1 - eb) if eb < 1 else math.inf,
                         "measured": spread_error(out, exact, v)})
    return rows


def exponent_rows(lengths, cs) -> list[dict]:
    """Per L and c = R / ln L: the certified Chebyshev degree for 1/L on [-R, R], its rank at head
    size :func:`head_size` (L), the rank exponent log_L(rank), and ``capped``: "MAX_DEGREE" (no
    degree certifies), "MAX_RANK" (the rank passes the cost model's cap) or None."""
    rows = []
    for L in lengths:
        m, lnL = head_size(L), math.log(L)
        for c in cs:
            poly = choose_exp_poly(quantize_bound(c * lnL), 1.0 / L)
            r = None if poly is None else rank(m, poly.degree)
            capped = "MAX_DEGREE" if poly is None else ("MAX_RANK" if r > MAX_RANK else None)
            rows.append({"L": L, "m": m, "c": c, "R": c * lnL, "degree": None if poly is None else poly.degree,
                         "rank": r, "rank_exponent": None if r is None else math.log(r) / lnL, "capped": capped})
    return rows


def _plot_exponents(ax, rows: list[dict]) -> None:
    Ls = sorted({r["L"] for r in rows})
    cs = colours(len(Ls))
    for i, L in enumerate(Ls):
        rs = [r for r in rows if r["L"] == L]
        ok = [r for r in rs if r["capped"] is None]
        ax.plot([r["c"] for r in ok], [r["rank_exponent"] for r in ok], "o-", ms=3, color=cs[i],
                label=f"L=2^{round(math.log2(L))}, m={rs[0]['m']}")
        cap = [r for r in rs if r["capped"] == "MAX_RANK"]
        ax.plot([r["c"] for r in cap], [r["rank_exponent"] for r in cap], "o", mfc="none", color=cs[i], ms=4)
    ax.axhline(1.0, color="k", lw=0.6, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("c = R / ln L (logit bound over ln L)")
    ax.set_ylabel("rank exponent log_L C(m + g, g)")
    ax.set_title("Rank exponent for error 1/L against c (hollow: rank > MAX_RANK)", fontsize=8)
    ax.legend(fontsize=6)


def _plot(phase: list[dict], be: list[dict], path: Path, exps: list[dict] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3 if exps else 2, figsize=(15.6 if exps else 10.4, 3.9))
    a1, a2 = axes[-2], axes[-1]
    if exps:
        _plot_exponents(axes[0], exps)
    pal = colours(len({r["L"] for r in phase}))
    for i, L in enumerate(sorted({r["L"] for r in phase})):
        rs = [r for r in phase if r["L"] == L and r["error_bound"] is not None]
        if not rs:
            continue
        xs = [r["B_over_sqrt_log_L"] for r in rs]
        ys = [min(max(r["error_bound"], 1e-17), 1e3) for r in rs]
        a1.plot(xs, ys, "o-", color=pal[i], ms=3, label=f"L={L}, m={rs[0]['m']}, g={rs[0]['affordable_degree']}")
        a1.axhline(1.0 / L, color=pal[i], ls=":", lw=0.8)
    a1.set_yscale("log")
    a1.set_xlabel("entry bound B / sqrt(ln L)")
    a1.set_ylabel("certified relative error (affordable degree)")
    a1.set_title("Phase transition, m ~ ln L / 2, target 1/L (dotted)", fontsize=9)
    a1.legend(fontsize=6)
    ok = [r for r in be if r["B_star"] is not None]
    free = [r for r in ok if r.get("limit", "cost") == "cost"]
    capped = [r for r in ok if r.get("limit", "cost") != "cost"]
    a2.plot([math.log2(r["L"]) for r in free], [r["R_star"] / math.log(r["L"]) for r in free], "o", color="C0",
            label="break-even set by the cost model")
    a2.plot([math.log2(r["L"]) for r in capped], [r["R_star"] / math.log(r["L"]) for r in capped], "o", mfc="none",
            color="C3", label="set by MAX_RANK / MAX_DEGREE (not the break-even)")
    a2.set_xlabel("log2 L")
    a2.set_ylabel("c* = R* / ln L")
    a2.set_title("Largest c at which a certified polynomial is predicted faster", fontsize=8)
    a2.legend(fontsize=6)
    save_figure(fig, path, dpi=110)


def attention_phase(out_dir, *, quick: bool) -> dict:
    """Run the section (quick: three lengths, a coarse B grid; well under a minute), write
    ``attention_phase.png`` in ``out_dir`` and return the numbers."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if quick:
        lengths, ratios = [2 ** 8, 2 ** 12, 2 ** 16], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.3]
        check, cs = [2 ** 8], [0.05, 0.1, 0.2, 0.4, 0.8, 1.6]
    else:
        lengths = [2 ** p for p in range(8, 22, 2)]
        ratios = [0.05 * i for i in range(1, 31)]
        check, cs = [2 ** 8, 2 ** 10], [0.025 * 2 ** (i / 2) for i in range(13)]
    phase = phase_rows(lengths, ratios)
    be = [break_even(L) for L in lengths]
    measured = measured_rows(check, [0.2, 0.4, 0.6])
    exps = exponent_rows(lengths, cs)
    _plot(phase, be, out_dir / PNG, exps)
    return {"head_size": "max(2, round(ln L / 2))", "eps": "1/L", "heads": HEADS, "logit_scale": 1.0,
            "lengths": lengths, "phase": phase, "break_even": be, "measured": measured, "exponents": exps,
            "png": PNG}


TABLES = ("phase", "break_even", "measured", "exponents")


def to_rows(att: dict) -> list[dict]:
    """The section's tables as lines of the rows file (``section = "attention"``, ``table``)."""
    return [{"section": "attention", "table": t, **r} for t in TABLES for r in att.get(t, [])]


def from_rows(rows: list[dict], out_dir, *, draw: bool = True) -> dict | None:
    """The section's result rebuilt from the rows file (None when it has no attention lines);
    ``draw``: redraw the PNG in ``out_dir``."""
    att = [r for r in rows if r.get("section") == "attention"]
    if not att:
        return None
    tabs = {t: [{k: v for k, v in r.items() if k not in ("section", "table", "plan", "status")}
                for r in att if r["table"] == t] for t in TABLES}
    if draw:
        _plot(tabs["phase"], tabs["break_even"], Path(out_dir) / PNG, tabs["exponents"])
    return {"head_size": "max(2, round(ln L / 2))", "eps": "1/L", "heads": HEADS, "logit_scale": 1.0,
            "lengths": sorted({r["L"] for r in tabs["phase"]}), **tabs, "png": PNG}
