"""End-to-end command line: train -> sample -> evaluate on a tiny config, and exit-2 errors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.toml"


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "latentdit", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


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
    from latentdit.pipeline import from_pretrained

    W = from_pretrained(run / "model")[0].W_B.detach().double().numpy()
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
    # PCA-initialised frozen encoder on 512 clean points recovers the 4-dim subspace almost exactly
    assert metrics["subspace_error"] < 0.05


def test_user_errors_exit_2_without_traceback(tmp_path):
    r = cli("sample", "--run", tmp_path / "missing", "--num", 4, "--out", tmp_path / "x.npy")
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0
    assert not (tmp_path / "x.npy").exists()
    r = cli("train", "--config", TINY, "--out", tmp_path / "r", "--set", "model.depht=2")
    assert r.returncode == 2 and "model.depth" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "r").exists()
    r = cli("--debug", "train", "--config", TINY, "--out", tmp_path / "r", "--set", "model.depht=2")
    assert r.returncode != 0 and "Traceback" in r.stderr
