"""The report of ``latentdit rates``: report.md, one plot per claim or check, the attention
criterion section and the summary dictionary, all drawn from the ``analysis`` dictionary.

``analysis["claims"]`` maps a key to an entry with ``kind`` ("claim": a statement of the paper that
the measurement can fail; "check": a property that holds by construction of the code, with ``why``),
``title``, ``theorem``, ``statement``, axis names ``x`` / ``y``, the measured curve ``points``
([x, mean, se] rows), optional ``reference`` curves and per-t ``profiles``, and the statistic: the
fitted ``slope`` and ``ci``, the ``predicted`` exponent and its ``bound`` ("upper" / "lower"), the
``verdict`` with its ``reasons``, ``n_points`` and ``decades``. Claims and checks are reported in
separate sections, so that a check (which passes by construction) is never read as evidence.
"""

from __future__ import annotations

import math
from dataclasses import asdict, is_dataclass
from pathlib import Path

import numpy as np

from latentdit.io import json_safe, save_figure
from latentdit.experiments.rates.plan import PLAN_FIELDS, WALL_TARGET_SECONDS, plan_for

TOP_KEYS = ("d_independence_spread", "sample_complexity_slope_d0_4", "capacity_D_mismatch_max",
            "capacity_D_mismatch_se")
TOP_NOTES = {
    "d_independence_spread": "relative spread of eps_hat over D with W_B = B frozen (implementation check)",
    "sample_complexity_slope_d0_4": "excess-risk slope against n at d0 = 4 (claim)",
    "capacity_D_mismatch_max": "largest relative gap between the capacity curves of the smallest and largest D, "
                               "seed by seed (the same latent law and, with latent noise, the same latent draws). "
                               "With a frozen PCA encoder on noiseless data the latent problem is the same at "
                               "every D, so this checks the ambient parts of the code (PCA at D, eq. 2.5's "
                               "off-subspace term, the evaluation at D); it is not evidence for Thm 3.1",
    "capacity_D_mismatch_se": "that gap in standard errors of the smallest D's seed mean (the seed noise an "
                              "unpaired comparison would face)",
}
ENTRY_KEYS = ("kind", "title", "theorem", "slope", "ci", "predicted", "bound", "verdict", "reasons", "n_points",
              "decades")


def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return str(v) if not math.isfinite(v) else f"{v:.{digits}g}"
    return str(v)


def _ci(e: dict) -> str:
    ci = e.get("ci") or [None, None]
    return f"[{_fmt(ci[0], 3)}, {_fmt(ci[1], 3)}]"


def _positive(xs, ys, es=None):
    keep = [i for i, (x, y) in enumerate(zip(xs, ys))
            if x is not None and y is not None and x > 0 and y > 0 and math.isfinite(y)]
    pick = lambda a: np.array([a[i] for i in keep], float) if a is not None else None  # noqa: E731
    return pick(xs), pick(ys), pick([0.0 if v is None else v for v in es]) if es is not None else None


def plot_entry(key: str, e: dict, path: Path) -> bool:
    """One PNG per entry: the points with standard-error bars on log-log axes, the reference curves,
    guide lines with the predicted and the fitted slope through the points' geometric centre, and
    (in a second panel) the per-t score-error profiles when the entry has them. False if there is
    nothing positive to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = e.get("points") or []
    xs, ys, se = _positive([p[0] for p in pts], [p[1] for p in pts], [p[2] if len(p) > 2 else 0.0 for p in pts])
    if xs is None or not len(xs):
        return False
    profiles = e.get("profiles") or {}
    fig, axes = plt.subplots(1, 2 if profiles else 1, figsize=(10.4 if profiles else 5.2, 3.8))
    ax = axes[0] if profiles else axes
    lo_err = np.minimum(se, ys * 0.999)  # keep the lower bar above zero on a log axis
    ax.errorbar(xs, ys, yerr=[lo_err, se], fmt="o-", color="C0", capsize=3, label="measured (mean, SE)")
    gx, gy = math.exp(np.mean(np.log(xs))), math.exp(np.mean(np.log(ys)))
    grid = np.geomspace(xs.min(), xs.max(), 50) if xs.min() < xs.max() else xs
    guides = ((e.get("predicted"), "k--", "predicted slope"), (e.get("slope"), "C0:", "fitted slope"))
    for slope, style, label in guides:
        if slope is not None and math.isfinite(slope):
            ax.plot(grid, gy * (grid / gx) ** slope, style, lw=1, label=f"{label} {slope:+.3g}")
    for i, (label, curve) in enumerate((e.get("reference") or {}).items()):
        rx, ry, _ = _positive([c[0] for c in curve], [c[1] for c in curve])
        if rx is not None and len(rx):
            ax.plot(rx, ry, "s-.", color=f"C{i + 1}", ms=3, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(e.get("x", "x"))
    ax.set_ylabel(e.get("y", "y"))
    ax.set_title(e.get("title", key), fontsize=9)
    ax.legend(fontsize=7)
    if profiles:
        for i, (label, prof) in enumerate(profiles.items()):
            tx, ty, _ = _positive(prof.get("t", []), prof.get("mse", []))
            if tx is not None and len(tx):
                axes[1].plot(tx, ty, "o-", ms=2, color=f"C{i}", label=label)
        axes[1].set_xscale("log")
        axes[1].set_yscale("log")
        axes[1].set_xlabel("t")
        axes[1].set_ylabel("E||s - grad log p_t||^2")
        axes[1].set_title("per-t score error", fontsize=9)
        axes[1].legend(fontsize=6)
    save_figure(fig, path, dpi=110)
    return True


def _stat_line(e: dict) -> str:
    return (f"slope {_fmt(e.get('slope'), 3)}, 95% CI {_ci(e)}, predicted {_fmt(e.get('predicted'), 3)} "
            f"({e.get('bound', 'upper')} bound), verdict **{e.get('verdict', '-')}**; "
            f"{e.get('n_points', '-')} points over {_fmt(e.get('decades'), 3)} decades")


def _entry_section(key: str, e: dict, out_dir: Path) -> list[str]:
    png = f"{key}.png"
    L = [f"### {e.get('title', key)}", ""]
    if e.get("theorem"):
        L += [f"*{e['theorem']}.* {e.get('statement', '')}", ""]
    elif e.get("statement"):
        L += [e["statement"], ""]
    if e.get("kind") == "check":
        L += [f"**Why it holds by construction.** {e.get('why') or '(not stated)'}", ""]
    L += [f"**Statistic.** {_stat_line(e)}.", ""]
    for r in e.get("reasons") or []:
        L.append(f"- {r}")
    if e.get("reasons"):
        L.append("")
    if plot_entry(key, e, out_dir / png):
        L += [f"![{key}]({png})", ""]
    pts = e.get("points") or []
    if pts:
        refs = list((e.get("reference") or {}).items())
        L += ["| " + " | ".join([e.get("x", "x"), "mean", "SE"] + [r for r, _ in refs]) + " |",
              "|---|---|---|" + "---|" * len(refs)]
        for p in pts:
            cells = []
            for _, curve in refs:
                match = [c[1] for c in curve if c[0] == p[0]]
                cells.append(_fmt(match[0]) if match else "-")
            L.append("| " + " | ".join([_fmt(p[0]), _fmt(p[1]), _fmt(p[2] if len(p) > 2 else None)] + cells) + " |")
        L.append("")
    return L


def _summary_table(entries: list[tuple[str, dict]]) -> list[str]:
    L = ["| key | theorem | slope | 95% CI | predicted | bound | verdict | points | decades |",
         "|---|---|---|---|---|---|---|---|---|"]
    for k, e in entries:
        L.append(f"| {k} | {e.get('theorem', '')} | {_fmt(e.get('slope'), 3)} | {_ci(e)} | "
                 f"{_fmt(e.get('predicted'), 3)} | {e.get('bound', 'upper')} | {e.get('verdict', '-')} | "
                 f"{e.get('n_points', '-')} | {_fmt(e.get('decades'), 3)} |")
    return L + [""]


def attention_section(att: dict | None) -> list[str]:
    """The attention criterion section from :func:`latentdit.experiments.rates.attention_phase.attention_phase`."""
    L = ["## Attention criterion (Prop. 4.1-4.2): phase transition and break-even bound", ""]
    if not isinstance(att, dict):
        return L + ["Not run for this report (see `latentdit.experiments.rates.attention_phase`).", ""]
    L += [f"Head size m = {att['head_size']} (proportional to log L), target relative error {att['eps']}, logits "
          f"without temperature (|logit| <= R = m B^2 for entries bounded by B), cost of {att['heads']} heads "
          "from the library's cost model. Left: the certified error of the largest polynomial degree that is "
          "still predicted cheaper than exact attention, against B / sqrt(ln L), with each L's target dotted. "
          "Right: the break-even bound B*(L), the largest B at which the certificate finds a polynomial "
          "certifying 1/L that is predicted faster than exact, against sqrt(ln L). These are modelled costs and "
          "certified bounds (implementation properties of the method), not timings.", "",
          f"![attention phase transition]({att.get('png', 'attention_phase.png')})", "",
          "| L | m | B* | B* / sqrt(ln L) | R* = m B*^2 | degree | rank | predicted speed-up |",
          "|---|---|---|---|---|---|---|---|"]
    for r in att.get("break_even", []):
        L.append(f"| {r['L']} | {r['m']} | {_fmt(r['B_star'], 3)} | {_fmt(r.get('B_star_over_sqrt_log_L'), 3)} | "
                 f"{_fmt(r['R_star'], 3)} | {_fmt(r['degree'])} | {_fmt(r['rank'])} | "
                 f"{_fmt(r['predicted_speedup'], 3)} |")
    meas = att.get("measured") or []
    if meas:
        L += ["", "Measured check (one head, entries uniform in [-B, B]): the error of the polynomial attention "
              "against exact attention stays within the certified guarantee.", "",
              "| L | m | B | degree | certified guarantee | measured |", "|---|---|---|---|---|---|"]
        for r in meas:
            L.append(f"| {r['L']} | {r['m']} | {_fmt(r['B'], 3)} | {r['degree']} | {_fmt(r['guaranteed'], 3)} | "
                     f"{_fmt(r['measured'], 3)} |")
    return L + [""]


def find_attention_json(explicit: Path | None = None) -> Path | None:
    """The attention benchmark's JSON (``docs/bench/attention.json``) if present. Kept for callers of
    the earlier report; the attention section is now drawn from :func:`attention_phase`'s result."""
    if explicit is not None:
        return explicit if Path(explicit).is_file() else None
    for base in (Path.cwd(), Path(__file__).resolve().parents[3]):
        p = base / "docs" / "bench" / "attention.json"
        if p.is_file():
            return p
    return None


def _own_seeds(plan) -> dict:
    """{plan field: its own seeds} for the sections that do not run the plan's seeds."""
    out = {}
    for f in dict.fromkeys(PLAN_FIELDS.values()):
        own = getattr(getattr(plan, f, None), "seeds", None)
        if own is not None and tuple(own) != tuple(getattr(plan, "seeds", ()) or ()):
            out[f] = list(own)
    return out


def _plan_line(plan) -> str:
    name = getattr(plan, "name", "?")
    seeds = list(getattr(plan, "seeds", []) or [])
    line = f"Mode `{name}`, {len(seeds)} seeds per point"
    own = _own_seeds(plan)
    if own:
        line += (" (" + "; ".join(f"`{f}`: {len(v)} seeds" for f, v in own.items())
                 + f", the {len(seeds)} of the other sections do not fit the plan's time budget there)")
    line += "."
    try:  # a run of a subset of the mode's sections (--sections) says which ones it leaves out
        whole = plan_for(name)
    except ValueError:
        return line
    left = [f for f in dict.fromkeys(PLAN_FIELDS.values())
            if getattr(whole, f) is not None and getattr(plan, f, None) is None]
    if left:
        line += (f" Not in this report: {', '.join(f'`{f}`' for f in left)} (left out with --sections: after "
                 "the sections above, they did not fit the 2-hour budget).")
    return line


def write_report(out_dir, plan, rows: list[dict], analysis: dict, *, meta: dict, attention: dict | None = None) -> Path:
    """Write ``out_dir/report.md`` and one PNG per entry of ``analysis["claims"]``; ``attention`` is
    the result of :func:`~latentdit.experiments.rates.attention_phase.attention_phase` (its PNG
    already in ``out_dir``) or None. Returns the report's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = list((analysis.get("claims") or {}).items())
    claims = [(k, e) for k, e in entries if e.get("kind") == "claim"]
    checks = [(k, e) for k, e in entries if e.get("kind") == "check"]
    L = [f"# Statistical rates of latent DiTs, measured (`{getattr(plan, 'name', '?')}` mode)", "",
         f"Generated by `latentdit rates`. {_plan_line(plan)} Configurations: {meta.get('configs', len(rows))} "
         f"({meta.get('finished', len(rows))} finished, {meta.get('failed', 0)} failed).", "",
         "How to read the verdicts. Each statistic is the mean of per-seed log-log least-squares slopes with its "
         "95% t-interval. The paper's bounds are O-bounds with constants, log factors and (for distances between "
         "sample sets) finite-sample floors, so a slope over a finite range cannot violate them. One-sided t-tests "
         "at 95% give one of four states: *consistent* (the slope is not significantly different from the "
         "predicted exponent), *faster than the bound* (significantly below it), *slower over this range* "
         "(significantly above it), or *untestable*: the runs did not converge, the excess over the floor is "
         "below 3 standard errors, fewer than 4 distinct x, less than 1.5 decades of x, or fewer than 2 seeds. "
         "For an upper bound the claim fails over the range only in the *slower* state.", ""]
    top = analysis.get("top") or {}
    if top:
        L += ["## Headline numbers", ""] + [f"- `{k}`: {_fmt(top.get(k))}: {TOP_NOTES[k]}" for k in TOP_KEYS
                                          if k in top] + [""]
    L += ["## Claims (can fail)", ""]
    L += (_summary_table(claims) if claims else ["No claim was measured.", ""])
    for k, e in claims:
        L += _entry_section(k, e, out_dir)
    L += ["## Implementation checks (hold by construction)", "",
          "These pass because of how the code is built (each says why); they verify the implementation and are "
          "not evidence for the paper's claims.", ""]
    L += (_summary_table(checks) if checks else ["No check was measured.", ""])
    for k, e in checks:
        L += _entry_section(k, e, out_dir)
    L += attention_section(attention)
    tm = meta.get("timing")
    if tm:
        L += ["## Timing", ""] + [f"- {k}: {_fmt(v)}" for k, v in tm.items() if not isinstance(v, (dict, list))] + [""]
        L += _timing_lines(getattr(plan, "name", None), tm, rows)
    fails = meta.get("failures") or []
    if fails:
        L += ["## Failed configurations", ""] + [f"- `{p}`: {m}" for p, m in fails] + [""]
    path = out_dir / "report.md"
    path.write_text("\n".join(L) + "\n")
    return path




def section_costs(rows: list[dict]) -> dict[str, dict]:
    """Per section: finished tasks and the seconds they ran (each task's own time, from the store)."""
    out: dict[str, dict] = {}
    for r in rows:
        c = out.setdefault(r.get("section", "?"), {"tasks": 0, "task_seconds": 0.0})
        c["tasks"] += 1
        c["task_seconds"] += float(r.get("seconds") or 0.0)
    return out


def _timing_lines(mode, tm: dict, rows: list[dict]) -> list[str]:
    """The wall time against the mode's target, and where the task time went, section by section."""
    L = []
    target, wall = WALL_TARGET_SECONDS.get(mode), tm.get("wall_seconds")
    if target and isinstance(wall, (int, float)):
        bound = " (a lower bound)" if tm.get("wall_is_lower_bound") else ""
        verdict = "within" if wall <= target else f"over by {wall - target:.0f} s"
        L += [f"Wall time {wall:.0f} s{bound} against the `{mode}` plan's target of {target} s: {verdict}.", ""]
    costs = section_costs(rows)
    total = sum(c["task_seconds"] for c in costs.values()) or 1.0
    L += ["| section | tasks | task seconds | share | mean per task |", "|---|---|---|---|---|"]
    L += [f"| {k} | {c['tasks']} | {c['task_seconds']:.0f} | {c['task_seconds'] / total:.0%} | "
          f"{c['task_seconds'] / max(c['tasks'], 1):.0f} |" for k, c in costs.items()] + [""]
    return L


def summary_dict(analysis: dict, plan, meta: dict, attention: dict | None = None) -> dict:
    """summary.json's content: per entry ``kind``, ``title``, ``theorem``, ``slope``, ``ci``,
    ``predicted``, ``bound``, ``verdict``, ``reasons``, ``n_points``, ``decades``; the headline numbers
    of ``analysis["top"]`` at the top level; the plan's mode, seeds and budget; ``meta``; and the
    break-even bounds of the attention section when given. Non-finite floats become None."""
    claims = {k: {f: e.get(f) for f in ENTRY_KEYS} for k, e in (analysis.get("claims") or {}).items()}
    top = analysis.get("top") or {}
    budget = getattr(plan, "budget", None)
    out = {"mode": getattr(plan, "name", None), "seeds": list(getattr(plan, "seeds", []) or []),
           "section_seeds": _own_seeds(plan), "budget": asdict(budget) if is_dataclass(budget) else budget, "claims": claims,
           **{k: top.get(k) for k in TOP_KEYS}, "meta": meta}
    if isinstance(attention, dict):
        out["attention"] = {"head_size": attention.get("head_size"), "eps": attention.get("eps"),
                            "break_even": [{k: r.get(k) for k in ("L", "m", "B_star", "R_star", "degree", "rank")}
                                           for r in attention.get("break_even", [])]}
    return json_safe(out)
