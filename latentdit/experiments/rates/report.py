"""The report of ``latentdit rates``: report.md with one plot and table per claim, the attention
phase-transition section (from the attention benchmark's JSON) and the summary dictionary."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np

from latentdit.experiments.rates.claims import CLAIMS, Claim, rows_for
from latentdit.experiments.rates.plan import Plan, config_key


def _plot_claim(entry: dict, c: Claim, rows: list[dict], plan: Plan, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    param, sel = rows_for(rows, plan, c.sweep)
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    xs = np.array([p["x"] for p in entry["points"]], float)
    ms = np.array([p["mean"] for p in entry["points"]], float)
    pos = [r for r in sel if r.get(c.metric) is not None and r[c.metric] > 0]
    ax.scatter([r[param] for r in pos], [r[c.metric] for r in pos], s=12, alpha=0.5, label="per seed")
    if len(xs) and np.all(ms > 0):
        ax.plot(xs, ms, "o-", color="C0", label=f"mean, slope {entry['measured_slope']:.3f}")
        gx, gy = np.exp(np.mean(np.log(xs))), np.exp(np.mean(np.log(ms)))
        ax.plot(xs, gy * (xs / gx) ** c.predicted, "k--", label=f"predicted exponent {c.predicted:+.3g}")
    refs = [p["reference"] for p in entry["points"]]
    if c.reference and all(r is not None and r > 0 for r in refs) and refs:
        lab = "expected 1 - exp(-T0)" if c.kind == "equal" else f"{c.reference}"
        ax.plot(xs, refs, "s:", color="C3", label=lab)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(c.xlabel)
    ax.set_ylabel(c.ylabel)
    ax.set_title(c.title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}"
    return str(v)


def find_attention_json(explicit: Path | None = None) -> Path | None:
    if explicit is not None:
        return explicit if explicit.is_file() else None
    for base in (Path.cwd(), Path(__file__).resolve().parents[3]):
        p = base / "docs" / "bench" / "attention.json"
        if p.is_file():
            return p
    return None


def attention_section(path: Path | None, out_dir: Path) -> list[str]:
    lines = ["## Attention phase transition (Sec. 6, from the attention benchmark)", ""]
    if path is None:
        lines += ["`docs/bench/attention.json` was not found when this report was written; run "
                  "`latentdit bench attention --out docs/bench/attention.json` and rerun `latentdit rates` "
                  "(finished configurations are reused) to include it.", ""]
        return lines
    try:
        data = json.loads(path.read_text())
        rows = (data.get("phase_transition") or {}).get("rows") or []
    except (OSError, json.JSONDecodeError, AttributeError) as e:
        return lines + [f"`{path}` could not be read ({e}).", ""]
    if not rows:
        return lines + [f"`{path}` holds no phase-transition rows.", ""]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    for L in sorted({r.get("L") for r in rows}):
        rs = sorted((r for r in rows if r.get("L") == L), key=lambda r: r.get("true_max_logit", 0))
        xs = [r.get("true_max_logit") for r in rs]
        ys = [r.get("rel_error_fixed_degree") for r in rs]
        if all(v is not None and v > 0 for v in ys):
            ax.plot(xs, ys, "o-", label=f"L={L}, fixed degree")
    ax.set_yscale("log")
    ax.set_xlabel("max |logit|")
    ax.set_ylabel("relative error")
    ax.set_title("Polynomial attention: error vs entry bound", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "attention_phase.png", dpi=110)
    plt.close(fig)
    cols = [k for k in ("L", "bound", "true_max_logit", "rel_error_fixed_degree", "certified_degree",
                        "certified_rank", "rel_error_certified", "criterion_ok") if k in rows[0]]
    lines += [f"Source: `{path}`. A polynomial of fixed degree keeps a small error while the entries stay "
              "bounded and breaks down as max |logit| grows (the o(sqrt(log L)) criterion).", "",
              "![attention phase transition](attention_phase.png)", "",
              "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(k)) for k in cols) + " |")
    return lines + [""]


def write_report(out_dir: Path, plan: Plan, rows: list[dict], analysis: dict, *, meta: dict,
                 attention: Path | None = None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    b = plan.budget
    L = [f"# Statistical rates of latent DiTs, measured (`{plan.name}` mode)", "",
         "Generated by `latentdit rates`. Ground truth: x = B h in R^D, h a Gaussian mixture in R^d0 with "
         f"{plan.components} components; the latent law depends only on (d0, seed), B on (D, d0, seed). "
         f"Seeds per point: {len(plan.seeds)}. Encoder: PCA of the n training points (signs fixed by the data), "
         "frozen. Network: practical DiT block, EDM weighting, "
         f"hidden {b.hidden}, depth {b.depth}, {b.steps} AdamW steps of batch {b.batch_size} for every "
         "configuration (fixed budget: each sweep varies only its own quantity; at large n the score error is "
         "limited by optimisation as much as by n). Evaluation: score errors on "
         f"{b.score_times} log-spaced times in [T0, {b.T}] with {b.score_points} points each; "
         f"{b.eval_samples} samples from DPM-Solver++(2M) with {b.sample_steps} steps.", "",
         f"Base point: D = {plan.base_D}, d0 = {plan.base_d0}, n = {plan.base_n}, T0 = {plan.base_T0}. "
         f"Configurations: {meta.get('configs')} ({meta.get('finished')} finished, {meta.get('failed', 0)} failed); "
         f"workers: {meta.get('workers')}.", "",
         "Verdicts compare the 95% t-interval of the per-seed log-log slopes with the predicted exponent, read "
         "as an upper bound on the growth rate: interval below it = *tighter than the bound*, containing it = "
         "*consistent*, above it = *violated*. The paper's bounds carry constants and log factors (and a "
         "double-exponential factor in Thm 3.2), so only exponents are compared.", ""]
    tm = meta.get("timing")
    if tm:
        L += ["## Timing", "", f"Wall-clock of the sweep: {tm['wall_seconds']:.0f} s on {tm['cpus']} CPU cores "
              f"shared with other jobs (pessimistic: the machine's load average was far above its core count). "
              f"Per configuration: mean {tm['mean_config_seconds']:.1f} s wall "
              f"(train {tm['mean_train_seconds']:.1f} s, evaluation {tm['mean_eval_seconds']:.1f} s)."]
        if tm.get("cpu_seconds"):
            L += ["", f"CPU time of the sweep (all processes): {tm['cpu_seconds']:.0f} s, i.e. about "
                  f"{tm['cpu_seconds'] / max(1, min(meta.get('workers') or 1, tm['cpus'] or 1)):.0f} s of wall-clock on "
                  f"{min(meta.get('workers') or 1, tm['cpus'] or 1)} otherwise idle cores."]
        if tm.get("full_estimate_seconds"):
            idle = tm.get("full_estimate_idle_seconds")
            L += ["", f"Full-run estimate (`latentdit rates --out DIR`, {tm['full_configs']} configurations, "
                  f"{tm['full_workers']} workers; measured by timing the full budget on one configuration per d0): "
                  + (f"{idle / 3600:.2f} h on {tm['full_workers']} idle cores (from CPU time); " if idle else "")
                  + f"{tm['full_estimate_seconds'] / 3600:.2f} h at this run's wall-clock speed. "
                  f"{tm.get('full_estimate_detail', '')}"]
        L.append("")
    L += ["## Summary", "", "| claim | metric | predicted exponent | measured slope | 95% interval | verdict |",
          "|---|---|---|---|---|---|"]
    for c in CLAIMS:
        e = analysis[c.key]
        L.append(f"| {c.key} | {c.metric} | {c.predicted:+.3g} | {_fmt(e['measured_slope'])} | "
                 f"[{_fmt(e['interval'][0])}, {_fmt(e['interval'][1])}] | {e['verdict']} |")
    L += ["", f"D-independence spread (max / min - 1 of the mean sigma-scaled score error across D = "
          f"{list(plan.D_values)}): **{analysis.get('d_independence_spread', float('nan')):.3f}** (target <= 0.15).", ""]
    for c in CLAIMS:
        e = analysis[c.key]
        png = f"{c.key}.png"
        _plot_claim(e, c, rows, plan, out_dir / png)
        param = e["parameter"]
        fixed = {k: v for k, v in {"D": plan.base_D, "d0": plan.tv_d0 if c.sweep == "tv" else plan.base_d0,
                                   "n": plan.base_n, "T0": plan.base_T0}.items() if k != param}
        L += [f"## {c.title}", "", f"**Claim.** {c.claim}", "",
              f"**Setting.** `{c.metric}` against {param} in {[p['x'] for p in e['points']]} with "
              + ", ".join(f"{k} = {v}" for k, v in fixed.items()) + f"; {len(plan.seeds)} seeds.", "",
              f"![{c.key}]({png})", "",
              f"| {param} | mean | sd | seeds | " + (f"{c.reference} | " if c.reference else "")
              + "score_rel_error |", "|---|---|---|---|" + ("---|" if c.reference else "") + "---|"]
        for p in e["points"]:
            L.append(f"| {_fmt(p['x'])} | {_fmt(p['mean'])} | {_fmt(p['sd'])} | {p['seeds']} | "
                     + (f"{_fmt(p['reference'])} | " if c.reference else "") + f"{_fmt(p['score_rel_error'])} |")
        L += ["", f"**Measured slope.** {_fmt(e['measured_slope'])}, 95% interval "
              f"[{_fmt(e['interval'][0])}, {_fmt(e['interval'][1])}] (per-seed slopes "
              f"{', '.join(_fmt(s) for s in e['seed_slopes'])}); predicted exponent {c.predicted:+.4g}.", "",
              f"**Verdict.** {e['verdict']}."]
        if c.key == "score_vs_D":
            L.append(f" Spread across D: {e.get('d_independence_spread', float('nan')):.3f} (target <= 0.15).")
        for note in e["notes"]:
            L += ["", f"Note: {note}."]
        if c.reference and c.kind != "equal":
            L += ["", f"`{c.reference}` is shown beside the metric: for W2/TV it is the same estimator applied to "
                  "two independent true sample sets of the same size (the finite-sample floor); a measured value "
                  "at that floor cannot fall further with n."]
        L.append("")
    L += attention_section(attention, out_dir)
    fails = meta.get("failures") or []
    if fails:
        L += ["## Failed configurations", ""] + [f"- `{config_key(p)}`: {m}" for p, m in fails] + [""]
    (out_dir / "report.md").write_text("\n".join(L) + "\n")


def summary_dict(analysis: dict, plan: Plan, meta: dict) -> dict:
    claims = {}
    for c in CLAIMS:
        e = analysis[c.key]
        claims[c.key] = {"metric": c.metric, "parameter": e["parameter"], "measured_slope": e["measured_slope"],
                         "interval": e["interval"], "predicted_exponent": c.predicted, "verdict": e["verdict"],
                         "points": e["points"], **({"ratio_mean": e["ratio_mean"], "ratio_range": e["ratio_range"]}
                                                   if "ratio_mean" in e else {})}
    return {"mode": plan.name, "seeds": list(plan.seeds), "budget": asdict(plan.budget), "claims": claims,
            "d_independence_spread": analysis.get("d_independence_spread"), "meta": meta}
