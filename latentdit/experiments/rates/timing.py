"""timing.json of ``latentdit rates``: the wall and CPU time of every driver session of one sweep,
including drivers that were stopped before they could write it (counted from the store's task times)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


def busy_seconds(intervals: list[tuple[float, float]], gap: float = 60.0) -> float:
    """Wall-clock seconds during which at least one of the (start, end) ``intervals`` ran, counting
    the pauses shorter than ``gap`` between them (a driver starting the next task) but not longer
    ones (no driver running)."""
    spans: list[list[float]] = []
    for a, b in sorted(intervals):
        if spans and a <= spans[-1][1] + gap:
            spans[-1][1] = max(spans[-1][1], b)
        else:
            spans.append([a, b])
    return sum(b - a for a, b in spans)


def add_session(timing_file: Path, plan_name: str, now: dict | None, before: list[tuple[float, float]]) -> dict:
    """timing.json after a session (``now``: its record; None when it ran no task). A resumed sweep
    of the same plan (killed, or a section extended) adds its wall and CPU seconds to those of the
    earlier sessions, each kept under ``sessions``; a sweep of another plan, or on an empty store,
    starts afresh. ``before``: (start, end) of this plan's tasks that were finished when this session
    began (:meth:`RateStore.done_times`); those that ended after the last recorded session, run by
    drivers stopped before they wrote timing.json, count as one unrecorded session whose wall is the
    time during which one of them ran (:func:`busy_seconds`; a lower bound: the time after a killed
    driver's last finished task is unknown). ``mean_task_seconds`` is this session's."""
    prev = json.loads(timing_file.read_text()) if timing_file.is_file() and before else None  # empty store: afresh
    same = bool(prev) and prev.get("plan", plan_name) == plan_name and prev.get("wall_seconds") is not None
    sessions = []
    if same:
        sessions = prev.get("sessions") or [{k: prev.get(k) for k in ("wall_seconds", "cpu_seconds", "tasks_ran",
                                                                      "provenance") if k in prev}]
    ended = [x["ended"] for x in sessions if x.get("ended") is not None]
    lost = [(a, b) for a, b in before if b > max(ended)] if ended else ([] if same else list(before))
    if lost:
        sessions.append({"wall_seconds": busy_seconds(lost), "tasks_ran": len(lost), "recorded": False,
                         "started": min(a for a, _ in lost), "ended": max(b for _, b in lost),
                         "note": "drivers stopped before they wrote timing.json: the time one of their finished "
                                 "tasks was running"})
    if now is not None:
        sessions.append({**now, "ended": time.time()})
    last = now or {}
    return {"plan": plan_name, "wall_seconds": sum(x["wall_seconds"] for x in sessions),
            "cpu_seconds": sum(x.get("cpu_seconds") or 0.0 for x in sessions), "cpus": os.cpu_count(),
            "tasks_ran": sum(x.get("tasks_ran") or 0 for x in sessions),
            "wall_is_lower_bound": any(x.get("recorded") is False for x in sessions),
            "mean_task_seconds": last.get("mean_task_seconds"), "provenance": last.get("provenance"),
            "sessions": sessions}
