"""The per-frame video first stage (latentdit.firststage.video) and the video path through train and sample."""

from pathlib import Path

import numpy as np
import pytest
import torch

from latentdit.firststage import ConvAutoencoder, FirstStage
from latentdit.config import load_config
from latentdit.data.normalise import Normalisation
from latentdit.firststage.video import VideoFirstStage, load_first_stage, video_patchify

ROOT = Path(__file__).resolve().parents[1]


def _stage(frames=4, patch_t=2, patch=2) -> VideoFirstStage:
    torch.manual_seed(0)
    ae = ConvAutoencoder(1, 4, 3, 8)
    frame = FirstStage(ae, image_shape=(32, 32), side=32, normalisation=Normalisation.fit(torch.zeros(1, 1), "none"),
                       pixel_range=(0.0, 1.0), scale=0.5, layout_patch=patch)
    return VideoFirstStage(frame, frames, patch_t)


def test_layout_is_per_frame_latents_in_spatio_temporal_patches():
    st = _stage()
    clips = torch.rand(2, 4, 32, 32)
    rows = st.encode_clips(clips)
    assert st.num_tokens == (4 // 2) * (8 // 2) ** 2 and st.token_dim == 3 * 2 * 2 * 2
    assert rows.shape == (2, st.num_tokens * st.token_dim)
    # each frame encoded on its own (no temporal mixing in the first stage), scaled by s = 0.5
    z = torch.stack([0.5 * st.frame_stage.ae.encode(clips[:, f, None]) for f in range(4)], 1)  # (N, F, c, h, w)
    assert torch.allclose(rows, video_patchify(z, 2, 2).reshape(2, -1), atol=1e-5)
    # reversing the frames of a clip reverses the frames inside the latent
    rev = st.encode_clips(clips.flip(1))
    assert torch.allclose(rev, video_patchify(z.flip(1), 2, 2).reshape(2, -1), atol=1e-5)
    out = st.decode_clips(rows)
    assert out.shape == clips.shape and 0.0 <= out.min() and out.max() <= 1.0
    assert torch.equal(st.decode_vectors(rows).reshape(out.shape), out)


def test_save_and_load_keep_the_video_layout(tmp_path):
    st = _stage()
    st.save(tmp_path)
    back = load_first_stage(tmp_path)
    assert isinstance(back, VideoFirstStage)
    assert (back.frames, back.patch_t, back.patch, back.video_shape) == (4, 2, 2, (4, 32, 32))
    clips = torch.rand(1, 4, 32, 32)
    assert torch.equal(back.encode_clips(clips), st.encode_clips(clips))
    st.frame_stage.save(tmp_path / "image")  # an image stage stays an image stage
    assert type(load_first_stage(tmp_path / "image")) is FirstStage


def test_pipeline_export_keeps_the_clips_layout(tmp_path):
    """A video pipeline's export records patch_t in the network's arguments, video_shape in the data
    record and the stage's kind; reloaded, it samples clips (N, F, H, W)."""
    import json

    from latentdit.models.score import LatentScoreNet
    from latentdit.pipeline import DataRecord, LatentDiTPipeline, SamplingDefaults

    st = _stage()
    model = LatentScoreNet(st.latent_dim, st.latent_dim, patching="1d", patch=st.token_dim, patch_t=2, hidden=16,
                           depth=1, heads=2, identity_encoder=True).eval()
    data = DataRecord(Normalisation.fit(torch.zeros(1, 1), "none"), (32, 32), (0.0, 1.0), None, (4, 32, 32))
    LatentDiTPipeline(model, 1e-3, 10.0, data, SamplingDefaults(sampler="ddim", steps=2), st).save_pretrained(tmp_path)
    head = json.loads((tmp_path / "config.json").read_text())
    assert head["model"]["patch_t"] == 2 and head["data"]["video_shape"] == [4, 32, 32]
    assert head["first_stage"]["kind"] == "per_frame_video_autoencoder"
    pipe = LatentDiTPipeline.from_pretrained(tmp_path)
    assert pipe.model.cfg.patch_t == 2 and pipe.video_shape == (4, 32, 32)
    assert isinstance(pipe.first_stage, VideoFirstStage)
    clips = pipe(3, seed=0)
    assert clips.shape == (3, 4, 32, 32) and 0.0 <= clips.min() and clips.max() <= 1.0
    assert torch.equal(pipe(3, seed=0, output_type="vectors"), clips.reshape(3, -1))


@pytest.mark.slow
def test_train_and_sample_write_clips_and_a_gif(tmp_path, capsys):
    from PIL import Image

    from latentdit.cli import main

    run = tmp_path / "run"
    sets = ["data.n=8", "data.frames=2", "train.window_frames=0", "train.window_steps=0", "data.canvas=32",
            "encoder.latent_dim=512", "autoencoder.epochs=1",
            "train.steps=2", "train.batch_size=2", "optim.warmup_steps=1", "train.checkpoint_every=0",
            "train.time_limit=0", "model.depth=1", "train.threads=1"]
    args = ["train", "--config", str(ROOT / "configs" / "moving_mnist.toml"), "--out", str(run), "--quiet"]
    assert main(args + [a for s in sets for a in ("--set", s)]) == 0
    assert main(["sample", "--run", str(run), "--num", "3", "--steps", "2", "--out", str(tmp_path / "c.npz")]) == 0
    z = np.load(tmp_path / "c.npz")
    assert z["x"].shape == (3, 2, 32, 32) and list(z["labels"]) == [0, 1, 2]
    with Image.open(tmp_path / "c.gif") as im:
        assert im.n_frames == 2
    capsys.readouterr()
    (tmp_path / "d.gif").mkdir()  # the GIF beside d.npy cannot be written
    # clips have no PNG grid; a path under a file; a GIF path that is a folder: one line, nothing written
    for bad in ("grid.png", "c.npz/x.npy", "d.npy"):
        assert main(["sample", "--run", str(run), "--num", "2", "--out", str(tmp_path / bad)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.strip().count("\n") == 0
    assert not (tmp_path / "grid.png").exists() and not (tmp_path / "d.npy").exists()


def test_reference_config_has_4096_tokens_and_poly_attention():
    from latentdit.experiments.video import CONFIG, video_config

    cfg = load_config(ROOT / "configs" / "moving_mnist.toml")
    d, a, m = cfg.data, cfg.autoencoder, cfg.model
    side = d.canvas // a.factor
    assert cfg.encoder.latent_dim == d.frames * a.channels * side * side
    tokens = (d.frames // m.patch_t) * (side // m.patch) ** 2
    assert tokens >= 4096 and cfg.encoder.latent_dim // tokens == a.channels * m.patch_t * m.patch ** 2
    assert m.attention == "poly" and m.qk_norm and cfg.data.conditional
    assert video_config(CONFIG, "poly", None, [], False) == cfg  # the experiment trains exactly this
    short = video_config(CONFIG, "exact", 44, [], False)
    assert short.encoder.latent_dim == 44 * a.channels * side * side and short.model.attention == "exact"


@pytest.mark.slow
def test_video_experiment_end_to_end_merges_its_keys_into_the_shared_summary(tmp_path):
    """The experiment's smoke run trains, samples, scores and times; its headline keys land in the
    JSON and in the shared summary beside the ground-truth part's keys, each part with its provenance."""
    import json

    from latentdit.experiments.video import main

    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"gt_tokens": 4096, "provenance_by_part": {"gt": {"command": "x"}}}))
    assert main(["--out", str(tmp_path / "v"), "--smoke", "--no-fid", "--time-repeats", "1", "--set", "train.threads=1",
                 "--json", str(tmp_path / "video.json"), "--summary", str(summary)]) == 0
    top = json.loads((tmp_path / "video.json").read_text())
    merged = json.loads(summary.read_text())
    assert merged["gt_tokens"] == 4096 and set(merged["provenance_by_part"]) == {"gt", "video"}
    assert top["video_tokens"] == merged["video_tokens"] == 64  # 4 frames of 4 x 4 patches of 2 x 2 latent positions
    assert 0.0 <= merged["video_accuracy"] <= 1.0 and 0.0 <= merged["video_identity_consistency"] <= 1.0
    assert merged["video_speed_w1_rel"] >= 0.0
    assert merged["video_poly_speedup_train"] > 0 and (tmp_path / "v" / "samples.gif").exists()
    rep = json.loads((tmp_path / "v" / "poly_F4.json").read_text())  # x0 errors of the three models per t
    # the timed training steps see whole clips although the smoke config trains on 2-frame windows first
    assert rep["timing"]["train_tokens"] == {"poly": 64, "exact": 64}
    assert main(["--time-only", str(tmp_path / "v" / "run"), "--out", str(tmp_path / "t"), "--time-repeats", "1",
                 "--set", "train.threads=2", "--summary", str(summary)]) == 0
    again = json.loads((tmp_path / "t" / "timing.json").read_text())
    assert again["timing"]["train_tokens"] == {"poly": 64, "exact": 64} and again["provenance"]["command"]
    assert again["overrides"] == ["train.threads=2"] and again["timing"]["threads"] == 2  # the run trained on 1
    merged = json.loads(summary.read_text())  # the re-timing's keys, under their own part
    assert merged["video_poly_speedup_train"] == again["timing"]["speedup_train"]
    assert set(merged["provenance_by_part"]) == {"gt", "video", "video_timing"} and merged["video_accuracy"] == top["video_accuracy"]
    assert all(len(rep[f"denoise_mse_{k}"]) == len(rep["denoise_t"]) for k in ("trained", "init", "gaussian"))
    fs = rep["eval"]["first_stage"]  # the first stage alone: reconstructions of real clips
    assert min(fs["recon_mse"], fs["recon_digit_mse"]) >= 0.0 and 0.0 <= fs["recon_accuracy"] <= 1.0


def test_build_model_reads_the_clip_token_grid():
    """A video first stage with W_B = I: the network's token grid is (frame blocks, rows, cols) of the
    stage's spatio-temporal patches, and sin-cos positions are laid on it."""
    from latentdit.build import TrainData, build_model
    from latentdit.config import Config, apply_overrides, read_config_file
    from latentdit.models.blocks import sincos_table

    st = _stage(frames=4, patch_t=2, patch=2)  # latent 3 x 8 x 8 per frame: 2 x 4 x 4 tokens of 24
    d = apply_overrides(read_config_file(ROOT / "configs" / "moving_mnist.toml"),
                        ["data.frames=4", "train.window_frames=0", "train.window_steps=0", "data.canvas=32",
                         f"encoder.latent_dim={st.latent_dim}", "model.patch=2",
                         "model.patch_t=2", "model.hidden=16", "model.depth=1", "model.heads=2",
                         "model.pos_embed=sincos"])
    x = st.encode_clips(torch.rand(3, 4, 32, 32))
    m = build_model(Config.from_dict(d), TrainData(x, torch.arange(3), 10, first_stage=st))
    assert st.token_grid == (2, 4, 4) and m.config.token_grid == [2, 4, 4]
    assert torch.equal(m.backbone.pos, sincos_table((2, 4, 4), 16))


def test_frame_crops_hold_the_digit():
    """autoencoder.crop: each training window is a 32 x 32 part of its frame that holds the digit's ink
    (centred on the true centroid, jittered by at most 6 pixels)."""
    from latentdit.data.video import moving_mnist
    from latentdit.train.firststage import _frame_data

    video = moving_mnist(6, frames=4, canvas=64, seed=3)
    whole, crops = _frame_data(video, 20, 0, 32)
    assert crops.image_shape == (32, 32) and whole.image_shape == (64, 64) and len(crops.x) == len(whole.x) == 20
    ink = crops.x.sum(1) / whole.x.sum(1)
    assert ink.max() <= 1.0 + 1e-6 and ink.min() > 0.8, ink
    same, _ = _frame_data(video, 20, 0)  # the whole frames do not depend on the crop
    assert torch.equal(same.x, whole.x)


@pytest.mark.parametrize("flag", ["--time-only", "--check-stage"])
def test_video_tools_on_a_missing_run_give_one_line(tmp_path, flag):
    """A run directory that is not one is a one-line error (exit 2), not a traceback."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "latentdit.experiments.video", flag, str(tmp_path / "nope"),
                        "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error: ") and "no config.json" in r.stderr
    assert not (tmp_path / "o").exists()
