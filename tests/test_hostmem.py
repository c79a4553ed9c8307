"""latentdit.hostmem: freed large host blocks are reused without page faults (glibc), in a child
process each so that the test process keeps its own allocator settings."""

import json
import os
import subprocess
import sys

import pytest

from latentdit.hostmem import _libc

CHILD = r"""
import json, resource, sys, torch
from latentdit.hostmem import reuse_host_memory, host_malloc_mode
mode = reuse_host_memory()
torch.manual_seed(0)
mlp = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 256))
x = torch.randn(16384, 256)  # the feed-forward activation is 64 MiB: 16384 pages of 4 KiB, above the
                             # C library's largest mmap threshold


@torch.no_grad()
def step():  # one feed-forward of a long sequence, as in a DiT block
    return float(mlp(x).square().mean())


for _ in range(5):  # the first calls fault their blocks in either way (and reach a steady heap)
    step()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
total = step()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
print(json.dumps({"mode": mode, "reported": host_malloc_mode(), "faults": faults, "sum": total}))
"""


def _child(env_value: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "LATENTDIT_HOST_MALLOC"}
    if env_value is not None:
        env["LATENTDIT_HOST_MALLOC"] = env_value
    r = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(_libc() is None, reason="needs glibc on Linux")
def test_reuse_mode_serves_large_blocks_from_the_kept_heap():
    pages = 16 * 2 ** 20 * 4 // 4096
    system, reuse = _child("system"), _child(None)  # the default is reuse
    assert system["mode"] == system["reported"] == "system" and reuse["mode"] == reuse["reported"] == "reuse"
    assert system["sum"] == reuse["sum"]  # the same arithmetic either way
    # the C library's default maps both 64 MiB activations afresh on every step: a fault per page.
    # Reuse serves at least one of them from the kept heap (how many depends on the heap's layout,
    # which the process's earlier allocations shape), so it faults at most about half as often.
    assert system["faults"] >= 1.8 * pages, system
    assert reuse["faults"] <= 0.6 * system["faults"], (reuse, system)


def test_a_bad_mode_is_a_config_error(monkeypatch):
    from latentdit.errors import ConfigError
    from latentdit.hostmem import reuse_host_memory

    monkeypatch.setenv("LATENTDIT_HOST_MALLOC", "jemalloc")
    with pytest.raises(ConfigError, match="choose 'reuse' or 'system'"):
        reuse_host_memory()
    assert reuse_host_memory(False) in ("system", "reuse")  # an explicit choice ignores the variable


RELEASE = r"""
import json, torch
from latentdit.hostmem import release_host_memory, reuse_host_memory
def rss():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) * 1024
assert reuse_host_memory(True) == "reuse"
keep = torch.ones(1000)  # a live tensor that must survive the release
x = torch.ones(64 * 2 ** 20)  # 256 MiB, every page touched
base = rss()
del x
kept = rss()  # under reuse the freed block stays resident
released = release_host_memory()
print(json.dumps({"base": base, "kept": kept, "after": rss(), "released": released, "live": float(keep.sum())}))
"""


@pytest.mark.slow
@pytest.mark.skipif(_libc() is None, reason="needs glibc on Linux")
def test_release_hands_the_kept_heap_back():
    """Under reuse a freed 256 MiB block stays resident; release_host_memory returns it to the
    system (RSS falls by most of it) and leaves live tensors intact."""
    r = subprocess.run([sys.executable, "-c", RELEASE], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    block = 256 * 2 ** 20
    assert out["kept"] >= out["base"] - 0.1 * block, out  # not unmapped on free
    assert out["released"] and out["kept"] - out["after"] >= 0.9 * block, out
    assert out["live"] == 1000.0
