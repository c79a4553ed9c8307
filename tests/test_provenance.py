"""Every figure's JSON says where it came from: command, git commit, threads, load before and after."""

import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from latentdit import provenance as prov
from latentdit.provenance import REQUIRED, missing_fields, provenance, provenance_end, provenance_start

ROOT = Path(__file__).resolve().parents[1]
FIGURE_JSONS = sorted([*ROOT.glob("docs/bench/*.json"), *ROOT.glob("docs/rates-quick/*.json"), *ROOT.glob("docs/rates/*.json"),
                       *ROOT.glob("docs/efficient/*.json")])


def _check_record(p: dict, committed: bool = False) -> None:
    """Every required field with a real value: a figure whose load or threads are unknown (null) is
    not traceable; a committed figure (``committed``) must also have been measured on code equal
    to its commit."""
    assert not missing_fields({"provenance": p}), missing_fields({"provenance": p})
    assert isinstance(p["command"], str) and p["command"].strip()
    assert isinstance(p["git_commit"], str) and p["git_commit"]
    if committed:
        assert p.get("git_dirty") is False, f"git_dirty is {p.get('git_dirty')!r}: measured on uncommitted code"
    assert isinstance(p["threads"], int) and p["threads"] >= 1, p["threads"]
    for k in ("loadavg_before", "loadavg_after"):
        assert isinstance(p[k], list) and len(p[k]) == 3 and all(x >= 0 for x in p[k]), (k, p[k])


@pytest.mark.parametrize("path", [str(p.relative_to(ROOT)) for p in FIGURE_JSONS])
def test_every_figure_json_records_its_provenance(path):
    _check_record(json.loads((ROOT / path).read_text())["provenance"], committed=True)


@pytest.mark.slow
def test_record_holds_the_command_commit_threads_and_load():
    torch.set_num_threads(1)
    start = provenance_start(["latentdit", "bench", "model", "--out", "a b.json"])
    time.sleep(0.05)
    d = provenance_end(start)
    assert set(REQUIRED) <= set(d) and "_t0" not in d
    assert d["command"] == "latentdit bench model --out 'a b.json'"  # a shell line: quoted where needed
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert d["git_commit"] == head.stdout.strip() and isinstance(d["git_dirty"], bool)
    assert d["threads"] == 1 and d["host_cpus"] >= 1
    assert d["seconds"] >= 0.05
    started = datetime.datetime.fromisoformat(d["started"])
    assert abs((datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()) < 60
    _check_record(d)
    json.dumps(d)  # JSON-serialisable as it is


@pytest.mark.slow
def test_without_git_the_installed_version_is_recorded(monkeypatch):
    def no_git(*a, **k):
        raise FileNotFoundError("git")

    monkeypatch.setattr(prov.subprocess, "run", no_git)
    commit, dirty = prov.git_commit()
    assert dirty is None and (commit.startswith("latentdit==") or commit == "unknown")


def test_default_command_is_this_process_command_line(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/x/lib/latentdit/__main__.py", "evaluate", "--run", "r"])
    assert prov.command_line() == "latentdit evaluate --run r"
    with provenance() as p:
        pass
    assert p["command"] == "latentdit evaluate --run r" and p["seconds"] is not None and "_t0" not in p


def test_bench_and_evaluate_outputs_carry_provenance(tmp_path):
    from latentdit.bench import sampler as sampler_bench
    from latentdit.config import load_config
    from latentdit.evaluation import evaluate_run
    from latentdit.train import train

    out = tmp_path / "s.json"
    assert sampler_bench.main(["--out", str(out), "--quick", "--threads", "1"]) == 0
    p = json.loads(out.read_text())["provenance"]
    _check_record(p)
    assert p["command"] == f"latentdit bench sampler --out {out} --quick --threads 1" and p["threads"] == 1

    t0 = time.time()
    run = train(load_config(ROOT / "configs" / "tiny.toml", ["train.steps=2", "train.checkpoint_every=2"]),
                tmp_path / "run", progress=False)
    wall = time.time() - t0
    evaluate_run(run, tmp_path / "m.json", num_samples=16, steps=2)
    m = json.loads((tmp_path / "m.json").read_text())
    _check_record(m["provenance"])
    assert 0 < m["train_seconds"] <= wall  # the training wall-clock behind a README figure travels along


_CPUINFO_AVX2 = """processor\t: 0
vendor_id\t: GenuineIntel
model\t\t: 85
model name\t: Intel(R) Xeon(R) CPU @ 2.20GHz
flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c avx2 fma bmi2

processor\t: 1
model name\t: Intel(R) Xeon(R) CPU @ 2.20GHz
flags\t\t: fpu sse avx512f
"""
_CPUINFO_AMX = """processor\t: 0
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512bw avx512vl avx512_bf16 amx_bf16 amx_tile amx_int8
"""


def test_cpuinfo_gives_the_model_and_the_vector_instruction_sets():
    """The numeric ``model`` line is not the name; the first processor's flags decide, in a fixed order."""
    a = prov.parse_cpuinfo(_CPUINFO_AVX2)
    assert a == {"model": "Intel(R) Xeon(R) CPU @ 2.20GHz", "vector_isa": ["sse4_2", "avx", "avx2", "fma", "f16c"]}
    b = prov.parse_cpuinfo(_CPUINFO_AMX)
    assert b["model"] == "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"
    assert {"avx2", "avx512f", "amx_tile", "amx_bf16", "amx_int8"} <= set(b["vector_isa"])
    assert "avx512f" not in a["vector_isa"]  # the second processor's flags are not read
    assert prov.parse_cpuinfo("") == {"model": None, "vector_isa": []}


def test_every_record_names_the_cpu(tmp_path):
    d = provenance_end(provenance_start(["x"]))
    assert set(d["cpu"]) == {"model", "vector_isa"} and isinstance(d["cpu"]["vector_isa"], list)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        flags = next((ln.split(":", 1)[1].split() for ln in cpuinfo.read_text().splitlines()
                      if ln.startswith(("flags", "Features"))), [])
        assert ("avx2" in d["cpu"]["vector_isa"]) == ("avx2" in flags)
        assert ("avx512f" in d["cpu"]["vector_isa"]) == ("avx512f" in flags)
        assert ("amx_tile" in d["cpu"]["vector_isa"]) == ("amx_tile" in flags)
    missing = prov.cpu_info(str(tmp_path / "no-cpuinfo"))
    assert missing["vector_isa"] == []
    json.dumps(d)
