"""Output paths: check them before the expensive work, write them atomically.

``check_output_file`` / ``check_output_dir`` are called by every command that writes, before it
trains, samples or measures anything: they raise :class:`~latentdit.errors.OutputError` (one line,
naming the flag) when the path cannot be created or written, and leave nothing behind (the check
creates and removes a probe file in the nearest existing folder; it makes no folders).

``atomic_write`` and its text/JSON/bytes forms write ``PATH.tmp`` in the target folder, flush,
fsync, rename it over ``PATH`` and fsync the folder, so ``PATH`` is either the old file or the
complete new one. On any failure the temporary file is removed and the error re-raised; an
``OSError`` then names ``PATH`` (``e.filename``), which the CLI prints as one line.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from latentdit.errors import OutputError

# errno values that mean "this output cannot be written here" (not a bug): the CLI reports them as
# one line with exit status 2
WRITE_ERRNOS = frozenset(getattr(errno, n) for n in (
    "ENOSPC", "EDQUOT", "EFBIG", "EACCES", "EPERM", "EROFS", "ENOTDIR", "EISDIR", "EEXIST", "ENAMETOOLONG",
    "ETXTBSY", "EMLINK") if hasattr(errno, n))


def _nearest_existing(p: Path) -> Path:
    p = Path(os.path.abspath(p))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_creatable(folder: Path, flag: str, shown: Path) -> None:
    """``folder`` (which may not exist yet) can be made and files written in it."""
    base = _nearest_existing(folder)
    if not base.is_dir():
        raise OutputError(f"{flag} {str(shown)!r} cannot be created: {str(base)!r} is a file, not a directory; "
                          "choose another path")
    try:
        fd, probe = tempfile.mkstemp(dir=base, prefix=".latentdit-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"{flag} {str(shown)!r} cannot be written: {str(base)!r}: {e.strerror}; "
                          "choose a writable location") from e
    try:
        free = shutil.disk_usage(base).free
    except OSError:  # pragma: no cover - file systems without statvfs
        return
    if free == 0:
        raise OutputError(f"{flag} {str(shown)!r} cannot be written: no space left on the device of "
                          f"{str(base)!r}; free some space or choose another location")


def check_output_file(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Check that the file ``path`` can be (over)written; returns it as a Path. Makes nothing."""
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"{flag} {str(p)!r} is a directory; give a file name")
    if p.exists() and not p.is_file():
        raise OutputError(f"{flag} {str(p)!r} is not a regular file (a device, pipe or socket); give a file name")
    _check_creatable(p.parent, flag, p)
    return p


def check_output_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Check that the folder ``path`` exists or can be made, and that files can be written in it."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputError(f"{flag} {str(p)!r} exists and is a file; choose a new directory")
    _check_creatable(p, flag, p)
    return p


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # pragma: no cover - folders that cannot be opened (some platforms)
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - file systems that do not sync folders
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Write ``path`` by calling ``write(f)`` on ``path.tmp``, then fsync and rename; see the module doc."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(e, OSError) and not isinstance(e, OutputError):
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes | memoryview, *,
                       midway: Callable[[Path], None] | None = None) -> Path:
    """Write ``data`` to ``path`` through :func:`atomic_write`.

    ``midway(tmp)``, if given, is called with the first half of the bytes written and flushed to the
    temporary file ``tmp``: the point at which a crash leaves a torn temporary file (tests kill the
    process there).
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")

    def write(f: BinaryIO) -> None:
        half = len(data) // 2
        f.write(data[:half])
        if midway is not None:
            f.flush()
            midway(tmp)
        f.write(data[half:])

    return atomic_write(path, write)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def json_safe(o):
    """``o`` with non-finite floats as None, tuples as lists and numpy scalars as Python numbers
    (what strict JSON accepts), recursively through dicts and lists."""
    if hasattr(o, "item") and getattr(o, "ndim", None) == 0:  # numpy / torch scalars
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [json_safe(v) for v in o]
    return o


def atomic_write_json(path: str | os.PathLike, obj, indent: int | None = 2) -> Path:
    """``obj`` as JSON with a final newline; the text is built before anything is written."""
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def describe_write_error(e: OSError, out: str | os.PathLike | None = None) -> str:
    """One line for an OSError raised while writing an output (used by the CLI); ``out`` names the
    command's output when the error does not carry a file name (e.g. from fsync)."""
    where = repr(str(e.filename)) if e.filename else f"in {str(out)!r}" if out is not None else "an output file"
    hint = ("free some space or choose another output path" if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1),
                                                                            errno.EFBIG)
            else "choose another output path")
    return f"cannot write {where}: {e.strerror or e}; {hint}"


def save_figure(fig, path: str | os.PathLike, *, dpi: int = 110) -> Path:
    """Lay out a matplotlib figure, write it as a PNG atomically and close it."""
    import matplotlib.pyplot as plt  # plotting is needed only by the commands that draw

    try:
        fig.tight_layout()
        return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
    finally:
        plt.close(fig)
