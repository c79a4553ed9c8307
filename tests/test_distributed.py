"""Data-parallel training: 2 CPU processes under torchrun (gloo) equal one process at the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from latentdit.config import load_config
from latentdit.train import train

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.toml"
SETS = ["train.steps=12", "train.batch_size=32", "train.log_every=4", "train.checkpoint_every=6",
        "train.threads=1", "train.device=cpu"]


def torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "latentdit", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_two_process_torchrun_matches_single_process(tmp_path):
    single = tmp_path / "single"
    train(load_config(TINY, SETS), single, progress=False)

    ddp = tmp_path / "ddp"
    r = torchrun(2, "train", "--config", str(TINY), "--out", str(ddp), "--quiet",
                 *[x for s in SETS for x in ("--set", s)])
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("run written to") == 1  # only rank 0 reports (and writes)

    a = load_file(str(single / "model" / "model.safetensors"))
    b = load_file(str(ddp / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    # the logged losses are the global-batch means, as in the single process
    def losses(p):
        return [r["loss"] for r in map(json.loads, (p / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert losses(ddp) == pytest.approx(losses(single), rel=1e-4)
    ckpts = sorted(p.name for p in (ddp / "checkpoints").iterdir())
    assert ckpts == ["step_00000006.pt", "step_00000012.pt"]
    s = torch.load(ddp / "checkpoints" / "step_00000012.pt", weights_only=True)
    assert s["world_size"] == 2


def test_global_batch_must_split_evenly_over_ranks(tmp_path):
    from latentdit.distributed import DistContext
    from latentdit.errors import ConfigError
    from latentdit.train import Trainer

    cfg = load_config(TINY, ["train.batch_size=33", "train.device=cpu"])
    with pytest.raises(ConfigError, match="not divisible by the 2 processes"):
        Trainer(cfg, tmp_path / "r", dist=DistContext(rank=1, world_size=2))
    assert not (tmp_path / "r").exists()
