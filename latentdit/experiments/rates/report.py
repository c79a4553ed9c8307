"""The report of ``latentdit rates``: report.md, one plot per entry, the attention criterion
section and summary.json, rebuilt from the rows file alone by :func:`build_report` (the same bytes
for the same rows: no clock, no absolute path; the session's provenance is a line of the rows).

``analysis["claims"]`` maps a key to an entry with ``kind`` ("claim": a statement of the paper that
the measurement can fail; "check": a property that holds by construction of the code, with ``why``),
``title``, ``theorem``, ``statement``, axis names ``x`` / ``y``, the measured curve ``points``
([x, mean, se] rows), optional ``reference`` curves and per-t ``profiles``, and the statistic: the
fitted ``slope`` and ``ci``, the ``predicted`` exponent and its ``bound`` ("upper" / "lower"), the
``verdict`` with its ``reasons`` and ``holds``, ``n_points`` and ``decades``, the model-based fit
``power_fit`` where the entry has one. Claims, checks and diagnostics are reported in separate
sections, so that a check (which passes by construction) is never read as evidence; every claim
prints how it could fail other than by optimisation.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, is_dataclass
from pathlib import Path

from latentdit.experiments.rates.attention_phase import from_rows
from latentdit.experiments.rates.claims import analyse
from latentdit.experiments.rates.headline import TOP_KEYS, TOP_NOTES
from latentdit.experiments.rates.plan import PLAN_FIELDS, WALL_TARGET_SECONDS, config_key, plan_for, tasks
from latentdit.experiments.rates.plots import plot_entry
from latentdit.experiments.rates.preregistration import CHANGES, PLAN_VERSION
from latentdit.experiments.rates.rows import plan_from_rows
from latentdit.io import atomic_write_text, json_safe

ENTRY_KEYS = ("kind", "title", "theorem", "slope", "ci", "predicted", "bound", "verdict", "holds", "reasons",
              "failure", "n_points", "decades", "dropped_points", "convergence", "power_fit", "local_slopes",
              "curvature")
SECTION_TITLES = (("claim", "Claims (can fail)", "Each claim says how it could fail for a reason other than "
                   "optimisation."),
                  ("check", "Implementation checks (hold by construction)", "These pass because of how the code "
                   "is built (each says why); they verify the implementation and are not evidence for the "
                   "paper's claims."),
                  ("diagnostic", "Diagnostics (describe training, not the paper)", "Reported for reading the runs; "
                   "each says why it is not a test of the paper."))


def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return str(v) if not math.isfinite(v) else f"{v:.{digits}g}"
    return str(v)


def _ci(e: dict) -> str:
    ci = e.get("ci") or [None, None]
    return f"[{_fmt(ci[0], 3)}, {_fmt(ci[1], 3)}]"


def _holds(e: dict) -> str:
    h = e.get("holds")
    return "untestable" if h is None else ("yes" if h else "no")


def _stat_line(e: dict) -> str:
    return (f"slope {_fmt(e.get('slope'), 3)}, 95% CI {_ci(e)}, predicted {_fmt(e.get('predicted'), 3)} "
            f"({e.get('bound', 'upper')} bound), verdict **{e.get('verdict', '-')}**, bound holds: {_holds(e)}; "
            f"{e.get('n_points', '-')} points over {_fmt(e.get('decades'), 3)} decades")


def _fit_lines(e: dict) -> list[str]:
    """The model-based fit, the dropped points, the local slopes, the curvature test, convergence."""
    L = []
    f = e.get("power_fit")
    if f:
        L.append(f"**Model fit** y = a + b x^-p on the seed means of `{e.get('raw_y', 'y')}`: p = {_fmt(f['p'], 3)}, "
                 f"{100 * f.get('level', 0.95):g}% bootstrap interval [{_fmt(f['p_ci'][0], 3)}, {_fmt(f['p_ci'][1], 3)}] "
                 f"({f['resamples']} resamples over {f['n_seeds']} seeds), floor a = {_fmt(f['a'], 3)} "
                 f"[{_fmt(f['a_ci'][0], 3)}, {_fmt(f['a_ci'][1], 3)}], rms relative residual {_fmt(f['rms_rel'], 3)}; "
                 f"points left out (y <= 0 or not finite): {f['dropped']}.")
    L.append(f"**Points left out of the log-log slope** (y <= 0 or not finite): {e.get('dropped_points', 0)}.")
    loc = e.get("local_slopes") or []
    if loc:
        L.append("**Local slopes** of the seed means: " + ", ".join(
            f"{_fmt(a)}-{_fmt(b)}: {_fmt(s, 3)}" for a, b, s in loc) + ".")
    c = e.get("curvature") or {}
    if c.get("k", 0) >= 4:
        L.append(f"**Curvature** (F-test, log-log line against quadratic, {c['k']} seed means): F = {_fmt(c['F'], 3)}, "
                 f"p-value {_fmt(c['p_value'], 3)}, quadratic coefficient {_fmt(c['curvature'], 3)}.")
    cv = e.get("convergence")
    if cv:
        L.append(f"**Convergence** ({cv.get('rule')}): {'yes' if cv.get('converged') else 'no'}; {cv.get('detail')}.")
    return [x for line in L for x in (line, "")]


def _entry_section(key: str, e: dict, out_dir: Path) -> list[str]:
    png = f"{key}.png"
    L = [f"### {e.get('title', key)}", ""]
    if e.get("theorem"):
        L += [f"*{e['theorem']}.* {e.get('statement', '')}", ""]
    elif e.get("statement"):
        L += [e["statement"], ""]
    if e.get("kind") == "claim":
        L += [f"**How it could fail other than by optimisation.** {e.get('failure') or '(not stated)'}", ""]
    elif e.get("kind") == "check":
        L += [f"**Why it holds by construction.** {e.get('why') or '(not stated)'}", ""]
    else:
        L += [f"**Why this is a diagnostic.** {e.get('why') or e.get('failure') or '(not stated)'}", ""]
    L += [f"**Statistic.** {_stat_line(e)}.", ""] + _fit_lines(e)
    for r in e.get("reasons") or []:
        L.append(f"- {r}")
    if e.get("reasons"):
        L.append("")
    if plot_entry(key, e, out_dir / png):
        L += [f"![{key}]({png})", ""]
    pts = e.get("points") or []
    if pts:
        refs = list((e.get("reference") or {}).items()) + list((e.get("raw") or {}).items()) + \
            list((e.get("columns") or {}).items())
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
    L = ["| key | theorem | slope | 95% CI | model p [interval] | predicted | bound | verdict | holds | points | "
         "decades |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for k, e in entries:
        f = e.get("power_fit")
        p = f"{_fmt(f['p'], 3)} [{_fmt(f['p_ci'][0], 3)}, {_fmt(f['p_ci'][1], 3)}]" if f else "-"
        L.append(f"| {k} | {e.get('theorem', '')} | {_fmt(e.get('slope'), 3)} | {_ci(e)} | {p} | "
                 f"{_fmt(e.get('predicted'), 3)} | {e.get('bound', 'upper')} | {e.get('verdict', '-')} | {_holds(e)} | "
                 f"{e.get('n_points', '-')} | {_fmt(e.get('decades'), 3)} |")
    return L + [""]


def attention_section(att: dict | None) -> list[str]:
    """The attention criterion section from :func:`latentdit.experiments.rates.attention_phase.attention_phase`."""
    L = ["## Attention criterion (Prop. 4.1-4.2) in the theorem's units", ""]
    if not isinstance(att, dict):
        return L + ["Not run for this report (see `latentdit.experiments.rates.attention_phase`).", ""]
    L += [f"Head size m = {att['head_size']} (proportional to log L), target relative error {att['eps']}, logits "
          "without temperature, bounded by R; c = R / ln L is the unit of the criterion (Alman and Song's "
          "|logit| <= B^2 = o(log L)). Left: the rank exponent log_L C(m + g, g) of the certified degree g "
          "against c for each L (1: no better than quadratic); hollow points: the rank passes MAX_RANK; points "
          "with no certified degree <= MAX_DEGREE are left out. Middle: the certified error of the largest "
          "degree the cost model still prefers, against B / sqrt(ln L). Right: c* = R* / ln L at the break-even "
          f"bound, hollow where MAX_RANK or MAX_DEGREE sets it. Modelled costs of {att['heads']} heads and "
          "certified bounds, not timings.", "",
          f"![attention phase transition]({att.get('png', 'attention_phase.png')})", "",
          "| L | m | B* | B* / sqrt(ln L) | R* = m B*^2 | degree | rank | predicted speed-up | c* = R* / ln L | set by |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for r in att.get("break_even", []):
        L.append(f"| {r['L']} | {r['m']} | {_fmt(r['B_star'], 3)} | {_fmt(r.get('B_star_over_sqrt_log_L'), 3)} | "
                 f"{_fmt(r['R_star'], 3)} | {_fmt(r['degree'])} | {_fmt(r['rank'])} | "
                 f"{_fmt(r['predicted_speedup'], 3)} | {_fmt(r.get('c_star'), 3)} | {r.get('limit', '-')} |")
    L += _exponent_table(att.get("exponents") or [])
    meas = att.get("measured") or []
    if meas:
        L += ["", "Measured check (one head, entries uniform in [-B, B]): the error of the polynomial attention "
              "against exact attention stays within the certified guarantee.", "",
              "| L | m | B | degree | certified guarantee | measured |", "|---|---|---|---|---|---|"]
        for r in meas:
            L.append(f"| {r['L']} | {r['m']} | {_fmt(r['B'], 3)} | {r['degree']} | {_fmt(r['guaranteed'], 3)} | "
                     f"{_fmt(r['measured'], 3)} |")
    return L + [""]


def _exponent_table(rows: list[dict]) -> list[str]:
    """Per L: the rank exponent at the smallest c, and the smallest c at which it reaches 1 (no
    better than quadratic) among the points no cap binds; "-" when it does not within the grid."""
    if not rows:
        return []
    L = ["", "| L | m | smallest c | rank exponent there | first c with exponent >= 1 | c capped from |",
         "|---|---|---|---|---|---|"]
    for n in sorted({r["L"] for r in rows}):
        rs = sorted((r for r in rows if r["L"] == n), key=lambda r: r["c"])
        free = [r for r in rs if r["capped"] is None]
        one = [r["c"] for r in free if r["rank_exponent"] >= 1.0]
        cap = [r["c"] for r in rs if r["capped"] is not None]
        L.append(f"| {n} | {rs[0]['m']} | {_fmt(rs[0]['c'], 3)} | {_fmt(rs[0]['rank_exponent'], 3)} | "
                 f"{_fmt(one[0], 3) if one else '-'} | {_fmt(cap[0], 3) if cap else '-'} |")
    return L


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


def _conv_d0(v: dict) -> str:
    """The d0 whose curves all stopped before the step cap, and whether the claim holds on them."""
    if "converged_d0" not in v:
        return ""
    h = v.get("holds")
    return (f"; converged curves at d0 = {v['converged_d0'] or 'none'}; "
            f"holds: {'untestable' if h is None else 'yes' if h else 'no'}")


def _headline_value(v) -> str:
    """A headline number in one line: a float, or a measured/absent dict of a version-2 key."""
    if not isinstance(v, dict):
        return _fmt(v)
    if v.get("status") == "absent":
        if v.get("reason"):
            return f"absent (too few rows to fit: {v['reason']}; {v.get('source', '')})"
        return "absent (the rows this key reads are not in this run)"
    if "p" in v:
        rl = v.get("random_law")
        other = (f"; random laws: p = {_fmt(rl['p'], 3)} [{_fmt(rl['p_ci'][0], 3)}, {_fmt(rl['p_ci'][1], 3)}] over "
                 f"{rl['n_seeds']} seeds" if rl else "")
        conv = v.get("convergence") or {}
        why = f", {conv.get('detail')}" if conv and not conv.get("converged") else ""
        return (f"p = {_fmt(v['p'], 3)} [{_fmt(v['p_ci'][0], 3)}, {_fmt(v['p_ci'][1], 3)}] ({v['source']}; "
                f"holds: {'untestable' if v.get('holds') is None else 'yes' if v['holds'] else 'no'}{why}){other}")
    if "points" in v and "sd_ratio" in v["points"][0]:
        return f"D = {v['D']}, d0 = {v['d0']}, law seed {v['law_seed']}: " + "; ".join(
            f"n = {p['n']}: SD {_fmt(p['random_sd'], 3)} ({p['random_seeds']} random laws) against "
            f"{_fmt(p['fixed_sd'], 3)} ({p['replicates']} replicates), F p-value {_fmt(p['p_value'], 3)}, law share "
            f"{_fmt(p['law_share'], 3)}" for p in v["points"])
    if "points" in v and "n_over_d0" in v["points"][0]:
        pts = "; ".join(f"d0 = {p['d0'][1]} / {p['d0'][0]} at n/d0 = {_fmt(p['n_over_d0'], 3)}: {_fmt(p['ratio'], 3)} "
                        f"[{_fmt(p['ci'][0], 3)}, {_fmt(p['ci'][1], 3)}]" for p in v["points"])
        return f"D = {v['D']}: {pts}; curves part at {v['parted_at'] or 'no point'}{_conv_d0(v)}"
    if "points" in v:
        pts = "; ".join(f"d0 = {p['d0']}, n = {p['n']}: {_fmt(p['ratio'], 3)} [{_fmt(p['ci'][0], 3)}, "
                        f"{_fmt(p['ci'][1], 3)}]" for p in v["points"])
        return f"D = {v['D'][1]} over D = {v['D'][0]}: {pts}; curves part at {v['parted_at'] or 'no n'}{_conv_d0(v)}"
    return f"slope {_fmt(v.get('slope'), 3)}, 95% CI {_ci(v)}, verdict {v.get('verdict')}"


def _provenance_lines(meta: dict) -> list[str]:
    vs, cs = meta.get("plan_versions") or [], meta.get("plan_commits") or []
    L = [f"Plan version(s) of these rows: {', '.join(map(str, vs)) or '-'} (the code's plan is version "
         f"{PLAN_VERSION}); plan commit(s): {', '.join(f'`{c}`' for c in cs) or '- (not run from a git checkout)'}. "
         "The plan is `docs/rates/plan.md` (`latentdit/experiments/rates/preregistration.py`, `plan.py`, `plan_paper.py`).", "",
         "Plan changes:", ""]
    return L + [f"- v{v}: {what} Why: {why}" for v, what, why in CHANGES] + [""]


def write_report(out_dir, plan, rows: list[dict], analysis: dict, *, meta: dict, attention: dict | None = None) -> Path:
    """Write ``out_dir/report.md`` and one PNG per entry of ``analysis["claims"]``; ``attention`` is
    the result of :func:`~latentdit.experiments.rates.attention_phase.attention_phase` (its PNG
    already in ``out_dir``) or None. Returns the report's path. The text is a function of its
    arguments only: no clock, no absolute path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = list((analysis.get("claims") or {}).items())
    L = [f"# Statistical rates of latent DiTs, measured (`{getattr(plan, 'name', '?')}` mode)", "",
         f"Generated by `latentdit rates` from `rows.csv` (`latentdit rates --report-only --out DIR` rebuilds this "
         f"report from it). {_plan_line(plan)} Configurations: {meta.get('configs', len(rows))} "
         f"({meta.get('finished', len(rows))} finished, {meta.get('failed', 0)} failed).", ""]
    L += _provenance_lines(meta)
    L += ["How to read the verdicts. A rate claim's headline statistic is the exponent p of the model "
          "y = a + b x^-p with a floor a >= 0, fitted to the seed means, with a 95% percentile bootstrap interval "
          "over seeds; the claim's bound holds unless the interval lies on the wrong side of the predicted "
          "exponent. Other entries use the mean of per-seed log-log least-squares slopes with its 95% t-interval "
          "and one-sided t-tests at 95%. The states: *consistent*, *faster than the bound*, *slower over this "
          "range*, or *untestable* (with every reason). `bound holds` says whether the bound is met: an upper "
          "bound fails only in the *slower* state, a lower bound only in the *faster* state. The paper's bounds "
          "are O-bounds with constants, log factors and floors, so a failure is over the measured range only.", ""]
    top = analysis.get("top") or {}
    if top:
        L += ["## Headline numbers", ""] + [f"- `{k}`: {_headline_value(top.get(k))}: {TOP_NOTES[k]}"
                                          for k in TOP_KEYS if k in top] + [""]
    for kind, title, blurb in SECTION_TITLES:
        group = [(k, e) for k, e in entries if e.get("kind") == kind]
        L += [f"## {title}", "", blurb, ""]
        L += (_summary_table(group) if group else [f"No {kind} was measured.", ""])
        for k, e in group:
            L += _entry_section(k, e, out_dir)
    L += attention_section(attention)
    L += ["## Time", "", "Each task's own seconds, from the rows; the wall time of the driver sessions as the "
          "driver recorded it on the plan line of the rows (`timing.json` has their timestamps).", ""]
    L += _timing_lines(getattr(plan, "name", None), meta.get("timing") or {}, rows)
    fails = meta.get("failures") or []
    if fails:
        L += ["## Failed configurations", ""] + [f"- `{p}`: {m}" for p, m in fails] + [""]
    path = out_dir / "report.md"
    atomic_write_text(path, "\n".join(L) + "\n")
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
    ss = tm.get("sessions") or []
    if ss:
        L += [f"Split into {len(ss)} driver session(s) on one store: " + "; ".join(
            f"{s.get('wall_seconds', 0):.0f} s, {s.get('tasks_ran', 0)} tasks"
            + ("" if s.get("recorded", True) else " (a stopped driver, a lower bound)") for s in ss) + ".", ""]
    costs = section_costs(rows)
    total = sum(c["task_seconds"] for c in costs.values()) or 1.0
    L += ["| section | tasks | task seconds | share | mean per task |", "|---|---|---|---|---|"]
    L += [f"| {k} | {c['tasks']} | {c['task_seconds']:.0f} | {c['task_seconds'] / total:.0%} | "
          f"{c['task_seconds'] / max(c['tasks'], 1):.0f} |" for k, c in costs.items()] + [""]
    return L


def summary_dict(analysis: dict, plan, meta: dict, attention: dict | None = None) -> dict:
    """summary.json's content: per entry the fields :data:`ENTRY_KEYS`; the headline numbers of
    ``analysis["top"]`` at the top level (the version-2 keys as "measured" or "absent" dicts); the
    plan's version, mode, seeds and budget; ``meta``; and the break-even bounds of the attention
    section when given. Non-finite floats become None."""
    claims = {k: {f: e.get(f) for f in ENTRY_KEYS} for k, e in (analysis.get("claims") or {}).items()}
    top = analysis.get("top") or {}
    budget = getattr(plan, "budget", None)
    out = {"plan_version": PLAN_VERSION, "plan_versions_of_rows": meta.get("plan_versions"),
           "plan_commits": meta.get("plan_commits"), "mode": getattr(plan, "name", None),
           "seeds": list(getattr(plan, "seeds", []) or []), "section_seeds": _own_seeds(plan),
           "budget": asdict(budget) if is_dataclass(budget) else budget, "claims": claims,
           **{k: top.get(k) for k in TOP_KEYS}, "meta": meta}
    if isinstance(attention, dict):
        out["attention"] = {"head_size": attention.get("head_size"), "eps": attention.get("eps"),
                            "break_even": [{k: r.get(k) for k in ("L", "m", "B_star", "R_star", "c_star", "limit",
                                                                  "degree", "rank")}
                                           for r in attention.get("break_even", [])]}
    return json_safe(out)


def _pngs(report: Path) -> set[str]:
    """The PNG files a report.md links to (empty when there is none)."""
    return set(re.findall(r"\]\(([\w.-]+\.png)\)", report.read_text())) if report.is_file() else set()


def build_report(out_dir, rows: list[dict]) -> dict:
    """report.md, summary.json and the PNGs in ``out_dir`` from the lines of a rows file alone
    (:mod:`~latentdit.experiments.rates.rows`): the plan line, the task rows and the attention
    lines. Returns the summary. Byte for byte the same for the same rows."""
    plan = plan_from_rows(rows)
    runs = [r for r in rows if r.get("section") not in ("plan", "attention")]
    done = [r for r in runs if r.get("status", "done") == "done"]
    failed = [r for r in runs if r.get("status") == "failed"]
    meta = {"plan": plan.name, "configs": len(tasks(plan)), "finished": len(done), "failed": len(failed),
            "failures": sorted([config_key({k: v for k, v in r.items() if k not in ("status", "error", "plan")}),
                                r.get("error", "")] for r in failed),
            "plan_versions": sorted({r["plan_version"] for r in done if r.get("plan_version") is not None}),
            "plan_commits": sorted({r["plan_commit"] for r in done if r.get("plan_commit")})}
    tm = [r["timing"] for r in rows if r.get("section") == "plan" and r.get("timing")]
    if tm:  # the driver sessions' durations, recorded on the plan line
        meta["timing"] = tm[0]
    att = from_rows(rows, out_dir)
    analysis = analyse(done, plan)
    before = _pngs(Path(out_dir) / "report.md")
    write_report(out_dir, plan, done, analysis, meta=meta, attention=att)
    for stale in before - _pngs(Path(out_dir) / "report.md"):  # plots of entries this report no longer has
        (Path(out_dir) / stale).unlink(missing_ok=True)
    summary = summary_dict(analysis, plan, meta, att)
    prov = [r["provenance"] for r in rows if r.get("section") == "plan" and r.get("provenance")]
    if prov:  # the session that wrote the rows file (command, commit, threads, load)
        summary["provenance"] = prov[0]
    atomic_write_text(Path(out_dir) / "summary.json", json.dumps(summary, indent=1, allow_nan=False) + "\n")
    return summary
