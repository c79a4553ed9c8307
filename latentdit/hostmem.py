"""Host-memory reuse for CPU runs: large tensors without a page fault per fresh allocation.

PyTorch's CPU allocator is the C library's ``malloc``. glibc serves every block above its mmap
threshold (at most 32 MB) with a fresh ``mmap``, and hands it back with ``munmap`` when the tensor
is freed, so each new large activation is faulted in page by page and zero-filled by the kernel. At
long sequence lengths the network's activations are exactly such blocks (at L = 16384, batch 4,
hidden 128, one feed-forward activation is 134 MB), and a forward pass of the whole DiT then spends
a large share of its time in page faults rather than arithmetic.

:func:`reuse_host_memory` turns that off for the rest of the process with ``mallopt``: no mmap for
large blocks and no trimming of the heap, so that once a step or two have shaped the heap, freed
activations are reused by the next step without faulting. This is what a caching allocator (jemalloc, tcmalloc) buys a CPU PyTorch job, without a
preloaded library. The price: memory freed during the run is kept by the process until it exits
(the resident size stays at its high-water mark; :func:`release_host_memory` hands the free part
back, as ``latentdit bench dit`` does before its peak-memory subprocesses). The CLI calls it for every command on CPU,
as do the ``python -m`` entry points that train or time (``latentdit.experiments.efficient`` and ``.video``,
``latentdit.bench.attention_phases``);
``LATENTDIT_HOST_MALLOC=system`` keeps the C library's defaults. Anything other than glibc on
Linux is left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

from latentdit.errors import ConfigError

ENV = "LATENTDIT_HOST_MALLOC"
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameter numbers (malloc.h)
_state: dict = {"mode": "system"}


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()  # glibc only (musl has no mallopt tunables of this kind)
        return libc
    except (OSError, AttributeError):
        return None


def reuse_host_memory(enable: bool | None = None) -> str:
    """Keep freed host memory for reuse (see the module doc); returns the mode now in force,
    ``"reuse"`` or ``"system"``. ``enable=None`` follows ``$LATENTDIT_HOST_MALLOC`` (default: reuse).
    Idempotent; a platform without glibc stays ``"system"``."""
    if enable is None:
        want = os.environ.get(ENV, "reuse").strip().lower()
        if want not in ("reuse", "system"):
            raise ConfigError(f"${ENV}={want!r}: choose 'reuse' or 'system'")
        enable = want == "reuse"
    if not enable or _state["mode"] == "reuse":
        return _state["mode"]
    libc = _libc()
    if libc is None:
        return _state["mode"]
    trim = ctypes.c_int(2 ** 31 - 1)  # the largest value mallopt takes: the heap is never trimmed
    if libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, trim) == 1:
        _state["mode"] = "reuse"
    return _state["mode"]


def release_host_memory() -> bool:
    """Hand the free pages of the heap back to the system (glibc's ``malloc_trim(0)``), e.g. before
    another process needs the memory this one keeps under reuse; True if any was released. Live
    tensors are untouched; a platform without glibc does nothing (False)."""
    libc = _libc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


def host_malloc_mode() -> str:
    """``"reuse"`` after a successful :func:`reuse_host_memory` in this process, else ``"system"``."""
    return _state["mode"]
