"""The peer adapters (k-diffusion, diffusers) against closed forms, the fitted-grid export hook and the
NFE demo command on a tiny export."""

import json
import math
from pathlib import Path

import pytest
import torch

from latentdit.bench.sampler_demo import PEERS
from latentdit.bench.sampler_peers import _k_model, all_peers, diffusers_betas, run_peer, t_of_ve_sigma, ve_sigma
from latentdit.diffusion import OU

VAR = torch.tensor([2.0, 0.25, 0.0], dtype=torch.float64)
T0, T = 1e-2, 10.0
DATA = Path(__file__).parent / "data" / "export_v0"


def gaussian_denoiser(x, t):
    b = OU.beta(t)[:, None]
    return b * VAR * x / (b ** 2 * VAR + OU.sigma(t)[:, None])


def test_ve_adapter_is_the_closed_form_ve_denoiser():
    """x_VE = x0 + sigma_VE z with x0 ~ N(0, VAR): E[x0 | x_VE] = VAR x_VE / (VAR + sigma_VE^2)."""
    x_ve = torch.randn(50, 3, dtype=torch.float64) * 3
    s = torch.linspace(0.05, 40.0, 50, dtype=torch.float64)
    got = _k_model(gaussian_denoiser)(x_ve, s)
    assert torch.allclose(got, VAR * x_ve / (VAR + s[:, None] ** 2), rtol=1e-10, atol=1e-12)
    assert float(t_of_ve_sigma(torch.tensor(ve_sigma(2.5), dtype=torch.float64))) == pytest.approx(2.5, rel=1e-12)


def test_diffusers_training_schedule_spans_T0_to_T():
    abar = torch.cumprod(1 - torch.tensor(diffusers_betas(T0, T), dtype=torch.float64), 0)
    assert float(abar[0]) == pytest.approx(math.exp(-T0), rel=1e-12)
    assert float(abar[-1]) == pytest.approx(math.exp(-T), rel=1e-9)


@pytest.mark.slow
def test_every_peer_makes_its_nfe_and_reaches_the_gaussian_law_at_T0():
    """Each importable peer makes exactly the NFE asked (the jump to sigma = 0 included) and, at 30 NFE,
    its sample carried to T0 has the closed-form variance beta(T0)^2 VAR + sigma(T0)."""
    runs, libs = all_peers(T0, T)
    if not runs:
        pytest.skip(f"no peer library importable: {libs}")
    expect = OU.beta(T0) ** 2 * VAR + OU.sigma(T0)
    for name, run in runs.items():
        x = torch.randn(4, 3, dtype=torch.float64)
        _, calls = run_peer(run, gaussian_denoiser, x, 5, T0, T, torch.Generator().manual_seed(0))
        assert calls == 5, name
        x = torch.randn(10000, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        out, calls = run_peer(run, gaussian_denoiser, x, 30, T0, T, torch.Generator().manual_seed(2))
        assert calls == 30 and torch.allclose(out.var(dim=0), expect, rtol=0.06), (name, out.var(dim=0))


def test_a_fitted_grid_stored_in_sampling_json_is_the_pipelines_default(tmp_path):
    from latentdit.export import store_fitted_grid
    from latentdit.models.score import LatentScoreNet
    from latentdit.pipeline import LatentDiTPipeline
    from latentdit.sampling import time_grid

    LatentDiTPipeline(LatentScoreNet(8, 4, hidden=16, depth=1, heads=2).eval()).save_pretrained(tmp_path)
    times = time_grid(1e-3, 10.0, 4, "karras", rho=11.0).tolist()
    rec = store_fitted_grid(tmp_path, times, sampler="ipndm")
    assert json.loads((tmp_path / "sampling.json").read_text()) == rec
    assert rec["grid"] == times and rec["steps"] == 4 and rec["sampler"] == "ipndm"
    pipe = LatentDiTPipeline.from_pretrained(tmp_path)
    assert pipe.defaults.grid == times
    assert pipe.sample_model_space(3).shape == (3, 8)
    with pytest.raises(ValueError, match="4 steps but steps=9"):
        pipe.sample_model_space(3, steps=9)
    assert pipe.sample_model_space(3, steps=9, grid="logsnr").shape == (3, 8)


@pytest.mark.slow
def test_demo_command_compares_ours_and_peers_at_each_budget(tmp_path):
    from latentdit.bench import sampler as sampler_bench

    out = tmp_path / "demo.json"
    assert sampler_bench.main(["--out", str(out), "--export", str(DATA / "digits"), "--demo-num", "60",
                               "--demo-nfe", "4", "--no-fid", "--threads", "1"]) == 0
    d = json.loads(out.read_text())
    rows = [r for r in d["rows"] if r["kind"] != "reference"]
    assert {r["kind"] for r in rows} >= {"latentdit"} and all(r["nfe"] == 4 for r in rows)
    assert all(0 <= r["classifier_accuracy"] <= 1 and r["classifier_fd"] >= 0 for r in d["rows"])
    assert d["best"]["latentdit_4"] is not None and "every model call counts" in d["nfe_convention"]
    peer_rows = {r["sampler"] for r in rows if r["kind"] == "peer"}  # a listed peer either ran or is named as not run
    assert peer_rows.isdisjoint(d["peers_not_run"]) and peer_rows | set(d["peers_not_run"]) == set(PEERS)


def test_the_demo_peers_are_names_the_adapters_make():
    """With both libraries loaded every listed peer runs (a misspelt name would only show in ``peers_not_run``)."""
    runs, libs = all_peers(T0, T)
    if any(v.startswith("absent") for v in libs.values()):
        pytest.skip(f"a peer library is absent: {libs}")
    assert set(PEERS) <= set(runs), set(PEERS) - set(runs)
