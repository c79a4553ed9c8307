"""End-to-end command line: train -> sample -> evaluate on a tiny config, and exit-2 errors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.toml"


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "latentdit", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


@pytest.mark.slow
def test_train_sample_evaluate(tmp_path):
    run = tmp_path / "run"
    r = cli("train", "--config", TINY, "--out", run, "--quiet")
    assert r.returncode == 0, r.stderr
    saved = json.loads((run / "config.json").read_text())
    assert saved["train"]["steps"] == 30 and saved["model"]["hidden"] == 16
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in x and np.isfinite(x["loss"]) for x in lines)
    assert (run / "model" / "model.safetensors").is_file()

    out = tmp_path / "x.npy"
    r = cli("sample", "--run", run, "--num", 64, "--steps", 5, "--sampler", "ddim", "--seed", 1, "--out", out)
    assert r.returncode == 0, r.stderr
    x = np.load(out)
    assert x.shape == (64, 32) and np.isfinite(x).all()
    # --denoise ends with W_B f(W_B^T x, T0) / beta(T0): exactly in the encoder's subspace, whereas
    # x_T0 keeps noise of variance sigma(T0) off it
    from latentdit.pipeline import LatentDiTPipeline

    W = LatentDiTPipeline.from_pretrained(run / "model").model.W_B.detach().double().numpy()
    out_d = tmp_path / "xd.npy"
    r = cli("sample", "--run", run, "--num", 64, "--steps", 5, "--sampler", "ddim", "--seed", 1, "--denoise",
            "--out", out_d)
    assert r.returncode == 0, r.stderr
    off = lambda a: np.abs(a - a @ W @ W.T).max()  # noqa: E731
    assert off(np.load(out_d).astype(np.float64)) < 1e-5 < 1e-2 < off(x.astype(np.float64))

    m = tmp_path / "metrics.json"
    r = cli("evaluate", "--run", run, "--out", m)
    assert r.returncode == 0, r.stderr
    metrics = json.loads(m.read_text())
    for key in ("subspace_error", "w2_latent", "w2_latent_reference", "off_subspace_var",
                "off_subspace_var_expected", "score_rel_error"):
        assert np.isfinite(metrics[key]), key
    _check_against_closed_forms(run, metrics)


def _check_against_closed_forms(run: Path, metrics: dict) -> None:
    """``latentdit evaluate``'s figures against what they must equal, computed here independently."""
    from scipy.stats import chi2

    from latentdit.build import build_ground_truth
    from latentdit.evaluation import run_config
    from latentdit.pipeline import LatentDiTPipeline

    model, cfg = LatentDiTPipeline.from_pretrained(run / "model").model, run_config(run)
    W = model.W_B.detach().double()
    B = build_ground_truth(cfg).B.double()
    assert metrics["subspace_error"] == pytest.approx(float(((W @ W.T - B @ B.T) ** 2).sum()), rel=1e-5, abs=1e-6)  # float32
    # Cor. 3.2.1 (iii): off W_B the score is exactly -x / sigma, so the samples' variance per orthogonal
    # direction is sigma(T0) = 1 - exp(-T0) (times (N - 1) / N for the mean removed), up to chi-square error
    T0, N, k = cfg.diffusion.T0, metrics["num_samples"], cfg.data.ambient_dim - cfg.encoder.latent_dim
    assert metrics["off_subspace_var_expected"] == pytest.approx(1 - np.exp(-T0), rel=1e-12)
    lo, hi = chi2.ppf([1e-4, 1 - 1e-4], (N - 1) * k) / (N * k)
    assert lo <= metrics["off_subspace_var"] / (1 - np.exp(-T0)) <= hi, metrics["off_subspace_var"]


@pytest.mark.slow
def test_learned_random_encoder_finds_the_subspace(tmp_path):
    """From a random W_B (expected subspace error 2 d0 (1 - d0 / D) = 7 for d0 = 4, D = 32), training the
    encoder on the Stiefel manifold must bring ||W_B W_B^T - B B^T||_F^2 well below it; a frozen or
    broken encoder would stay near 7."""
    run = tmp_path / "learned"
    r = cli("train", "--config", TINY, "--out", run, "--quiet", "--set", "encoder.init=random",
            "--set", "encoder.learn=true", "--set", "train.steps=300", "--set", "optim.lr=1e-2")
    assert r.returncode == 0, r.stderr
    m = tmp_path / "metrics.json"
    r = cli("evaluate", "--run", run, "--out", m)
    assert r.returncode == 0, r.stderr
    metrics = json.loads(m.read_text())
    _check_against_closed_forms(run, metrics)
    random_expected = 2 * 4 * (1 - 4 / 32)
    assert 1e-4 < metrics["subspace_error"] < 0.15 * random_expected, metrics["subspace_error"]


@pytest.mark.slow
def test_user_errors_exit_2_without_traceback(tmp_path):
    r = cli("sample", "--run", tmp_path / "missing", "--num", 4, "--out", tmp_path / "x.npy")
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0
    assert not (tmp_path / "x.npy").exists()
    r = cli("train", "--config", TINY, "--out", tmp_path / "r", "--set", "model.depht=2")
    assert r.returncode == 2 and "model.depth" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "r").exists()
    r = cli("--debug", "train", "--config", TINY, "--out", tmp_path / "r", "--set", "model.depht=2")
    assert r.returncode != 0 and "Traceback" in r.stderr


@pytest.mark.slow
def test_readme_test_command_prints_how_many_tests_passed():
    """README's (and CI's) `python -m pytest -q` must end with an "N passed" line, whatever pyproject's
    addopts hold (a second -q hides it)."""
    import re

    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "tests/test_config.py::test_defaults_validate_and_round_trip"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"^1 passed in [\d.]+s", r.stdout.strip().splitlines()[-1]), r.stdout
