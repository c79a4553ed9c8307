"""One progress convention for every long stage (first stage, DiT training, sampling, Inception, rates).

:func:`progress_bar` is the one factory they call. On a terminal it returns a tqdm bar; on anything
else (a log file, a pipe, a CI log) it returns :class:`PlainProgress`, which writes a plain line
(``desc: i/N (p%) key=value ..., elapsed, eta``) at most every ``every`` seconds (30, or
``$LATENTDIT_PROGRESS_EVERY``) and a closing line
if it wrote any: no carriage returns, no escape codes, so a redirected log stays readable. Short
stages (under ``every`` seconds) stay silent off a terminal. ``enabled=False`` gives a no-op that
still iterates.

Both kinds share the small interface the stages use: iteration over ``iterable``, ``update(n)``,
``set_postfix(**values)``, ``set_postfix_str(text)``, ``close()`` and use as a context manager.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Iterable, Iterator, TextIO

PLAIN_EVERY = 30.0  # seconds between two plain lines, unless $LATENTDIT_PROGRESS_EVERY says otherwise
EVERY_ENV = "LATENTDIT_PROGRESS_EVERY"


def plain_every() -> float:
    """Seconds between two plain lines: ``$LATENTDIT_PROGRESS_EVERY`` if set (0: every update), else 30."""
    value = os.environ.get(EVERY_ENV, "").strip()
    try:
        return max(0.0, float(value)) if value else PLAIN_EVERY
    except ValueError:
        return PLAIN_EVERY


def fmt_seconds(s: float) -> str:
    """``75`` -> ``1m15s``; ``3700`` -> ``1h01m``."""
    s = max(0.0, float(s))
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


class NoProgress:
    """Progress switched off: iterates, and ignores every update."""

    def __init__(self, iterable: Iterable | None = None) -> None:
        self.iterable = iterable

    def __iter__(self) -> Iterator:
        return iter(self.iterable if self.iterable is not None else ())

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **values: Any) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "NoProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PlainProgress(NoProgress):
    """Periodic plain lines on a stream that is not a terminal."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 initial: int = 0, unit: str = "it", file: TextIO | None = None, every: float = PLAIN_EVERY,
                 clock=time.monotonic) -> None:
        super().__init__(iterable)
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit, self.every, self.clock = total, desc, unit, every, clock
        self.file = file if file is not None else sys.stderr
        self.n = self.n0 = initial
        self.postfix: dict[str, Any] = {}
        self.t0 = self.last = clock()
        self.lines, self.closed, self.n_written, self.postfix_written = 0, False, initial, {}

    def __iter__(self) -> Iterator:
        for item in super().__iter__():
            yield item
            self.update(1)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.clock() - self.last >= self.every:
            self._write()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = {k: str(v) for k, v in values.items()}

    def set_postfix_str(self, text: str) -> None:
        self.postfix = {"": text}

    def close(self) -> None:
        if not self.closed and self.lines and (self.n != self.n_written or self.postfix != self.postfix_written):
            self._write()  # the final count and values
        self.closed = True

    def line(self) -> str:
        """The current state as one line (no line end)."""
        now = self.clock()
        elapsed = now - self.t0
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        if self.total:
            done += f" ({100.0 * self.n / self.total:.0f}%)"
        parts = [f"{self.desc}: {done} {self.unit}" if self.desc else f"{done} {self.unit}"]
        parts += [f"{k}={v}" if k else v for k, v in self.postfix.items()]
        timing = f"{fmt_seconds(elapsed)} elapsed"
        rate = (self.n - self.n0) / elapsed if elapsed > 0 else 0.0
        if self.total and rate > 0 and self.n < self.total:
            timing += f", eta {fmt_seconds((self.total - self.n) / rate)}"
        return " ".join(parts) + ", " + timing

    def _write(self) -> None:
        self.file.write(self.line() + "\n")
        self.file.flush()
        self.last, self.n_written, self.postfix_written = self.clock(), self.n, dict(self.postfix)
        self.lines += 1


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", enabled: bool = True,
                 plain: bool | None = None, initial: int = 0, unit: str = "it", leave: bool = True,
                 file: TextIO | None = None, every: float | None = None) -> Any:
    """The progress display of a long stage, written to ``file`` (default: standard error).

    ``enabled=False``: nothing. Otherwise a tqdm bar when ``file`` is a terminal, periodic plain
    lines when it is not, one every ``every`` seconds (default :func:`plain_every`); ``plain=True``
    forces the plain lines, ``plain=False`` the bar. Iterate over the result when ``iterable`` is
    given, else call ``update``."""
    if not enabled:
        return NoProgress(iterable)
    stream = file if file is not None else sys.stderr
    if plain is None:
        plain = not _isatty(stream)
    if plain:
        every = plain_every() if every is None else every
        return PlainProgress(iterable, total=total, desc=desc, initial=initial, unit=unit, file=stream, every=every)
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, initial=initial, unit=unit, leave=leave, file=stream,
                dynamic_ncols=True)
