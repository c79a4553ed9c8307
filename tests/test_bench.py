"""The benchmark scripts in their tiny --quick mode, and the analytic FLOP count of the model."""

import json

import pytest
import torch

from latentdit.bench import model as model_bench
from latentdit.bench import sampler as sampler_bench
from latentdit.sampling import SAMPLERS


def test_analytic_forward_flops_match_the_flop_counter():
    c = dict(hidden=32, depth=2, heads=4, side=8, patch=2, batch=3, classes=5)
    m = model_bench.build_ours(c).eval()
    x, t, y = torch.randn(3, 64), torch.rand(3) + 0.1, torch.randint(0, 5, (3,))
    assert model_bench.counted_flops(m, (x, t, y)) == model_bench.forward_flops(c)["total"]


@pytest.mark.slow
def test_model_bench_quick_writes_all_keys(tmp_path):
    pytest.importorskip("diffusers")
    out = tmp_path / "model.json"
    assert model_bench.main(["--out", str(out), "--quick", "--threads", "1"]) == 0
    d = json.loads(out.read_text())
    for key in ("ours_train_samples_per_s", "diffusers_train_samples_per_s", "train_speedup", "ours_fwd_mfu",
                "matmul_gflops"):
        assert isinstance(d[key], float) and d[key] > 0, key
    q = d["configs"]["quick"]
    assert q["params_ours"] > 0 and q["params_diffusers"] > 0
    assert len(q["times_s"]["ours_train"]) == d["repeats"]


@pytest.mark.slow
def test_sampler_bench_quick_writes_all_keys(tmp_path):
    out = tmp_path / "sampler.json"
    assert sampler_bench.main(["--out", str(out), "--quick", "--threads", "1"]) == 0
    d = json.loads(out.read_text())
    assert set(d["nfe_to_match_em1000"]) == set(SAMPLERS)
    assert d["w2_reference"] > 0 and d["w2_em1000"] > 0
    acc = d["acceptance"]
    assert set(acc["off_subspace_var"]) == set(d["nfe_to_match_em1000"])
    assert "w2_over_reference" in acc
    assert (tmp_path / "sampler.png").stat().st_size > 0


@pytest.mark.slow
def test_sampler_bench_core_reports_the_low_nfe_ratio(tmp_path):
    out = tmp_path / "core.json"
    rc = sampler_bench.main(["--out", str(out), "--quick", "--core-only", "--threads", "1"])
    d = json.loads(out.read_text())
    # 100 samples may miss the acceptance tolerances; the exit status must say which it was
    assert rc == (0 if d["all_ok"] else 1), (rc, d["all_ok"])
    best = d["low_nfe"]["best"]["5"]
    assert best["nfe"] == 5 and d["w2_ratio_at_5_nfe"] == best["w2_over_reference"] > 0
    assert all(r["w2_over_reference"] >= best["w2_over_reference"] for r in d["low_nfe"]["rows"] if r["nfe"] == 5)
    assert all(r["nfe"] in (5, 10) for r in d["low_nfe"]["rows"] + d["low_nfe"]["peer_rows"])  # exact budgets
    for key in ("w2_ratio_at_10_nfe", "peer_best_w2_ratio_at_5_nfe", "peer_best_w2_ratio_at_10_nfe", "peers",
                "nfe_convention"):
        assert key in d, key
