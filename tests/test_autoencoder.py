"""The learned first stage (encoder.kind = "autoencoder"): the unit-variance scale, training, the
latent patches, exact resume, the export round trip and own image folders from a config."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from latentdit.firststage import ConvAutoencoder, FirstStage, latent_scale, padded_side
from latentdit.train.firststage import prepare_first_stage, train_first_stage
from latentdit.evaluation.firststage import reconstruction_mse
from latentdit.build import build_data
from latentdit.config import Config
from latentdit.data.normalise import Normalisation
from latentdit.errors import ConfigError
from latentdit.firststage.stage import latent_patchify, latent_unpatchify
from latentdit.models.reshape import Reshape

ROOT = Path(__file__).resolve().parents[1]


def _cfg(**ae) -> Config:
    """Digits (8 x 8) through a tiny factor-2 autoencoder: a 4 x 4 x 4 latent, the DiT on all of it."""
    return Config.from_dict({
        "data": {"source": "digits", "n": 256, "conditional": True},
        "encoder": {"kind": "autoencoder", "init": "identity", "latent_dim": 64},
        "autoencoder": {"factor": 2, "channels": 4, "width": 8, "epochs": 2, "batch_size": 32, **ae},
        "model": {"hidden": 16, "depth": 1, "heads": 2, "patch": 2},
        "train": {"steps": 6, "batch_size": 32, "threads": 1, "checkpoint_every": 3, "device": "cpu"},
        "sample": {"steps": 3}})


def test_latent_scale_is_one_over_the_std_of_a_linear_gaussian_latent():
    # z = A x + b with x ~ N(0, I): entry i has mean b_i and variance ||A_i||^2, so the pooled
    # variance of all entries is mean_i ||A_i||^2 + var_i(b_i)
    g = torch.Generator().manual_seed(0)
    A = torch.randn(6, 10, generator=g, dtype=torch.float64) * torch.linspace(0.2, 3.0, 6, dtype=torch.float64)[:, None]
    b = torch.linspace(-1.0, 2.0, 6, dtype=torch.float64)
    x = torch.randn(200_000, 10, generator=g, dtype=torch.float64)
    z = x @ A.T + b
    pooled = A.pow(2).sum(1).mean() + b.var(correction=0)
    assert latent_scale(z) == pytest.approx(float(pooled.rsqrt()), rel=5e-3)
    assert latent_scale(2.0 * z) == pytest.approx(latent_scale(z) / 2, rel=1e-9)
    with pytest.raises(ValueError, match="constant"):
        latent_scale(torch.ones(5, 3))


@pytest.mark.parametrize("factor,channels,side", [(1, 2, 8), (2, 4, 8), (4, 3, 32), (8, 4, 32)])
def test_encode_decode_shapes(factor, channels, side):
    ae = ConvAutoencoder(3, factor, channels, 4)
    img = torch.rand(5, 3, side, side)
    z = ae.encode(img)
    assert z.shape == (5, channels, side // factor, side // factor)
    out = ae.decode(z)
    assert out.shape == img.shape and out.min() >= 0 and out.max() <= 1


def test_first_stage_rows_pad_and_crop_images():
    # 28 x 28 RGB rows -> padded to 32 (next multiple of 2f = 8) -> a 4 x 8 x 8 latent -> 28 x 28 rows
    assert padded_side((28, 28), 4) == 32 and padded_side((8, 8), 2) == 8 and padded_side((28, 28, 3), 4, 40) == 40
    norm = Normalisation("minmax", torch.tensor(0.5), torch.tensor(0.5))
    stage = FirstStage(ConvAutoencoder(3, 4, 4, 4), image_shape=(28, 28, 3), side=32, normalisation=norm,
                       pixel_range=(0.0, 1.0), scale=2.0, layout_patch=2)
    x = torch.rand(7, 28 * 28 * 3) * 2 - 1
    img = stage.images_from_rows(x)
    assert img.shape == (7, 3, 32, 32)
    # row-major (H, W, C) rows: pixel (r, c) channel k sits at (r * 28 + c) * 3 + k; padding repeats the edge
    assert float(img[2, 1, 5, 7]) == pytest.approx(float(x[2, (5 * 28 + 7) * 3 + 1]) * 0.5 + 0.5)
    assert torch.equal(img[:, :, 30, :], img[:, :, 27, :]) and torch.equal(img[:, :, :, 31], img[:, :, :, 27])
    torch.testing.assert_close(stage.rows_from_images(img), x)  # crop + renormalise inverts it
    v = stage.encode_vectors(x)
    assert v.shape == (7, 4 * 8 * 8) and stage.latent_dim == 256
    assert stage.decode_vectors(v).shape == (7, 28 * 28 * 3)


def test_latent_patches_by_hand_and_as_the_1d_reshape():
    """latent_patchify against slicing by hand; its inverse and the 1-D reshape on the patch layout are
    implementation checks (exact permutations)."""
    g = torch.Generator().manual_seed(0)
    c, h, w, p = 3, 4, 6, 2
    z = torch.randn(2, c, h, w, generator=g)
    X = latent_patchify(z, p)
    assert X.shape == (2, (h // p) * (w // p), c * p * p)
    for r in range(h // p):
        for q in range(w // p):
            by_hand = z[:, :, r * p:(r + 1) * p, q * p:(q + 1) * p].reshape(2, -1)  # (channel, i, j)
            assert torch.equal(X[:, r * (w // p) + q], by_hand)
    assert torch.equal(latent_unpatchify(X, (c, h, w), p), z)
    R = Reshape(c * h * w, c * p * p, "1d")
    assert torch.equal(R(X.reshape(2, -1)), X)
    with pytest.raises(ValueError, match="patch=4"):
        latent_patchify(z, 4)


@pytest.mark.slow
def test_a_few_steps_reconstruct_better_than_at_init(tmp_path):
    cfg = _cfg(epochs=6, lr=3e-3)
    data = build_data(cfg)
    torch.manual_seed(0)
    ae = ConvAutoencoder(1, 2, 4, 8)
    init = FirstStage(ae, image_shape=(8, 8), side=8, normalisation=data.loaded.norm, pixel_range=(0.0, 16.0))
    before = reconstruction_mse(init, data.loaded)
    stage = train_first_stage(cfg, data, tmp_path / "ae")
    after = reconstruction_mse(stage, data.loaded)
    assert after < 0.5 * before, (before, after)
    v = stage.encode_vectors(data.x)
    assert float(v.double().std(correction=0)) == pytest.approx(1.0, rel=1e-4)  # implementation check: the scale


@pytest.mark.slow
def test_first_stage_resume_equals_an_uninterrupted_run(tmp_path):
    cfg = _cfg(checkpoint_every=3)  # 2 epochs of 8 steps
    data = build_data(cfg)
    full = train_first_stage(cfg, data, tmp_path / "full")

    class Stop(Exception):
        pass

    def die(step):
        if step == 5:
            raise Stop

    with pytest.raises(Stop):
        train_first_stage(cfg, data, tmp_path / "cut", on_step=die)
    assert sorted(p.name for p in (tmp_path / "cut" / "checkpoints").glob("*.pt")) == ["step_00000003.pt"]
    resumed = train_first_stage(cfg, data, tmp_path / "cut")
    a, b = full.ae.state_dict(), resumed.ae.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a) and resumed.scale == full.scale
    again = train_first_stage(cfg, data, tmp_path / "cut")  # finished: loaded, not retrained
    assert again.scale == full.scale and torch.equal(again.ae.state_dict()["decoder.0.weight"], a["decoder.0.weight"])
    changed = Config.from_dict({**cfg.to_dict(), "autoencoder": {**cfg.to_dict()["autoencoder"], "width": 4}})
    with pytest.raises(Exception, match="different"):
        train_first_stage(changed, data, tmp_path / "cut")


def test_first_stage_training_seconds_are_summed_over_resumed_segments(tmp_path, monkeypatch):
    """A training clock that moves 10 s per step: cut at step 5 (checkpoint at 3) and resumed, the
    stage records 3 + 13 steps of training, 160 s; the 2 steps after the checkpoint count once."""
    from latentdit.train import checkpoint

    class Clock:
        now = 0.0

        def time(self):
            return self.now

    clock = Clock()
    monkeypatch.setattr(checkpoint, "time", clock)

    class Stop(Exception):
        pass

    def tick(step):
        clock.now += 10.0
        if cut and step == 5:
            raise Stop

    cfg, cut = _cfg(checkpoint_every=3), True  # 2 epochs of 8 steps
    data = build_data(cfg)
    with pytest.raises(Stop):
        train_first_stage(cfg, data, tmp_path / "cut", on_step=tick)
    cut = False
    clock.now += 1000.0  # between the two processes: not training
    assert train_first_stage(cfg, data, tmp_path / "cut", on_step=tick).train_seconds == 160.0


@pytest.mark.slow
def test_export_round_trip_gives_identical_pixels(tmp_path):
    from latentdit.build import make_pipeline
    from latentdit.pipeline import LatentDiTPipeline
    from latentdit.train import Trainer

    cfg = _cfg()
    run = tmp_path / "run"
    data = prepare_first_stage(cfg, run, progress=False)
    assert data.x.shape == (256, 64) and data.first_stage.layout_patch == 2
    tr = Trainer(cfg, run, data=data, progress=False)
    tr.fit()
    assert tr.model.reshape.num_tokens == 4 and tr.model.reshape.token_dim == 16  # 2 x 2 patches of 4 channels
    memory = make_pipeline(tr.ema, cfg, tr.data)
    disk = LatentDiTPipeline.from_pretrained(run)
    assert json.loads((run / "model" / "config.json").read_text())["first_stage"]["weights"] == "autoencoder.safetensors"
    labels = torch.arange(10)
    a, b = memory(10, seed=3, labels=labels), disk(10, seed=3, labels=labels)
    assert a.shape == (10, 1, 8, 8) and torch.equal(a, b)  # 8 x 8 digits, channel first
    assert a.min() >= 0 and a.max() <= 16  # decoded pixels in the digits' own units


def test_autoencoder_config_errors_name_their_keys():
    with pytest.raises(ConfigError, match="encoder.kind"):
        Config.from_dict({"encoder": {"kind": "vae"}})
    with pytest.raises(ConfigError, match="needs image data"):
        Config.from_dict({"encoder": {"kind": "autoencoder"}})  # data.source = gmm
    with pytest.raises(ConfigError, match="autoencoder.factor"):
        Config.from_dict({"data": {"source": "digits"}, "autoencoder": {"factor": 3}})
    with pytest.raises(ConfigError, match="model.patch=3"):
        prepare_first_stage(Config.from_dict({**_cfg().to_dict(), "model": {"patch": 3}}), "/nonexistent/run")


@pytest.mark.slow
def test_evaluate_an_autoencoder_run_decodes_samples_and_the_latent_baseline(tmp_path):
    from latentdit.evaluation import evaluate_run
    from latentdit.train import train
    from test_demo import StubFeatures

    run = tmp_path / "run"
    cfg = _cfg(channels=2)  # a 2 x 4 x 4 latent: 32 coordinates for 64 pixels
    cfg = Config.from_dict({**cfg.to_dict(), "encoder": {**cfg.to_dict()["encoder"], "latent_dim": 32}})
    train(cfg, run, progress=False, data=prepare_first_stage(cfg, run, progress=False))
    m = evaluate_run(run, num_samples=40, steps=3, extractor=StubFeatures(), feature_cache=False,
                     classifier_epochs=1)
    for key in ("fid", "fid_gaussian_baseline", "classifier_accuracy", "classifier_accuracy_unguided",
                "w2_data", "w2_data_gaussian_baseline"):
        assert np.isfinite(m[key]), key
    assert m["latent_dim"] == 32 and m["dim"] == 64 and m["pca_retained_variance"] == pytest.approx(1.0)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "latentdit", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_own_png_folder_trains_and_samples_with_the_autoencoder_from_a_config(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i in range(100):  # the folder of 100 PNGs, mixed sizes, RGB and grayscale
        arr = (rng.random((12 + i % 5, 14 + i % 3, 3)) * 255).astype(np.uint8)
        Image.fromarray(arr if i % 2 else arr[..., 0]).save(folder / f"im_{i}.png")
    run = tmp_path / "run"
    r = _cli("train", "--config", ROOT / "configs" / "images_ae.toml", "--out", run, "--quiet",
             "--set", f"data.path={folder}", "--set", "data.image_size=16", "--set", "encoder.latent_dim=64",
             "--set", "autoencoder.epochs=2", "--set", "autoencoder.batch_size=8", "--set", "train.steps=3",
             "--set", "train.batch_size=8", "--set", "model.hidden=16", "--set", "model.depth=1",
             "--set", "optim.warmup_steps=1")
    assert r.returncode == 0, r.stderr
    assert (run / "autoencoder" / "autoencoder.safetensors").is_file()
    assert (run / "model" / "autoencoder.safetensors").is_file()
    r = _cli("sample", "--run", run, "--num", 6, "--steps", 3, "--out", tmp_path / "x.npy")
    assert r.returncode == 0, r.stderr
    x = np.load(tmp_path / "x.npy")
    assert x.shape == (6, 16 * 16 * 3) and np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1


@pytest.mark.slow
def test_pca_inside_the_autoencoder_latent(tmp_path):
    """encoder.init = "pca" with latent_dim < c h w: the paper's W_B on top of the learned latent."""
    from latentdit.pipeline import LatentDiTPipeline
    from latentdit.train import train

    d = _cfg().to_dict()
    d["encoder"].update(init="pca", latent_dim=16)
    run = tmp_path / "run"
    cfg = Config.from_dict(d)
    train(cfg, run, progress=False, data=prepare_first_stage(cfg, run, progress=False))
    pipe = LatentDiTPipeline.from_pretrained(run)
    W = pipe.model.W_B
    assert pipe.model.ambient_dim == 64 and W.shape == (64, 16)  # D = c h w of the 4 x 4 x 4 latent
    torch.testing.assert_close(W.T @ W, torch.eye(16), atol=1e-5, rtol=0)
    assert pipe.model.reshape.mode == "2d" and pipe.first_stage.layout_patch == 1  # 4 x 4 grid, 2 x 2 patches
    x = pipe(10, seed=0, labels=torch.arange(10))
    assert x.shape == (10, 1, 8, 8) and torch.isfinite(x).all()  # 8 x 8 digits, channel first
