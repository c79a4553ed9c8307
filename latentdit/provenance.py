"""Where a measured figure came from: the command, the code, the threads and the machine's load.

Every JSON behind a figure in README.md or docs/ carries a ``"provenance"`` entry::

    prov = provenance_start(["latentdit", "bench", "model", *argv])
    ...                                   # the measurement
    report["provenance"] = provenance_end(prov)

with the keys ``command`` (the command line), ``git_commit`` (``git rev-parse HEAD`` of the source
tree, or ``latentdit==VERSION`` when the package is installed without git), ``git_dirty`` (tracked
code differs from that commit; results and docs do not count; ``None`` when unknown), ``threads`` (torch's intra-op threads at the
end), ``host_cpus``, ``loadavg_before`` / ``loadavg_after`` (1, 5 and 15 minute load averages),
``started`` (UTC, ISO 8601), ``seconds`` (wall-clock) and ``cpu`` (the processor's model name and
the vector instruction sets it offers among ``VECTOR_FLAGS``, read from /proc/cpuinfo: timing
ratios differ between an AVX2 machine and one with AVX-512 and AMX). ``REQUIRED`` lists the keys a
figure's JSON must have (checked by the test suite on ``docs/``).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Sequence

from latentdit.hostmem import host_malloc_mode

REQUIRED = ("command", "git_commit", "threads", "loadavg_before", "loadavg_after")
_SOURCE = Path(__file__).resolve().parents[1]
# the /proc/cpuinfo flags that decide which GEMM and elementwise kernels torch runs
VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve")


def parse_cpuinfo(text: str) -> dict:
    """``{"model": ..., "vector_isa": [...]}`` from the text of /proc/cpuinfo (first processor): the
    model name (x86 ``model name``, else ``Model``/``CPU part``) and the ``VECTOR_FLAGS`` present
    in its ``flags`` (x86) or ``Features`` (ARM) line, in ``VECTOR_FLAGS`` order."""
    model, flags = None, set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key in ("model name", "model", "cpu part") and model is None and not value.strip().isdigit():
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return {"model": model, "vector_isa": [f for f in VECTOR_FLAGS if f in flags]}


def cpu_info(path: str = "/proc/cpuinfo") -> dict:
    """The processor of this machine (see :func:`parse_cpuinfo`); model None and no flags where
    /proc/cpuinfo cannot be read, the model then from :func:`platform.processor` when it names one."""
    try:
        info = parse_cpuinfo(Path(path).read_text())
    except OSError:
        info = {"model": None, "vector_isa": []}
    if info["model"] is None:
        import platform

        info["model"] = platform.processor() or None
    return info


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):  # pragma: no cover - platforms without getloadavg
        return None


def _threads() -> int | None:
    torch = sys.modules.get("torch")  # never import torch just to count its threads
    return torch.get_num_threads() if torch is not None else None


def _git(*args: str) -> str | None:
    try:
        r = subprocess.run(["git", "-C", str(_SOURCE), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def git_commit() -> tuple[str, bool | None]:
    """(commit, dirty) of the source tree this package is imported from, else (``latentdit==VERSION``, None)."""
    head = _git("rev-parse", "HEAD")
    if head:
        # code only: results and docs (.json, .png, .md) rewritten by earlier measurements do not count
        status = _git("status", "--porcelain", "--untracked-files=no", "--", ".",
                      ":(exclude)*.json", ":(exclude)*.png", ":(exclude)*.md")
        return head, (None if status is None else bool(status))
    try:
        from importlib.metadata import version

        return f"latentdit=={version('latentdit')}", None
    except Exception:  # pragma: no cover - not installed and not in a git checkout
        return "unknown", None


def command_line(argv: Sequence[str] | str | None = None) -> str:
    """The command as a shell line; by default this process's ``sys.argv`` (``latentdit`` for the CLI)."""
    if isinstance(argv, str):
        return argv
    if argv is None:
        argv = list(sys.argv)
        if argv and (Path(argv[0]).name == "latentdit" or argv[0].endswith(os.path.join("latentdit", "__main__.py"))):
            argv[0] = "latentdit"
    return shlex.join(str(a) for a in argv)


def provenance_start(argv: Sequence[str] | str | None = None) -> dict:
    """The record at the start of a measurement (see the module doc); pass it to :func:`provenance_end`."""
    commit, dirty = git_commit()
    return {"command": command_line(argv), "git_commit": commit, "git_dirty": dirty, "threads": _threads(),
            "host_cpus": os.cpu_count(), "host_malloc": host_malloc_mode(), "loadavg_before": _loadavg(), "loadavg_after": None,
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "seconds": None, "cpu": cpu_info(), "_t0": time.perf_counter()}


def provenance_end(d: dict) -> dict:
    """A copy of ``d`` completed with the end load average, the wall-clock seconds and the thread count."""
    out = {k: v for k, v in d.items() if k != "_t0"}
    out["loadavg_after"] = _loadavg()
    out["seconds"] = round(time.perf_counter() - d["_t0"], 3) if "_t0" in d else None
    out["threads"] = _threads() if _threads() is not None else d.get("threads")
    return out


@contextlib.contextmanager
def provenance(argv: Sequence[str] | str | None = None) -> Iterator[dict]:
    """``with provenance(argv) as p: ...``: ``p`` is completed in place when the block ends."""
    d = provenance_start(argv)
    try:
        yield d
    finally:
        d.update(provenance_end(d))
        d.pop("_t0", None)


def missing_fields(record: dict) -> list[str]:
    """The ``REQUIRED`` keys absent from ``record["provenance"]`` (all of them when it has none)."""
    p = record.get("provenance") if isinstance(record, dict) else None
    if not isinstance(p, dict):
        return list(REQUIRED)
    return [k for k in REQUIRED if k not in p]
