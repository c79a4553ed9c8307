"""Training on windows of clips (train.window_frames): the window batch, the network on a prefix of a
clip's tokens, the config checks and the trainer's two phases."""

import json
from pathlib import Path

import pytest
import torch

from latentdit.config import load_config
from latentdit.errors import ConfigError
from latentdit.models.reshape import Reshape
from latentdit.models.score import LatentScoreNet
from latentdit.train.batches import BatchSource, window_batch

ROOT = Path(__file__).resolve().parents[1]


def test_a_prefix_of_the_latent_is_the_prefix_of_the_tokens():
    R = Reshape(48, 4, "1d")
    h = torch.randn(3, 48)
    X = R(h)
    assert torch.equal(R(h[:, :20]), X[:, :5])
    assert torch.equal(R.inverse(X[:, :5]), h[:, :20])
    with pytest.raises(ValueError, match="prefix"):
        R(h[:, :18])  # not whole tokens
    with pytest.raises(ValueError, match="prefix"):
        R(torch.randn(1, 52))


def _net(attention: str) -> LatentScoreNet:
    torch.manual_seed(0)
    net = LatentScoreNet(48, 48, identity_encoder=True, patch=4, patching="1d", hidden=16, depth=2, heads=2,
                         mlp_ratio=2.0, attention=attention, pos_embed="sincos", token_grid=[3, 2, 2],
                         precondition_stats="diagonal", latent_mean=torch.randn(48), latent_var=torch.rand(48) + 0.5)
    for p in net.backbone.parameters():  # leave the zero initialisation, so that F is not 0
        torch.nn.init.normal_(p, std=0.3)
    return net


def test_the_network_on_a_window_is_the_whole_clip_network_on_its_tokens():
    """Without attention tokens are processed on their own, so f on the first two frame blocks equals
    the first 32 coordinates of f on the clip: the window sees the positions, the mean and the variance
    of those coordinates. With attention the other frames change the result."""
    h, t = torch.randn(2, 48), torch.tensor([0.3, 2.0])
    net = _net("none")
    with torch.no_grad():
        full, part = net.f(h, t), net.f(h[:, :32], t)
    assert part.shape == (2, 32)
    assert torch.allclose(part, full[:, :32], atol=1e-6)
    net = _net("exact")
    with torch.no_grad():
        assert (net.f(h[:, :32], t) - net.f(h, t)[:, :32]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="more than"):
        net.backbone(torch.randn(1, 13, 4), torch.zeros(1))


def test_window_batch_cuts_whole_frame_blocks_from_distinct_clips():
    n, D, stride = 64, 40, 5  # clips of 8 frame blocks of 5 coordinates
    x = torch.arange(n * D, dtype=torch.float32).reshape(n, D)
    y = torch.arange(n)
    src = BatchSource(x, y, 8, seed=0)
    xb, yb = window_batch(src, 4, 10, stride, generator=torch.Generator().manual_seed(1))
    assert xb.shape == (32, 10) and yb.shape == (32,)
    assert len(set(yb.tolist())) == 32  # four global batches of one epoch: distinct clips
    for row, label in zip(xb, yb):
        start = int(row[0]) - int(label) * D
        assert start % stride == 0 and 0 <= start <= D - 10
        assert torch.equal(row, x[label, start:start + 10])
    # every start of a frame block is drawn, uniformly
    src = BatchSource(x, y, 64, seed=0)
    starts = torch.cat([window_batch(src, 1, 10, stride, generator=torch.Generator().manual_seed(s))[0][:, 0]
                        for s in range(50)]).long() % D
    counts = torch.bincount(starts // stride, minlength=7)
    assert counts.shape == (7,) and counts.min() > 0.7 * 3200 / 7 and counts.max() < 1.3 * 3200 / 7
    with pytest.raises(ValueError, match="whole frame blocks"):
        window_batch(BatchSource(x, y, 8, seed=0), 1, 12, stride, generator=torch.Generator())


VIDEO = ["data.n=8", "data.frames=4", "data.canvas=32", "encoder.latent_dim=1024", "autoencoder.epochs=1",
         "train.window_frames=0", "train.window_steps=0",
         "train.batch_size=2", "optim.warmup_steps=1", "train.time_limit=0", "model.depth=1",
         "train.threads=1", "train.log_every=1"]


@pytest.mark.parametrize("sets, match", [
    (["train.window_frames=3", "train.window_steps=1"], "divisor"),
    (["train.window_frames=4", "train.window_steps=1"], "divisor"),
    (["model.patch_t=2", "train.window_frames=1", "train.window_steps=1"], "multiple of model.patch_t"),
    (["train.window_frames=2", "train.window_steps=0"], "window_steps"),
    (["train.window_frames=2", "train.window_steps=9", "train.steps=4"], "window_steps"),
])
def test_a_window_that_cannot_work_is_a_config_error(sets, match):
    with pytest.raises(ConfigError, match=match):
        load_config(ROOT / "configs" / "moving_mnist.toml", VIDEO + sets)
    with pytest.raises(ConfigError, match="moving_mnist"):
        load_config(ROOT / "configs" / "mnist.toml", ["train.window_frames=2", "train.window_steps=1"])


def test_training_on_windows_then_clips_resumes_to_the_same_weights(tmp_path):
    """Three window steps, then whole clips; a run stopped after step 3 resumes from its checkpoint at
    step 2 (inside the window phase) and ends with the weights and losses of an uninterrupted run."""
    from safetensors.torch import load_file

    from latentdit.train import TrainCallbacks, train
    from latentdit.train.firststage import prepare_first_stage

    cfg = load_config(ROOT / "configs" / "moving_mnist.toml", VIDEO + [
        "train.window_frames=2", "train.window_steps=3", "train.steps=4", "train.checkpoint_every=2"])

    class Stop(Exception):
        pass

    def die(step):
        if step == 3:
            raise Stop

    def fit(out, **kw):
        return train(cfg, out, progress=False, data=prepare_first_stage(cfg, out, progress=False), **kw)

    ref = fit(tmp_path / "a")
    with pytest.raises(Stop):
        fit(tmp_path / "b", callbacks=TrainCallbacks(on_step=die))
    run = fit(tmp_path / "b")
    logged = [json.loads(line) for line in (ref / "metrics.jsonl").read_text().splitlines()]
    steps = {r["step"]: r for r in logged if "loss" in r}
    assert [steps[k].get("window_frames") for k in (1, 2, 3, 4)] == [2, 2, 2, None]
    resumed = {r["step"]: r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
               if "loss" in r}
    assert resumed[4] == steps[4]["loss"] and resumed[3] == steps[3]["loss"]
    wa = load_file(ref / "model" / "model.safetensors")
    wb = load_file(run / "model" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
