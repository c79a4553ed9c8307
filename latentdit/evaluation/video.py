"""Metrics of generated clips of moving digits (no I3D weights ship offline, so no FVD).

- Per-frame FID: Inception features of frames of generated clips against frames of real clips
  (:func:`latentdit.metrics.fid.compute_fid`, the image path).
- Per-frame classifier accuracy: the MNIST classifier (:func:`latentdit.metrics.classifier.train_classifier`
  on the 28 x 28 digits) applied to a 28 x 28 crop around each frame's pixel-mass centroid; the
  fraction of frames assigned the conditioned class.
- Identity consistency: the fraction of clips whose frames the classifier assigns to one class.
  At F frames it needs a per-frame accuracy near 1: frames read independently with accuracy a keep
  one class with probability about a^F.
- Temporal coherence (:func:`temporal_metrics`, a diagnostic that does not need accurate frames):
  how often consecutive frames get the same class, against the rate expected if the clip's frames
  came in a random order (the same classes, no temporal structure); and the squared change of the
  centred digit crop from one frame to the next over its mean between two random frames of the
  clip (1: no more alike than random frames; 0: the shape is kept).
- Motion, from each frame's centroid c_t of the pixel mass max(x - threshold, 0):
  the speeds |c_{t+1} - c_t| (pixels per frame), whose distribution is compared with the real
  clips' by the 1-D Wasserstein-1 distance W1 = int |F_gen(s) - F_real(s)| ds, reported relative to
  the mean real speed; and the fraction of clips that move with constant velocity between bounces
  (:func:`constant_velocity`).
Every figure is computed on real clips too (a second real set), the floor a model is held to.
With several digits per clip the centroid is that of their total mass; the motion metrics are
meant for one digit per clip.
"""

from __future__ import annotations

import numpy as np
import torch

from latentdit.data.video import DIGIT
from latentdit.metrics.classifier import classify
from latentdit.metrics.fid import InceptionFeatures, fid_from_features

THRESHOLD = 0.1  # pixel values below this carry no mass (background noise of generated frames)


def centroids(clips: torch.Tensor, threshold: float = THRESHOLD) -> torch.Tensor:
    """Pixel-mass centroids (N, F, 2) (row, col) of clips (N, F, H, W); an empty frame gives the canvas centre."""
    m = (clips.double() - threshold).clamp_min(0.0)
    H, W = clips.shape[-2:]
    total = m.sum((-1, -2))
    rows = (m.sum(-1) * torch.arange(H, dtype=torch.float64)).sum(-1)
    cols = (m.sum(-2) * torch.arange(W, dtype=torch.float64)).sum(-1)
    c = torch.stack([rows, cols], -1) / total.clamp_min(1e-12)[..., None]
    centre = torch.tensor([(H - 1) / 2, (W - 1) / 2], dtype=torch.float64)
    return torch.where((total > 0)[..., None], c, centre)


def speeds(c: torch.Tensor) -> torch.Tensor:
    """Per-step speeds (N, F-1) of centroid trajectories (N, F, 2)."""
    return (c[:, 1:] - c[:, :-1]).norm(dim=-1)


def w1_1d(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """Wasserstein-1 distance of two 1-D samples: int |F_a(s) - F_b(s)| ds over their empirical CDFs."""
    a = np.sort(np.asarray(a, dtype=np.float64).ravel())
    b = np.sort(np.asarray(b, dtype=np.float64).ravel())
    grid = np.sort(np.concatenate([a, b]))
    Fa = np.searchsorted(a, grid[:-1], side="right") / len(a)
    Fb = np.searchsorted(b, grid[:-1], side="right") / len(b)
    return float(np.sum(np.abs(Fa - Fb) * np.diff(grid)))


def constant_velocity(c: torch.Tensor, *, tol: float = 0.5, rel_tol: float = 0.15) -> torch.Tensor:
    """(N,) bool: each clip's centroid moves with constant velocity between bounces.

    Per axis, the steps d_t = c_{t+1} - c_t of a reflected constant-velocity motion are +-v, except
    a bounce step next to a sign change. Drop the steps adjacent to a sign change of that axis (or
    around a step too small to have a sign between two of opposite sign); the
    remaining |d_t| must agree with their median within max(tol, rel_tol median) pixels, and at least
    half of the steps must remain (a jittering trajectory changes sign so often that little would),
    and the median speed must exceed ``tol`` (a digit standing still does not move). A bounce hides up
    to three steps, so the figure is meant for clips of 8 frames or more.
    Components within ``tol`` of zero count as having no sign (a slow axis need not bounce). A first
    or last step shorter than the median is dropped too (a bounce there shows no sign change).
    """
    d = (c[:, 1:] - c[:, :-1]).double()  # (N, S, 2)
    sign = torch.where(d.abs() <= tol, torch.zeros_like(d), torch.sign(d))
    flip = (sign[:, 1:] * sign[:, :-1]) < 0  # (N, S-1, 2): a sign change between steps t and t+1
    # across one step: a bounce step of |d| <= tol (no sign) between two steps of opposite sign
    flip2 = ((sign[:, 2:] * sign[:, :-2]) < 0) & (sign[:, 1:-1] == 0)
    near = torch.zeros_like(d, dtype=torch.bool)
    near[:, 1:] |= flip
    near[:, :-1] |= flip
    for shift in range(3):
        near[:, shift:shift + flip2.shape[1]] |= flip2
    ok = torch.ones(d.shape[0], dtype=torch.bool)
    for axis in range(2):
        keep = ~near[..., axis]
        mag = d[..., axis].abs()
        for i in range(d.shape[0]):
            k = keep[i].clone()
            if k.sum() * 2 < d.shape[1]:
                ok[i] = False
                continue
            med = mag[i][k].median()
            for end in (0, -1):  # a bounce in the first or last step shows no sign change: only |d| <= v
                k[end] &= bool(mag[i, end] >= med)
            kept = mag[i][k]
            ok[i] &= bool(((kept - med).abs() <= max(tol, rel_tol * float(med))).all())
    return ok & (speeds(c).median(dim=1).values > tol)  # and it moves


def crops(clips: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """28 x 28 crops (N, F, 28, 28) of each frame around its centroid (the box kept inside the canvas)."""
    N, F, H, W = clips.shape
    top = (c - (DIGIT - 1) / 2).round().long()
    top[..., 0] = top[..., 0].clamp(0, H - DIGIT)
    top[..., 1] = top[..., 1].clamp(0, W - DIGIT)
    r = top[..., 0, None] + torch.arange(DIGIT)  # (N, F, 28)
    q = top[..., 1, None] + torch.arange(DIGIT)
    n = torch.arange(N)[:, None, None, None]
    f = torch.arange(F)[None, :, None, None]
    return clips[n, f, r[..., :, None], q[..., None, :]]


def frame_classes(classifier, norm, clips: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
    """Predicted classes (N, F) of every frame's centred crop; ``norm`` is the classifier data's normalisation."""
    return classify_crops(classifier, norm, crops(clips.float(), centroids(clips) if c is None else c))


def classify_crops(classifier, norm, crop: torch.Tensor) -> torch.Tensor:
    """Predicted classes (N, F) of frame crops (N, F, 28, 28)."""
    return classify(classifier, norm.apply(crop.reshape(-1, DIGIT * DIGIT))).reshape(crop.shape[:2])


def identity_metrics(pred: torch.Tensor, labels: torch.Tensor) -> dict:
    """Per-frame accuracy against the clips' labels and identity consistency (all frames one class)."""
    same = (pred == pred[:, :1]).all(1)
    return {"accuracy": float((pred == labels[:, None]).double().mean()),
            "identity_consistency": float(same.double().mean()),
            "identity_consistency_labelled": float((same & (pred[:, 0] == labels)).double().mean())}


def motion_metrics(clips: torch.Tensor, real: torch.Tensor, threshold: float = THRESHOLD) -> dict:
    """Speed distribution against the real clips' (W1, and W1 / mean real speed) and the fraction
    of clips moving with constant velocity between bounces."""
    c, cr = centroids(clips, threshold), centroids(real, threshold)
    s, sr = speeds(c), speeds(cr)
    w1 = w1_1d(s, sr)
    return {"speed_mean": float(s.mean()), "speed_mean_real": float(sr.mean()), "speed_w1": w1,
            "speed_w1_rel": w1 / float(sr.mean()), "constant_velocity": float(constant_velocity(c).double().mean())}


def frame_features(clips: torch.Tensor, extractor, *, frames: int, seed: int, progress: bool = False) -> torch.Tensor:
    """Inception features of ``frames`` frames drawn (seeded) from clips (N, F, H, W)."""
    flat = clips.reshape(-1, *clips.shape[-2:])
    pick = torch.randperm(len(flat), generator=torch.Generator().manual_seed(seed))[:frames]
    return torch.as_tensor(extractor.features(flat[pick], progress=progress))


def temporal_metrics(pred: torch.Tensor, crop: torch.Tensor) -> dict:
    """Temporal coherence of clips from the frames' classes ``pred`` (N, F) and crops (N, F, h, w),
    as means over clips with their standard errors (``_se``; clips are the independent units).

    ``class_agreement``: the fraction of a clip's consecutive frame pairs with one class;
    ``class_agreement_shuffled``: its expectation over random orders of the clip's frames,
    sum_k n_k (n_k - 1) / (F (F - 1)) for the clip's class counts n_k (exact, no sampling);
    ``class_agreement_excess``: the first minus the second (0: no temporal structure in the classes);
    ``shape_step_ratio``: mean_t ||a_{t+1} - a_t||^2 over the mean over pairs s != t of
    ||a_s - a_t||^2 = 2 F / (F - 1) mean_t ||a_t - abar||^2 (a_t: the crop of frame t; 1: consecutive
    frames no more alike than random ones; 0: the shape is kept; clips with constant crops count 0)."""
    N, F = pred.shape
    counts = torch.nn.functional.one_hot(pred.long()).sum(1).double()  # (N, classes)
    agree = (pred[:, 1:] == pred[:, :-1]).double().mean(1)
    shuffled = (counts * (counts - 1)).sum(1) / (F * (F - 1))
    a = crop.reshape(N, F, -1).double()
    step = (a[:, 1:] - a[:, :-1]).pow(2).sum(-1).mean(1)
    pair = (2 * F / (F - 1)) * (a - a.mean(1, keepdim=True)).pow(2).sum(-1).mean(1)
    ratio = torch.where(pair > 0, step / pair.clamp_min(1e-300), torch.zeros_like(step))
    out = {}
    for k, v in (("class_agreement", agree), ("class_agreement_shuffled", shuffled),
                 ("class_agreement_excess", agree - shuffled), ("shape_step_ratio", ratio)):
        out[k] = float(v.mean())
        out[k + "_se"] = float(v.std() / N ** 0.5) if N > 1 else 0.0
    return out


def clip_metrics(clips: torch.Tensor, labels: torch.Tensor, real_b: torch.Tensor, classifier, norm) -> dict:
    """Identity, temporal and motion metrics of ``clips`` against the real set ``real_b``."""
    crop = crops(clips.float(), centroids(clips))  # cut once: classified and compared
    pred = classify_crops(classifier, norm, crop)
    return {**identity_metrics(pred, labels), **temporal_metrics(pred, crop), **motion_metrics(clips, real_b)}


def video_metrics(clips: torch.Tensor, labels: torch.Tensor, real: torch.Tensor, real_labels: torch.Tensor,
                  real_b: torch.Tensor, classifier, norm, *, fid_frames: int = 0, seed: int = 0,
                  device: str = "cpu", progress: bool = False) -> dict:
    """All metrics of generated ``clips`` (N, F, H, W) conditioned on ``labels``, against real clips
    ``real`` (with ``real_labels``); the floor: ``real`` measured the same way against a second real
    set ``real_b``. ``fid_frames`` > 0 adds the per-frame FID (and its real-vs-real floor)."""
    gen = clip_metrics(clips, labels, real_b, classifier, norm)
    floor = clip_metrics(real, real_labels, real_b, classifier, norm)
    if fid_frames > 0:  # per-frame FID against the second real set, whose features serve both
        ext = InceptionFeatures(device)
        ref = frame_features(real_b, ext, frames=fid_frames, seed=seed, progress=progress)
        gen["frame_fid"] = fid_from_features(ref, frame_features(clips, ext, frames=fid_frames, seed=seed + 1,
                                                                 progress=progress))
        floor["frame_fid"] = fid_from_features(ref, frame_features(real, ext, frames=fid_frames, seed=seed + 1,
                                                                   progress=progress))
    return {**gen, "real": floor, "num_clips": int(clips.shape[0]), "fid_frames": fid_frames}
