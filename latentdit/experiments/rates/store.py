"""The resumable record of a ``latentdit rates`` sweep: one SQLite row per configuration.

Each finished row records the plan version it ran under and the plan's commit
(:mod:`latentdit.experiments.rates.preregistration`), so that a store resumed across plan versions
says which rows came from which plan."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Iterable

from latentdit.experiments.rates.plan import config_key
from latentdit.experiments.rates.preregistration import PLAN_VERSION, plan_commit

DB_NAME = "rates.sqlite"


class RateStore:
    """SQLite record of configurations: ``running`` when started, ``done`` (with its metrics) when finished.

    Each result is committed at once, so killing a sweep loses at most the configurations that were
    running; anything not ``done`` is run again by the next sweep.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path))
        self.db.execute("CREATE TABLE IF NOT EXISTS runs (key TEXT PRIMARY KEY, params TEXT NOT NULL, "
                        "status TEXT NOT NULL, result TEXT, seconds REAL, updated REAL)")
        self.db.commit()
        self._commit: str | None | bool = False  # False: not looked up yet

    def _plan_fields(self) -> dict:
        if self._commit is False:
            self._commit = plan_commit()
        return {"plan_version": PLAN_VERSION, "plan_commit": self._commit}

    def close(self) -> None:
        self.db.close()

    def _put(self, key: str, params: dict, status: str, result: dict | None, seconds: float | None) -> None:
        self.db.execute("INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?)",
                        (key, json.dumps(params), status, None if result is None else json.dumps(result),
                         seconds, time.time()))
        self.db.commit()

    def mark_running(self, params: dict) -> None:
        self._put(config_key(params), params, "running", None, None)

    def record(self, params: dict, result: dict, seconds: float) -> None:
        self._put(config_key(params), params, "done", {**result, **self._plan_fields()}, seconds)

    def record_failure(self, params: dict, message: str) -> None:
        self._put(config_key(params), params, "failed", {"error": message}, None)

    def finished_keys(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT key FROM runs WHERE status = 'done'")}

    def status(self, params: dict) -> str | None:
        r = self.db.execute("SELECT status FROM runs WHERE key = ?", (config_key(params),)).fetchone()
        return r[0] if r else None

    def results(self, keys: Iterable[str] | None = None) -> list[dict]:
        """Finished rows as ``{**params, **metrics, "seconds": s}`` (restricted to ``keys`` if given)."""
        want = None if keys is None else set(keys)
        out = []
        for key, params, result, seconds in self.db.execute(
                "SELECT key, params, result, seconds FROM runs WHERE status = 'done'"):
            if want is not None and key not in want:
                continue
            out.append({**json.loads(params), **json.loads(result), "seconds": seconds})
        return out

    def done_times(self, keys: Iterable[str] | None = None) -> list[tuple[float, float]]:
        """(start, end) wall-clock times of the finished configurations (restricted to ``keys`` if given)."""
        want = None if keys is None else set(keys)
        return [(u - (s or 0.0), u) for k, s, u in self.db.execute(
            "SELECT key, seconds, updated FROM runs WHERE status = 'done'") if want is None or k in want]

    def rows(self, keys: Iterable[str] | None = None) -> list[dict]:
        """Every finished and failed row (restricted to ``keys`` if given) for the rows file:
        ``{**params, **metrics, "status", "seconds"}``; a failed row has ``error``."""
        want = None if keys is None else set(keys)
        out = []
        for key, params, status, result, seconds in self.db.execute(
                "SELECT key, params, status, result, seconds FROM runs WHERE status IN ('done', 'failed')"):
            if want is None or key in want:
                out.append({**json.loads(params), **json.loads(result), "status": status,
                            **({"seconds": seconds} if status == "done" else {})})
        return out

    def failures(self) -> list[tuple[dict, str]]:
        return [(json.loads(p), json.loads(r)["error"]) for p, r in
                self.db.execute("SELECT params, result FROM runs WHERE status = 'failed'")]
