"""Wall-clock timing of interleaved jobs, for benchmarks and experiments that compare speeds."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def interleaved_times(jobs: dict[str, Callable[[], object]], repeats: int, label: str, *,
                      before_repeat: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """Wall-clock seconds of every job in ``jobs``, ``repeats`` rounds, the jobs interleaved within each
    round (so slow drifts of the machine's speed hit all of them alike); prints one line per round."""
    times: dict[str, list[float]] = {k: [] for k in jobs}
    for r in range(repeats):
        if before_repeat is not None:
            before_repeat()
        for k, f in jobs.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
        print(f"[{label}] repeat {r + 1}/{repeats}: " + "  ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items()),
              flush=True)
    return times


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    return {k: statistics.median(v) for k, v in times.items()}
