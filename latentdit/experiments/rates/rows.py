"""The raw rows of a ``latentdit rates`` run as one CSV file (``rows.csv``), the single input of the
report: :func:`latentdit.experiments.rates.report.build_report` rebuilds report.md and summary.json
from it alone, byte for byte.

One line per task (its parameters, ``status`` "done" or "failed", every metric and per-t profile)
plus the attention-criterion rows (``section = "attention"``, ``table`` naming the table). Cells:
a string as itself unless it would read back as JSON, everything else (numbers, booleans, lists,
dicts, null) as JSON, so that every value, floats included (``repr`` digits), reads back exactly;
an empty cell is a field the row does not have. Columns: :data:`LEAD` first, then the others
sorted; rows sorted by their JSON text.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from latentdit.experiments.rates.plan import Plan
from latentdit.io import atomic_write_text

ROWS_NAME = "rows.csv"
LEAD = ("plan", "plan_version", "plan_commit", "section", "status", "seed", "steps_trained", "stop_reason",
        "budget_scale")


def _cell(v) -> str:
    if isinstance(v, str) and v:
        try:
            json.loads(v)
        except ValueError:
            return v
    return json.dumps(v, sort_keys=True)


def _value(s: str):
    try:
        return json.loads(s)
    except ValueError:
        return s


def stop_reason(row: dict) -> str | None:
    """How a run's training ended: the row's own ``stop_reason`` if it has one; else, before the
    cap (``converged``), 'plateau' (after its reduce-on-plateau steps, ``plateau_decays`` > 0) or
    'patience' (early stopping); 'step cap'; or None for rows without training."""
    if row.get("stop_reason") is not None:
        return row["stop_reason"]
    if "converged" not in row:
        return None
    if not row["converged"]:
        return "step cap"
    return "plateau" if row.get("plateau_decays") else "patience"


def with_defaults(row: dict, plan: str) -> dict:
    """``row`` with the fields every line carries: ``plan``, ``status`` (default "done"),
    ``stop_reason`` (:func:`stop_reason`) and ``budget_scale`` (default 1) for training rows."""
    out = {"plan": plan, "status": "done", **row}
    if out.get("section") != "attention":
        out["stop_reason"] = stop_reason(out)
        out.setdefault("budget_scale", 1)
    return out


def rows_text(rows: list[dict]) -> str:
    """The CSV text of ``rows`` (columns and order of the module docstring)."""
    keys = sorted({k for r in rows for k in r} - set(LEAD))
    cols = [k for k in LEAD if any(k in r for r in rows)] + keys
    lines = sorted(json.dumps(r, sort_keys=True, default=str) for r in rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for line in lines:
        r = json.loads(line)
        w.writerow([_cell(r[k]) if k in r else "" for k in cols])
    return buf.getvalue()


def write_rows(path: str | Path, rows: list[dict]) -> Path:
    """Write ``rows`` atomically as CSV; returns the path."""
    return atomic_write_text(path, rows_text(rows))


def read_rows(path: str | Path) -> list[dict]:
    """The rows of a file written by :func:`write_rows` (empty cells are absent fields)."""
    with open(path, newline="") as f:
        rd = csv.reader(f)
        cols = next(rd, None) or []
        return [{k: _value(v) for k, v in zip(cols, line) if v != ""} for line in rd]


def _tuples(v):
    return tuple(_tuples(x) for x in v) if isinstance(v, list) else v


def _field_class(cls, f):
    """The dataclass named in the annotation of field ``f`` of ``cls`` (a string under ``from
    __future__ import annotations``), looked up in the modules of ``cls`` and of the plan; None
    when the annotation names none."""
    import dataclasses
    import re
    import sys

    spaces = [vars(sys.modules[cls.__module__]), vars(sys.modules[Plan.__module__])]
    for name in re.findall(r"[A-Za-z_]\w*", str(f.type)):
        for ns in spaces:
            obj = ns.get(name)
            if isinstance(obj, type) and dataclasses.is_dataclass(obj):
                return obj
    return None


def _build(cls, d: dict):
    """Dataclass ``cls`` from ``asdict`` output: nested dataclasses by their annotations, lists as
    tuples; fields the dict lacks keep their defaults (a row file from an earlier plan schema)."""
    import dataclasses

    kw = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        v, sub = d[f.name], _field_class(cls, f)
        kw[f.name] = _build(sub, v) if sub is not None and isinstance(v, dict) else _tuples(v)
    return cls(**kw)


def plan_row(plan, provenance: dict | None = None, timing: dict | None = None) -> dict:
    """The line that records the plan itself (``section = "plan"``, ``spec`` = its fields), the
    provenance of the session that wrote the file (summary.json copies it) and the durations of the
    driver sessions from timing.json (wall and CPU seconds and tasks per session, no timestamps: the
    report says how the run was split)."""
    from dataclasses import asdict

    keep = ("wall_seconds", "cpu_seconds", "tasks_ran", "recorded")
    tm = None if not timing else {
        "wall_seconds": timing.get("wall_seconds"), "cpu_seconds": timing.get("cpu_seconds"),
        "tasks_ran": timing.get("tasks_ran"), "wall_is_lower_bound": bool(timing.get("wall_is_lower_bound")),
        "sessions": [{k: s.get(k) for k in keep if k in s} for s in timing.get("sessions") or []]}
    return {"section": "plan", "plan": plan.name, "spec": asdict(plan),
            **({"provenance": provenance} if provenance else {}), **({"timing": tm} if tm else {})}


def plan_from_rows(rows: list[dict]):
    """The :class:`~latentdit.experiments.rates.plan.Plan` recorded by :func:`plan_row` in ``rows``
    (a ValueError when there is none)."""
    spec = [r["spec"] for r in rows if r.get("section") == "plan"]
    if len(spec) != 1:
        raise ValueError(f"the rows file records {len(spec)} plans (expected one line with section 'plan')")
    return _build(Plan, spec[0])
