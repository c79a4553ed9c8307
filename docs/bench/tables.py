"""Print the measured tables of docs/ as markdown, straight from their committed JSONs.

    python docs/bench/tables.py attention docs/bench/attention.json
    python docs/bench/tables.py dit docs/bench/dit.json
    python docs/bench/tables.py efficient docs/efficient
    python docs/bench/tables.py ablation docs/bench/ablation_d64.json

Every number in the tables of docs/attention.md, docs/efficient-dit.md and docs/demo.md is pasted
from this script's output, so none is typed by hand. It reads JSON only; nothing is measured here.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def g(x, digits: int = 3) -> str:
    """A number to ``digits`` significant digits; '-' for a missing value."""
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, str):
        return x
    return f"{x:.{digits}g}"


def row(*cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def header(*names) -> list[str]:
    return [row(*names), row(*(["---"] * len(names)))]


def load(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def attention(path: Path) -> list[str]:
    d = load(path)
    out: list[str] = []
    res = d["results"]
    for hd in sorted({r["head_dim"] for r in res}):
        for ps, title in (("fwd", "forward"), ("fwdbwd", "forward + backward")):
            rows = {(r["method"], r["L"]): r for r in res if r["head_dim"] == hd and r["pass"] == ps}
            if not rows:
                continue
            bound = next(c["logit_bound"] for c in d["setting"]["configs"] if c["head_dim"] == hd)
            out += ["", f"**Head size {hd}, |logit| <= {g(bound)}, {title}** (median seconds; rel. error vs float64 "
                        "exact; `*` = exact extrapolated)", ""]
            out += header("L", "exact [s]", "poly [s]", "FAVOR+ [s]", "speed-up poly", "poly rel. error",
                          "FAVOR+ rel. error")
            for L in sorted({k[1] for k in rows}):
                e, p, f = rows.get(("exact", L)), rows.get(("poly", L)), rows.get(("performer", L))
                star = "*" if e and e.get("extrapolated") else ""
                sp = e["median_s"] / p["median_s"] if e and p else None
                out.append(row(f"{L:,}", (g(e["median_s"]) + star) if e else "-", g(p["median_s"]) if p else "-",
                               g(f["median_s"]) if f else "-", (g(sp) + star) if sp else "-",
                               g(p.get("rel_error"), 2) if p else "-", g(f.get("rel_error"), 2) if f else "-"))
    pt = d.get("phase_transition")
    if pt:
        out += ["", f"**Phase transition** (head size {pt['head_dim']}, eps = {g(pt['eps'])}; fixed degree fitted "
                    f"for |logit| <= {g(pt['fixed_degree_fitted_for'])})", ""]
        out += header("L", "max abs logit", "entry bound / sqrt(log L)", "rel. error, fixed degree",
                      "fixed-degree error bound", "certified degree (rank)", "rel. error, certified",
                      "predicted speed-up", "criterion")
        for r in pt["rows"]:
            out.append(row(f"{r['L']:,}", g(r["bound"]), g(r["entry_ratio"], 2), g(r["rel_error_fixed_degree"], 2),
                           g(r["fixed_error_bound"], 2), f"{r['certified_degree']} ({r['certified_rank']:,})",
                           g(r["rel_error_certified"], 2), g(r["predicted_speedup"]),
                           "poly" if r["criterion_ok"] else "exact"))
    out += ["", "Summary keys:", ""] + header("key", "value")
    for k in sorted(k for k in d if k.startswith(("speedup", "rel_error", "exponent"))):
        out.append(row(f"`{k}`", g(d[k])))
    prov = d["provenance"]
    out += ["", f"Load average before {prov['loadavg_before']}, after {prov['loadavg_after']}; "
                f"{prov['threads']} thread(s); wall {g(prov['seconds'] / 60)} min; commit {prov['git_commit'][:7]}."]
    return out


def _slope(pts: list[tuple[float, float]]) -> float:
    """Least-squares slope of log t against log L."""
    xs, ys = [math.log(a) for a, _ in pts], [math.log(b) for _, b in pts]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def dit(path: Path) -> list[str]:
    d = load(path)
    modes = [m for m in ("exact", "poly", "relu_linear", "none")
             if any(k.startswith(m + "_") for r in d["lengths"] for k in r["median_s"])]  # older records lack none
    out = header("L", *(f"{m} fwd" for m in modes), *(f"{m} train step" for m in modes), "poly speed-up fwd / train")
    for r in d["lengths"]:
        med, ext = r["median_s"], r.get("extrapolated", False)
        cells = []
        for op in ("fwd", "train"):
            for m in modes:
                v = med.get(f"{m}_{op}")
                cells.append("-" if v is None else f"{g(v)} s" + ("*" if m == "exact" and ext else ""))
        out.append(row(f"{r['L']:,}", *cells, f"x{g(r.get('speedup_forward'))} / x{g(r.get('speedup_train'))}"
                       + (" (exact extrapolated)" if ext else "")))
    mem = [r for r in d["lengths"] if r.get("peak_memory_bytes")]
    if mem:
        keys = [k for k in mem[0]["peak_memory_bytes"]]
        out += ["", "Peak memory (extra RSS of one operation in a fresh process, MiB):", ""] + header("L", *keys)
        for r in mem:
            pm = r["peak_memory_bytes"]
            out.append(row(f"{r['L']:,}", *("-" if pm.get(k) is None else g(pm[k] / 2 ** 20) for k in keys)))
    out += ["", "Least-squares exponents of time against L (measured lengths only):", ""]
    Ls = [r["L"] for r in d["lengths"]]
    spans = [Ls[i:j] for i, j in ((0, len(Ls)), (0, len(Ls) - 1), (len(Ls) - 3, len(Ls)), (len(Ls) - 2, len(Ls)))
             if j - i >= 2]
    names = [f"{m}_{op}" for m in modes for op in ("fwd", "train")]
    out += header("lengths", *names)
    for span in dict.fromkeys(tuple(x) for x in spans):
        rows = [r for r in d["lengths"] if r["L"] in span]
        cells = []
        for k in names:
            pts = [(r["L"], r["median_s"].get(k)) for r in rows if not (k.startswith("exact") and r.get("extrapolated"))]
            pts = [(a, b) for a, b in pts if b is not None]
            cells.append(g(_slope(pts)) if len(pts) >= 2 else "-")
        out.append(row(f"{span[0]:,}-{span[-1]:,}", *cells))
    out += ["", "Summary keys:", ""] + header("key", "value")
    for k in sorted(k for k in d if k.startswith(("speedup", "rel_error", "exponent", "extrapolated"))):
        out.append(row(f"`{k}`", g(d[k])))
    prov = d["provenance"]
    out += ["", f"Load average before {prov['loadavg_before']}, after {prov['loadavg_after']}; "
                f"{prov['threads']} thread(s); wall {g(prov['seconds'] / 60)} min; commit {prov['git_commit'][:7]}."]
    return out


SUMMARY_KEYS = ("gt_plan", "gt_tokens", "gt_score_ratio_vs_no_attention", "gt_score_ratio_vs_f0", "gt_w2_excess_ratio_vs_no_attention",
                "gt_train_seconds", "gt_beats_init_every_t", "poly_exact_ratio_1024", "operator_swap_change",
                "gt_relu_linear_swap_change")


def efficient(folder: Path) -> list[str]:
    """The stationary long-sequence experiment (``python -m latentdit.experiments.efficient --out
    docs/efficient``): its ``models.json`` (one record per model and operator) and the headline keys
    of ``summary.json``; "pending run" for a file that is not there yet."""
    out: list[str] = []
    models, summary = Path(folder) / "models.json", Path(folder) / "summary.json"
    out += ["", f"Models, `{models}`:", ""]
    if models.is_file():
        m = load(models)
        out += header("model", "tokens", "evaluated with", "steps", "train [s]", "score integral", "score rel. error",
                      "W2 excess", "beats F = 0 at every t")
        for r in m["models"]:
            out.append(row(r["model"], f"{r['tokens']:,}", r["evaluated_with"], g(r.get("steps")),
                           g(r.get("train_seconds")), g(r.get("score_integral"), 4), g(r.get("score_rel_error"), 4),
                           g(r.get("w2_excess"), 3), g(r.get("beats_init_every_t"))))
        prov = m.get("provenance", {})
        if prov:
            out.append(f"\nCommit {str(prov.get('git_commit', '-'))[:7]}; load before {prov.get('loadavg_before')}, "
                       f"after {prov.get('loadavg_after')}.")
    else:
        out.append("pending run")
    out += ["", f"Summary, `{summary}`:", ""]
    if summary.is_file():
        s = load(summary)
        out += header("key", "value")
        for k in SUMMARY_KEYS:
            if k in s:
                out.append(row(f"`{k}`", g(s[k], 4)))
    else:
        out.append("pending run")
    return out


def ablation(path: Path) -> list[str]:
    d = load(path)
    out = header("setting", "guidance", "final Tweedie step", "sampler (steps)", "FID", "clf FD", "accuracy", "var q4")
    for name, r in d["settings"].items():
        out.append(row(f"`{name}`", g(r["guidance"]), g(r["denoise"]), f"{r['sampler']} ({r['steps']})",
                       g(r.get("fid"), 4), g(r.get("classifier_fd"), 3), g(r.get("classifier_accuracy"), 3),
                       g(r["var_ratio_quarters"][3], 3)))
    return out


def sampler_demo(path: Path) -> list[str]:
    """The trained model at a handful of NFE (``latentdit bench sampler --export``): one row per sampler
    and budget, the reference (the export's sampler at 30 steps) first; the best of each kind in bold."""
    d = load(path)
    key = d["ranked_by"]
    out = header("NFE", "kind", "sampler", "grid", "FID" if key == "fid" else "clf FD", "clf FD", "accuracy")
    for r in sorted(d["rows"], key=lambda r: (r["kind"] != "reference", r["nfe"], r["kind"], r[key])):
        b = "**" if any(r == x for x in d["best"].values()) else ""
        out.append(row(r["nfe"], r["kind"], r["sampler"], r.get("grid", "own"), f"{b}{g(r[key], 4)}{b}",
                       g(r["classifier_fd"], 3), g(r.get("classifier_accuracy"), 3)))
    gaps = {k: v for k, v in d["best"].items() if k.startswith("gap")}
    out += ["", "Gap of the best latentdit row to the reference: "
            + ", ".join(f"{k.split('_')[-1]} NFE {g(v, 3)}" for k, v in gaps.items())]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kind", choices=["attention", "dit", "efficient", "ablation", "sampler_demo"])
    ap.add_argument("path", type=Path)
    a = ap.parse_args()
    kinds = {"attention": attention, "dit": dit, "efficient": efficient, "ablation": ablation, "sampler_demo": sampler_demo}
    print("\n".join(kinds[a.kind](a.path)))


if __name__ == "__main__":
    main()
