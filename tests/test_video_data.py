"""Moving digits (latentdit.data.video) and the spatio-temporal patching (latentdit.models.reshape)."""

import numpy as np
import pytest
import torch

from latentdit.config import load_config
from latentdit.data.video import DIGIT, moving_mnist, reflect, trajectories
from latentdit.errors import ConfigError, DataError
from latentdit.firststage.video import video_patchify, video_unpatchify
from latentdit.output import save_clips_gif


def _rng(seed=0):
    return np.random.default_rng(seed)


def test_reflect_is_the_triangle_wave():
    """Closed form: inside [0, A] the identity, then mirrored at A and at 0 with period 2A."""
    A = 10.0
    q = np.array([0.0, 3.0, 10.0, 12.5, 20.0, 23.0, -2.0])
    assert np.allclose(reflect(q, A), [0.0, 3.0, 10.0, 7.5, 0.0, 3.0, 2.0])


def test_bounces_keep_the_digit_inside_the_canvas():
    pos, _ = trajectories(200, 2, 60, 40, (3.0, 9.0), _rng())
    assert pos.min() >= 0.0
    assert pos.max() <= 40 - DIGIT - 1  # the bilinear draw reaches one pixel further: still inside


def test_speed_is_constant_between_bounces():
    """Per axis the step is +-v_i exactly, except in the steps where that axis bounces (sign change)."""
    pos, vel = trajectories(100, 1, 40, 64, (2.0, 4.0), _rng(1))
    steps = np.diff(pos[:, 0], axis=1)  # (N, F-1, 2)
    v = np.abs(vel[:, 0])[:, None, :]  # (N, 1, 2)
    upper = 64 - DIGIT - 1
    q = pos[:, 0]
    # a step that starts and ends away from the walls by more than |v| cannot contain a bounce
    clear = (np.minimum(q[:, :-1], upper - q[:, :-1]) > v + 1e-9) & (np.minimum(q[:, 1:], upper - q[:, 1:]) > v + 1e-9)
    assert clear.mean() > 0.3
    assert np.allclose(np.abs(steps)[clear], np.broadcast_to(v, steps.shape)[clear], atol=1e-9)
    speeds = np.linalg.norm(vel[:, 0], axis=-1)
    assert speeds.min() >= 2.0 and speeds.max() <= 4.0
    bounced = np.sign(steps[:, 1:]) != np.sign(steps[:, :-1])
    assert bounced.any()  # 40 frames at >= 2 px/frame in a 35 px range: every clip bounces


@pytest.mark.slow
def test_same_seed_same_clips_and_exact_centroids():
    a = moving_mnist(6, frames=5, canvas=48, digits=2, seed=3)
    b = moving_mnist(6, frames=5, canvas=48, digits=2, seed=3)
    c = moving_mnist(6, frames=5, canvas=48, digits=2, seed=4)
    ca, cb = a.render(), b.render()
    assert torch.equal(ca, cb) and torch.equal(a.labels, b.labels)
    assert not torch.equal(ca, c.render())
    assert ca.shape == (6, 5, 48, 48) and 0.0 <= ca.min() and ca.max() <= 1.0
    one = moving_mnist(8, frames=6, canvas=64, seed=5)
    clips = one.render().double()
    g = torch.arange(64, dtype=torch.float64)
    mass = clips.sum((-1, -2))
    cy, cx = (clips.sum(-1) * g).sum(-1) / mass, (clips.sum(-2) * g).sum(-1) / mass
    truth = one.centroid_truth()[:, 0]  # the digit's own centroid moved by the trajectory
    assert torch.allclose(cy, truth[..., 0], atol=1e-4) and torch.allclose(cx, truth[..., 1], atol=1e-4)


def test_bad_sizes_are_one_line_errors():
    with pytest.raises(DataError, match="canvas"):
        moving_mnist(2, canvas=20)
    with pytest.raises(ConfigError, match="patch_t"):
        load_config(None, ["data.source=moving_mnist", "encoder.kind=autoencoder", "encoder.init=identity",
                           "data.frames=6", "model.patch_t=4"])
    with pytest.raises(ConfigError, match="identity"):
        load_config(None, ["data.source=moving_mnist", "encoder.kind=autoencoder"])


def test_video_patchify_inverse_and_token_order():
    z = torch.randn(2, 4, 3, 6, 8)  # (N, F, c, h, w)
    X = video_patchify(z, 2, 2)
    assert X.shape == (2, 2 * 3 * 4, 3 * 2 * 2 * 2)
    assert torch.equal(video_unpatchify(X, (4, 3, 6, 8), 2, 2), z)
    # token (T, R, C) = (1, 2, 3), entry (channel, frame, i, j) = (2, 1, 0, 1)
    T, R, C, ch, k, i, j = 1, 2, 3, 2, 1, 0, 1
    token = (T * 3 + R) * 4 + C
    entry = ((ch * 2 + k) * 2 + i) * 2 + j
    assert X[1, token, entry] == z[1, T * 2 + k, ch, R * 2 + i, C * 2 + j]
    # patch 1 x 1 x 1: tokens are the latent positions frame by frame, row-major, channels inside
    Y = video_patchify(z, 1, 1)
    assert torch.equal(Y[0, 1 * 48 + 5 * 8 + 7], z[0, 1, :, 5, 7])
    with pytest.raises(ValueError, match="patch_t"):
        video_patchify(z, 3, 2)


def test_save_clips_gif(tmp_path):
    from PIL import Image

    clips = torch.rand(3, 5, 8, 8)
    path = save_clips_gif(clips, tmp_path / "c.gif", scale=1)
    with Image.open(path) as im:
        assert im.n_frames == 5 and im.size == (2 * 9 + 1, 2 * 9 + 1)
    with pytest.raises(DataError):
        save_clips_gif(torch.rand(5, 8, 8), tmp_path / "bad.gif")
