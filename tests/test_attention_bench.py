"""The kernel and whole-network benchmarks' new records: the phase profile against its floors, the
matmul-probe fractions and the full sampling run with exact and with poly attention."""

import json

import pytest

from latentdit.attention.cost import backward_flops, forward_flops, product_flops, rank
from latentdit.bench.attention_phases import PHASES, format_profile, phase_profile
from latentdit.bench.dit import main as dit_main


def test_gemm_flops_count_every_slot_once():
    """Unsplit: 2 n L C(m + g, g) (mv + 1) per side; a split's zero slots add FLOPs, never remove them;
    the backward is one product and m derivative products on the degree <= g - 1 features per side
    (a split's: m + 1 full products); on the sphere the same with C(m+g-1, g) + C(m+g-2, g-1)."""
    assert product_flops(3, 100, 4, 8, 7) == 2 * 3 * 100 * 330 * 9
    assert product_flops(3, 100, 4, 8, 7, ("degree", 1)) > product_flops(3, 100, 4, 8, 7)
    assert forward_flops(2, 10, 30, 4, 4, 3) == product_flops(2, 10, 4, 4, 3) + product_flops(2, 30, 4, 4, 3)
    assert backward_flops(2, 10, 30, 4, 4, 3) == 2 * 2 * 40 * 5 * (35 + 4 * 15)
    assert backward_flops(2, 10, 30, 4, 4, 3, ("degree", 1)) == 5 * forward_flops(2, 10, 30, 4, 4, 3, ("degree", 1))
    assert forward_flops(2, 10, 30, 4, 4, 3, ("sphere", 0)) == 2 * 2 * 40 * 5 * 30  # C(6,3) + C(5,2)
    assert backward_flops(2, 10, 30, 4, 4, 3, ("sphere", 0)) == 2 * 2 * 40 * 5 * (30 + 4 * 14)


@pytest.mark.slow
def test_phase_profile_reports_every_phase_against_a_floor():
    p = phase_profile(256, 4, 3.0, heads=2, repeats=1)
    assert [r["phase"] for r in p["phases"]] == list(PHASES)
    for r in p["phases"]:
        assert r["wall_s"] >= 0 and r["cpu_s"] >= 0 and r["floor_s"] > 0 and r["floor"] in ("flop", "memory")
    assert p["degree"] == 8 and p["rank"] == rank(4, 8) and p["features_built"] <= p["rank"]
    assert p["peak_gflops"] > 0 and p["copy_gbytes_per_s"] > 0 and 0 < p["fraction_of_matmul_probe"]
    assert "forward reaches" in format_profile(p)
    json.dumps(p)


@pytest.mark.slow
def test_phase_profile_of_the_dit_call_runs_on_the_sphere():
    """``--dit``: the block's QK-norm call, profiled on the sphere's features (degree 7 at tau^2 = 2.78:
    204 reduced features, 176 of them built), its GEMM FLOPs counted for those features."""
    from latentdit.attention.cost import sphere_rank

    p = phase_profile(256, 0, 0.0, repeats=1, sphere=True)
    assert p["sphere"] and p["head_dim"] == 4 and p["heads"] == 16 and p["value_dim"] == 32
    assert p["degree"] == 7 and p["rank"] == rank(4, 7) and p["features_built"] == 176
    assert p["forward_gflop"] == pytest.approx(2 * 2 * 16 * 256 * 33 * sphere_rank(4, 7) / 1e9)
    assert [r["phase"] for r in p["phases"]] == list(PHASES)


@pytest.mark.slow
def test_dit_bench_sampling_run_follows_exact_attention(tmp_path):
    """20 NFE from the same noise with exact and with poly attention: the samples agree far below the
    certified per-entry error (1e-3); the matmul probe and the poly GEMM FLOPs are recorded per length."""
    out = tmp_path / "dit.json"
    assert dit_main(["--quick", "--lengths", "16", "32", "--repeats", "1", "--sampling-length", "32",
                     "--threads", "1", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    s = r["sampling"]
    assert s["nfe"] == 20 and s["L"] == 32 and s["exact_s"] > 0 and s["poly_s"] > 0
    assert s["rel_diff"] < 1e-3
    first = r["lengths"][0]
    assert first["matmul_probe_gflops"] > 0 and first["poly_attention_gflop_fwd"] > 0
    assert r["poly_over_relu_linear_forward_32"] > 0 and r["provenance"]["cpu"]["vector_isa"] is not None
    # the attention-free copy: timed beside the others, and the floor adds the poly FLOPs at the probe's rate
    last = r["lengths"][-1]
    assert last["median_s"]["none_fwd"] > 0 and last["median_s"]["none_train"] > 0
    assert last["poly_floor_fwd_s"] == pytest.approx(
        last["median_s"]["none_fwd"] + last["poly_attention_gflop_fwd"] / last["matmul_probe_gflops"])
    assert r["speedup_forward_bound_at_probe_32"] == pytest.approx(
        last["median_s"]["exact_fwd"] / last["poly_floor_fwd_s"])
    assert 0 < first["attention_share"] < 10 and r["speedup_train_no_attention_32"] > 0
    out2 = tmp_path / "dit2.json"
    assert dit_main(["--quick", "--lengths", "16", "32", "--repeats", "1", "--no-sampling", "--no-memory",
                     "--threads", "1", "--out", str(out2)]) == 0
    assert json.loads(out2.read_text())["sampling"] is None
