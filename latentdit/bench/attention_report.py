"""Report of ``latentdit bench attention``: the headline figures (speed-ups, errors, fitted
exponents) and the PNG of the timing and phase-transition sweeps of
:mod:`latentdit.bench.attention_sweep`.
"""

from __future__ import annotations

from pathlib import Path

from latentdit.fits import loglog_slope
from latentdit.io import save_figure
from latentdit.bench.attention_sweep import CONFIGS, HEADS, METHODS


def fit_exponent(Ls: list[int], ts: list[float]) -> float | None:
    if len(Ls) < 2:
        return None
    return loglog_slope(Ls, ts)[0]


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
    save_figure(fig, path, dpi=110)


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


def summarize(data: dict) -> dict:
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
    for m in (4, 8):  # the share of the machine's matmul rate the poly GEMMs reach (fwd, fwd+bwd)
        for pas in ("fwd", "fwdbwd"):
            p = med("poly", Lmid, m, pas)
            key = f"fraction_of_matmul_probe_{pas}_16384" + ("_head8" if m == 8 else "")
            out[key] = None if p is None else p.get("fraction_of_matmul_probe")
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
