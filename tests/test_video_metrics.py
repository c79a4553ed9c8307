"""Motion and identity metrics of clips (latentdit.evaluation.video) on synthetic clips of known motion."""

import math

import numpy as np
import pytest
import torch

from latentdit.data.video import DIGIT, render, trajectories
from latentdit.evaluation.video import (centroids, constant_velocity, crops, identity_metrics, motion_metrics,
                                        speeds, temporal_metrics, w1_1d)


def _ring() -> np.ndarray:
    """A symmetric 28 x 28 'digit' (a ring) with its centroid at the box centre (13.5, 13.5)."""
    y, x = np.mgrid[0:DIGIT, 0:DIGIT] - (DIGIT - 1) / 2
    r = np.hypot(y, x)
    return ((r > 6) & (r < 10)).astype(np.float32)


def _clip(positions: np.ndarray, canvas: int = 64) -> torch.Tensor:
    return torch.from_numpy(render(_ring(), positions, canvas))


def test_integer_velocity_has_that_centroid_speed():
    """A digit moved by (3, -2) pixels per frame: centroid speed sqrt(13) in every step."""
    F = 8
    pos = np.array([[5.0 + 3 * t, 30.0 - 2 * t] for t in range(F)])
    clip = _clip(pos)[None]
    s = speeds(centroids(clip))
    assert torch.allclose(s, torch.full_like(s, math.sqrt(13)), atol=1e-9)
    c = centroids(clip)[0]
    assert torch.allclose(c, torch.from_numpy(pos) + (DIGIT - 1) / 2, atol=1e-9)


def test_fractional_velocity_is_exact_with_bilinear_drawing():
    F = 6
    v = np.array([1.3, 0.45])
    pos = np.array([[4.0, 9.0] + v * t for t in range(F)])
    s = speeds(centroids(_clip(pos)[None], threshold=0.0))
    assert torch.allclose(s, torch.full_like(s, float(np.linalg.norm(v))), atol=1e-5)


def test_constant_velocity_between_bounces():
    pos, _ = trajectories(20, 1, 16, 64, (2.0, 4.0), np.random.default_rng(0))
    clips = torch.stack([_clip(p) for p in pos[:, 0]])
    assert bool(constant_velocity(centroids(clips, threshold=0.0)).all())
    rng = np.random.default_rng(1)
    jitter = torch.stack([_clip(rng.uniform(0, 35, size=(16, 2))) for _ in range(20)])
    assert constant_velocity(centroids(jitter)).double().mean() < 0.2
    stop = pos[0, 0].copy()
    stop[8:] = stop[7]  # halts halfway: not a constant velocity
    assert not bool(constant_velocity(centroids(_clip(stop)[None]))[0])
    still = np.repeat(pos[0, 0, :1], 16, axis=0)  # standing still is not moving
    assert not bool(constant_velocity(centroids(_clip(still)[None]))[0])


def test_w1_closed_forms():
    assert math.isclose(w1_1d([0.0, 0.0, 0.0], [2.0, 2.0, 2.0]), 2.0)
    grid = np.arange(10.0)
    assert math.isclose(w1_1d(grid, grid + 0.5), 0.5)
    assert math.isclose(w1_1d([0.0, 1.0], [0.0]), 0.5)
    assert w1_1d(grid, grid[::-1]) == 0.0


def test_motion_metrics_of_a_clip_set_against_itself_and_slower():
    pos, vel = trajectories(10, 1, 8, 64, (2.0, 2.0), np.random.default_rng(2))
    clips = torch.stack([_clip(p) for p in pos[:, 0]])
    m = motion_metrics(clips, clips, threshold=0.0)
    assert m["speed_w1"] < 1e-9 and m["constant_velocity"] == 1.0
    # the same motions at half speed, never near a wall long enough to bounce twice: W1 about 1 px
    half = trajectories(10, 1, 8, 64, (1.0, 1.0), np.random.default_rng(2))[0]
    slow = torch.stack([_clip(p) for p in half[:, 0]])
    rel = motion_metrics(slow, clips, threshold=0.0)["speed_w1_rel"]
    assert 0.3 < rel < 0.55  # speeds 1 against 2, except at bounce steps


def test_crops_recover_the_digit_and_identity_metrics():
    pos = np.array([[3.0, 20.0], [10.0, 25.0]])
    clip = _clip(pos)[None]
    cut = crops(clip, centroids(clip))
    assert torch.equal(cut[0, 0], torch.from_numpy(_ring())) and torch.equal(cut[0, 1], torch.from_numpy(_ring()))
    pred = torch.tensor([[1, 1, 1], [2, 2, 3], [4, 4, 4]])
    m = identity_metrics(pred, torch.tensor([1, 2, 5]))
    assert math.isclose(m["accuracy"], 5 / 9)
    assert math.isclose(m["identity_consistency"], 2 / 3)
    assert math.isclose(m["identity_consistency_labelled"], 1 / 3)


def test_temporal_metrics_against_brute_force_orders_and_pairs():
    """The shuffled agreement is the mean over all orders of each clip's frames, and the pair mean of
    the shape ratio is the mean over all ordered pairs s != t (enumerated, not the closed forms)."""
    import itertools
    g = torch.Generator().manual_seed(3)
    N, F = 3, 5
    pred = torch.randint(0, 3, (N, F), generator=g)
    crop = torch.randn(N, F, 4, 4, generator=g, dtype=torch.float64)
    m = temporal_metrics(pred, crop)
    orders = list(itertools.permutations(range(F)))
    shuffled = [np.mean([float((p[list(o)][1:] == p[list(o)][:-1]).double().mean()) for o in orders]) for p in pred]
    agree = [float((p[1:] == p[:-1]).double().mean()) for p in pred]
    a = crop.reshape(N, F, -1)
    ratio = [np.mean([float((a[i, t + 1] - a[i, t]).pow(2).sum()) for t in range(F - 1)])
             / np.mean([float((a[i, s] - a[i, t]).pow(2).sum()) for s in range(F) for t in range(F) if s != t])
             for i in range(N)]
    assert m["class_agreement_shuffled"] == pytest.approx(np.mean(shuffled), rel=1e-12)
    assert m["class_agreement"] == pytest.approx(np.mean(agree), rel=1e-12)
    excess = np.subtract(agree, shuffled)
    assert m["class_agreement_excess"] == pytest.approx(excess.mean(), abs=1e-12)
    assert m["class_agreement_excess_se"] == pytest.approx(excess.std(ddof=1) / np.sqrt(N), rel=1e-9)
    assert m["shape_step_ratio"] == pytest.approx(np.mean(ratio), rel=1e-12)


def test_temporal_metrics_of_a_kept_shape_and_of_alternating_classes():
    """A clip that keeps one shape and class: agreement 1 (= shuffled), ratio 0. Alternating classes
    0, 1, 0, 1: agreement 0 against a shuffled 2 * 2 / 12 = 1/3; a smooth drift has ratio < 1."""
    keep = temporal_metrics(torch.zeros(2, 6, dtype=torch.long), torch.ones(2, 6, 3, 3))
    assert keep["class_agreement"] == keep["class_agreement_shuffled"] == 1.0 and keep["shape_step_ratio"] == 0.0
    alt = temporal_metrics(torch.tensor([[0, 1, 0, 1]]), torch.arange(4.0).reshape(1, 4, 1, 1))
    assert alt["class_agreement"] == 0.0 and alt["class_agreement_shuffled"] == pytest.approx(1 / 3)
    # a linear drift a_t = t: steps 1, pairs mean |s - t|^2 over s != t = (6 + 16 + 18) / 12 at F = 4
    assert alt["shape_step_ratio"] == pytest.approx(12 / 40)
