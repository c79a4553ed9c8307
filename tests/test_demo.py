"""The real-data demo end to end (tiny, with a stand-in feature network), the Gaussian latent
baseline, classifier-free guidance, label dropout, and own data through the CLI with a config."""

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from latentdit.config import Config, load_config
from latentdit.diffusion import score_from_denoised
from latentdit.evaluation.baselines import GaussianLatentBaseline, retained_variance
from latentdit.firststage.linear import pca_basis
from latentdit.experiments.demo import DEMO_CONFIG, LINEAR_DEMO_CONFIG, main as demo_main
from latentdit.metrics import fid as fid_mod
from latentdit.models.guidance import GuidedDenoiser, balanced_labels
from latentdit.models.score import LatentScoreNet

ROOT = Path(__file__).resolve().parents[1]


class StubFeatures:
    """A cheap, deterministic stand-in for Inception: a fixed random ReLU layer on the pixels."""

    def __init__(self, *args, **kwargs):
        self.calls = 0

    def features(self, images, batch_size=32, progress=False):
        self.calls += 1
        x = torch.as_tensor(np.asarray(images), dtype=torch.float32).reshape(len(images), -1)
        g = torch.Generator().manual_seed(0)
        w = torch.randn(x.shape[1], 16, generator=g)
        return torch.relu(x @ w)


def test_demo_config_files_match_module():
    assert load_config(ROOT / "configs" / "mnist_ae.toml") == Config.from_dict(DEMO_CONFIG)
    assert load_config(ROOT / "configs" / "mnist.toml") == Config.from_dict(LINEAR_DEMO_CONFIG)
    cfg = Config.from_dict(DEMO_CONFIG)
    assert cfg.encoder.kind == "autoencoder" and cfg.encoder.init == "identity"
    a = cfg.autoencoder  # the whole 4 x 8 x 8 latent of the 32 x 32-padded digits
    assert cfg.encoder.latent_dim == a.channels * (32 // a.factor) ** 2 and (32 // a.factor) % cfg.model.patch == 0
    linear = Config.from_dict(LINEAR_DEMO_CONFIG)
    assert linear.encoder.kind == "linear" and linear.encoder.latent_dim == 64
    for c in (cfg, linear):
        assert c.data.conditional and c.sample.guidance > 1
        assert c.eval.num_samples >= 2000 and c.train.time_limit == 0  # the budget is train.steps alone


@pytest.mark.slow
def test_demo_quick_digits_writes_everything(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTDIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("latentdit.metrics.fid.InceptionFeatures", StubFeatures)
    out = tmp_path / "demo"
    rc = demo_main(["--out", str(out), "--data", "digits", "--encoder", "linear", "--quick", "--quiet",
                    "--baseline-fid", "--device", "cpu", "--set", "train.steps=10", "--set", "train.batch_size=32", "--set", "eval.num_samples=120",
                    "--set", "eval.steps=6"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    for key in ("fid", "fid_reference", "fid_gaussian_baseline", "classifier_accuracy", "classifier_test_accuracy",
                "train_seconds", "pca_retained_variance", "pca_retained_energy", "classifier_accuracy_unguided",
                "w2_data", "w2_data_reference", "w2_data_gaussian_baseline", "classifier_fd",
                "classifier_fd_reference", "classifier_fd_gaussian_baseline"):
        assert key in m and np.isfinite(m[key]), key
    assert m["num_samples"] == 120 and m["latent_dim"] == 36 and m["guidance"] == 2.0
    assert 0 < m["pca_retained_variance"] <= m["pca_retained_energy"] <= 1
    assert m["classifier_test_accuracy"] > 0.5  # a classifier trained on real digits works
    assert (out / "samples.png").is_file() and (out / "baseline.png").is_file()
    with np.load(out / "samples.npz") as z:
        assert z["x"].shape == (120, 64) and z["labels"].tolist() == balanced_labels(120, 10).tolist()
    assert list((tmp_path / "cache").glob("features_*.npy"))  # real features cached
    from PIL import Image

    with Image.open(out / "samples.png") as im:  # 10 rows (one per class) of 10 tiles
        w, h = im.size
    assert h > w * 0.9 and abs(h - w) < 0.2 * w


@pytest.mark.slow
def test_demo_quick_digits_autoencoder_records_its_floor(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTDIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("latentdit.metrics.fid.InceptionFeatures", StubFeatures)
    out = tmp_path / "demo"
    rc = demo_main(["--out", str(out), "--data", "digits", "--quick", "--quiet", "--device", "cpu",
                    "--set", "train.steps=6", "--set", "train.batch_size=32", "--set", "eval.num_samples=60",
                    "--set", "eval.steps=4", "--set", "autoencoder.epochs=1", "--set", "autoencoder.recon_samples=50"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    for key in ("fid", "recon_fid", "recon_mse", "classifier_accuracy", "classifier_accuracy_unguided",
                "classifier_fd_gaussian_baseline"):
        assert key in m and np.isfinite(m[key]), key
    assert "fid_gaussian_baseline" not in m  # its Inception pass only with --baseline-fid
    # 8 x 8 digits: a factor-2 autoencoder, 4 x 4 x 4 latent, the DiT on all of it in 2 x 2 patches
    assert m["latent_shape"] == [4, 4, 4] and m["latent_dim"] == 64 and m["recon_num"] == 50
    assert m["config"]["encoder"]["kind"] == "autoencoder" and m["config"]["autoencoder"]["factor"] == 2
    assert list(m)[:2] == ["fid", "recon_fid"]  # the floor next to the sample FID
    with np.load(out / "samples.npz") as z:
        assert z["x"].shape == (60, 64) and 0 <= z["x"].min() and z["x"].max() <= 16  # pixels, digits' units


def test_cached_features_reused(tmp_path):
    ext = StubFeatures()
    images = torch.rand(10, 8, 8)
    a = fid_mod.cached_features(images, ext, cache=tmp_path)
    b = fid_mod.cached_features(images, ext, cache=tmp_path)
    assert ext.calls == 1 and torch.equal(a, b)
    fid_mod.cached_features(images * 0.5, ext, cache=tmp_path)
    assert ext.calls == 2


def test_gaussian_baseline_matches_latent_covariance():
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(500, 3, generator=g) ** 3) @ torch.randn(3, 12, generator=g) + 0.3 * torch.randn(500, 12, generator=g)
    W, _ = pca_basis(x, 5)
    base = GaussianLatentBaseline.fit(x, W)
    h = x.double() @ W.double()
    assert torch.allclose(base.mean, h.mean(0), atol=1e-12)
    assert torch.allclose(base.cov, torch.cov(h.T), atol=1e-12)  # closed form: the data's latent covariance
    assert torch.allclose(base._root @ base._root.T, base.cov, atol=1e-10)
    s = base.sample(200_000, torch.Generator().manual_seed(1)).double()
    hs = s @ W.double()
    assert torch.allclose(hs @ W.double().T, s, atol=1e-4)  # samples lie in span(W_B)
    assert torch.allclose(torch.cov(hs.T), base.cov, atol=0.05 * base.cov.diagonal().max().item())
    assert torch.allclose(hs.mean(0), base.mean, atol=0.02 * base.cov.diagonal().max().sqrt().item())


def test_retained_variance_closed_form():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 6, generator=g) * torch.tensor([3.0, 2.0, 1.0, 0.5, 0.1, 0.1]) + 1.0
    W = torch.eye(6)[:, :2]
    r = retained_variance(x, W)
    xc = x.double() - x.double().mean(0)
    assert r["pca_retained_variance"] == pytest.approx(float(xc[:, :2].pow(2).sum() / xc.pow(2).sum()), rel=1e-9)
    assert r["pca_retained_energy"] == pytest.approx(float(x[:, :2].double().pow(2).sum() / x.double().pow(2).sum()),
                                                     rel=1e-9)
    assert retained_variance(x, torch.eye(6))["pca_retained_variance"] == pytest.approx(1.0)


def _tiny_conditional(num_classes=3, D=8, d0=4):
    cfg = Config.from_dict({"model": {"hidden": 16, "depth": 1, "heads": 2, "patch": 2, "num_classes": num_classes}})
    torch.manual_seed(0)
    model = LatentScoreNet(D, d0, **asdict(cfg.model)).eval()
    with torch.no_grad():  # adaLN-Zero starts at zero: randomise so that the label matters
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def test_guidance_on_whole_output_by_hand():
    model = _tiny_conditional()
    x, t = torch.randn(6, 8), torch.full((6,), 0.7)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    null = torch.full_like(y, 3)
    with torch.no_grad():
        s_c, s_u = model(x, t, y), model(x, t, null)
        assert not torch.allclose(s_c, s_u)  # the label changes the output
        for w in (0.0, 1.0, 2.5):
            guided = score_from_denoised(x, GuidedDenoiser(model, y, w)(x, t), t)  # guided on x0_hat
            by_hand = s_u + w * (s_c - s_u)  # the whole score, including the -x / sigma(t) term
            assert torch.allclose(guided, by_hand, atol=1e-4), w
        # a conditional model sampled without labels is its null-class (unconditional) model
        assert torch.allclose(score_from_denoised(x, GuidedDenoiser(model)(x, t), t), s_u, atol=1e-5)


@pytest.mark.slow
def test_training_drops_labels_to_the_null_class(tmp_path):
    from latentdit.train import Trainer

    cfg = Config.from_dict({"data": {"source": "digits", "conditional": True}, "encoder": {"latent_dim": 16},
                            "model": {"hidden": 16, "depth": 1, "heads": 2, "class_dropout": 0.25},
                            "train": {"batch_size": 512, "device": "cpu"}})
    tr = Trainer(cfg, tmp_path / "run", progress=False)
    seen = []
    # the labels the network is called with (forward(x_t, t, y, latent=True) from the loss)
    tr.model.register_forward_pre_hook(lambda net, args: seen.append(args[2].clone()))
    for _ in range(3):
        tr.train_step()
    y = torch.cat(seen)
    assert tr.model.num_classes == 10
    frac = (y == 10).float().mean().item()
    assert 0.18 < frac < 0.32  # ~ class_dropout of the labels are the null class
    assert y.min() >= 0 and y.max() <= 10


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "latentdit", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_own_images_and_vectors_via_cli_with_config_only(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i in range(40):  # mixed sizes, grayscale and RGB
        h, w = (12 + (i % 4) * 5, 10 + (i % 3) * 7)
        arr = (rng.random((h, w, 3)) * 255).astype(np.uint8)
        im = Image.fromarray(arr) if i % 2 else Image.fromarray(arr[..., 0])
        im.save(folder / f"img_{i}.png")
    vec = tmp_path / "vectors.npy"
    np.save(vec, rng.standard_normal((300, 3)) @ rng.standard_normal((3, 23)) + 5.0)
    tiny = ["--set", "train.steps=4", "--set", "train.checkpoint_every=4", "--set", "optim.warmup_steps=2",
            "--set", "train.batch_size=16", "--set", "model.hidden=16", "--set", "model.depth=1"]

    run = tmp_path / "run_images"
    r = _cli("train", "--config", ROOT / "configs" / "images.toml", "--out", run, "--quiet",
             "--set", f"data.path={folder}", "--set", "data.image_size=16", "--set", "encoder.latent_dim=16", *tiny)
    assert r.returncode == 0, r.stderr
    r = _cli("sample", "--run", run, "--num", 8, "--steps", 4, "--out", tmp_path / "img.npy")
    assert r.returncode == 0, r.stderr
    x = np.load(tmp_path / "img.npy")
    assert x.shape == (8, 16 * 16 * 3) and np.isfinite(x).all()  # mixed modes -> RGB, resized to 16 x 16

    run = tmp_path / "run_vectors"
    r = _cli("train", "--config", ROOT / "configs" / "vectors.toml", "--out", run, "--quiet",
             "--set", f"data.path={vec}", *tiny)
    assert r.returncode == 0, r.stderr
    r = _cli("sample", "--run", run, "--num", 10, "--steps", 4, "--out", tmp_path / "vec.npy")
    assert r.returncode == 0, r.stderr
    v = np.load(tmp_path / "vec.npy")
    assert v.shape == (10, 23) and np.isfinite(v).all()
    assert abs(v.mean() - 5.0) < 3.0  # back in the data's own units (standardisation undone)
    r = _cli("evaluate", "--run", run, "--out", tmp_path / "m.json", "--num", 40, "--steps", 4)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "m.json").read_text())
    assert {"w2_data", "w2_data_reference", "w2_data_gaussian_baseline", "pca_retained_variance"} <= set(m)
    assert "fid" not in m


def test_w2_equal_matches_optimal_transport():
    from latentdit.evaluation.baselines import w2_equal
    from latentdit.metrics.distances import w2

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(60, 5, generator=g), torch.randn(60, 5, generator=g) + 0.5
    assert w2_equal(a, b) == pytest.approx(w2(a, b), rel=1e-9)
    assert w2_equal(a, a) == pytest.approx(0.0, abs=1e-12)
