"""Evaluation of a model trained on real data (images or arbitrary vectors).

:func:`evaluate_real` returns, for a trained model and its run configuration:

- ``pca_retained_energy``: fraction of the data's uncentred second moment E||x||^2 kept by the
  encoder's subspace, ||X W_B||_F^2 / ||X||_F^2 (the quantity PCA maximises here, since the
  paper's subspace passes through the origin); ``pca_retained_variance``: fraction of the centred
  variance, tr(W_B^T C W_B) / tr(C), C the data covariance.
- For image data, FID (Inception features, :mod:`latentdit.metrics.fid`) of ``num_samples``
  generated images against the whole real set (``fid``); the FID of two disjoint random halves of
  the real set (``fid_reference``, the scale of "indistinguishable"); and the FID of as many
  samples of the Gaussian latent baseline (``fid_gaussian_baseline``, see
  :class:`GaussianLatentBaseline`). Class-conditional models are sampled with balanced labels and
  the configured guidance scale.
- For every kind of data, the exact 2-Wasserstein distance in the normalised data space between
  equally many generated and real points (``w2_data``), between two disjoint real halves
  (``w2_data_reference``) and between baseline and real points (``w2_data_gaussian_baseline``).
- For class-conditional models, the accuracy of a small classifier trained on real data on the
  generated samples against their conditioning labels, with guidance (``classifier_accuracy``) and
  without (``classifier_accuracy_unguided``), next to its accuracy on held-out real data
  (``classifier_test_accuracy``); and the Frechet distance in that classifier's penultimate
  features (``classifier_fd``, with ``classifier_fd_reference`` for two real halves and
  ``classifier_fd_gaussian_baseline``), an FID-like figure that costs seconds on a CPU.

Real-set Inception features are cached on disk (keyed by a fingerprint of the images and of the
feature extractor) under ``$LATENTDIT_CACHE`` or ``~/.cache/latentdit``, so the reference
statistics are computed once per data set.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from latentdit.config import Config
from latentdit.data.real import LoadedData
from latentdit.errors import DataError
from latentdit.models.score import LatentScoreNet

FEATURE_CACHE_VERSION = "1"


# ------------------------------------------------------------------------------------------ helpers


def load_real(cfg: Config) -> LoadedData:
    """The real data set of a run, loaded and normalised exactly as for training."""
    from latentdit.pipeline import build_data

    loaded = build_data(cfg).loaded
    if loaded is None:
        raise DataError(f"data.source={cfg.data.source!r} is not a real-data source")
    return loaded


def retained_variance(x: torch.Tensor, W: torch.Tensor) -> dict[str, float]:
    """Fractions of the uncentred energy and of the centred variance of rows x (N, D) kept by span(W).

    W (D, d0) has orthonormal columns.
    """
    x = x.detach().cpu().double()
    W = W.detach().cpu().double()
    energy = float((x @ W).pow(2).sum() / x.pow(2).sum().clamp_min(1e-300))
    xc = x - x.mean(0)
    variance = float((xc @ W).pow(2).sum() / xc.pow(2).sum().clamp_min(1e-300))
    return {"pca_retained_energy": energy, "pca_retained_variance": variance}


class GaussianLatentBaseline:
    """A Gaussian fitted in the encoder's latent space: h ~ N(mean, cov) of W_B^T x, x = W_B h.

    ``mean`` (d0,) and ``cov`` (d0, d0) are the sample mean and (unbiased) covariance of the
    latent codes of the data, so the baseline matches the data's first two latent moments exactly
    and differs from the data only in the shape of the latent law.
    """

    def __init__(self, W: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor):
        self.W = W.detach().cpu().double()  # (D, d0)
        self.mean = mean.double()  # (d0,)
        self.cov = cov.double()  # (d0, d0)
        evals, evecs = torch.linalg.eigh((self.cov + self.cov.T) / 2)
        self._root = evecs * evals.clamp_min(0).sqrt()  # cov = root root^T, also when singular

    @classmethod
    def fit(cls, x: torch.Tensor, W: torch.Tensor) -> "GaussianLatentBaseline":
        """Fit to rows x (N, D), N >= 2, in the span of W (D, d0)."""
        if x.shape[0] < 2:
            raise DataError("the Gaussian baseline needs at least two data points")
        h = x.detach().cpu().double() @ W.detach().cpu().double()  # (N, d0)
        return cls(W, h.mean(0), torch.cov(h.T).reshape(h.shape[1], h.shape[1]))

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, d0) draws of N(mean, cov), float64."""
        z = torch.randn(n, self.mean.shape[0], generator=generator, dtype=torch.float64)
        return self.mean + z @ self._root.T

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n, D) float32 samples W_B h in the normalised data space."""
        return (self.sample_latent(n, generator) @ self.W.T).float()


def balanced_labels(num: int, num_classes: int) -> torch.Tensor:
    """Labels 0, 1, ..., K-1, 0, 1, ... of length ``num`` (equal counts up to one)."""
    return torch.arange(num) % num_classes


def cache_dir() -> Path:
    """Folder for cached reference features: ``$LATENTDIT_CACHE`` or ``~/.cache/latentdit``."""
    return Path(os.environ.get("LATENTDIT_CACHE") or Path.home() / ".cache" / "latentdit")


def _extractor_key(extractor) -> str:
    weights = getattr(extractor, "weights_path", None)
    parts = [type(extractor).__name__, str(getattr(extractor, "quantise", "")), FEATURE_CACHE_VERSION]
    if weights is not None:
        weights = Path(weights)
        parts += [weights.name, str(weights.stat().st_size)]
    return "|".join(parts)


def cached_features(images: torch.Tensor, extractor, *, cache: Path | None = None, batch_size: int = 50,
                    progress: bool = False) -> torch.Tensor:
    """Features (N, F) of images (N, H, W[, C]) in [0, 1], read from or written to ``cache``.

    The file name is a hash of the images, their shape and the extractor, so a changed data set
    or preprocessing never reuses stale features.
    """
    if cache is None:
        return extractor.features(images, batch_size, progress)
    a = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)
    h = hashlib.sha1(a.tobytes())
    h.update(repr((a.shape, _extractor_key(extractor))).encode())
    path = Path(cache) / f"features_{h.hexdigest()[:20]}.npy"
    if path.is_file():
        try:
            f = np.load(path, allow_pickle=False)
            if f.shape[0] == len(a):
                return torch.from_numpy(f)
        except (OSError, ValueError):
            pass  # unreadable cache: recompute and overwrite
    f = extractor.features(images, batch_size, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, f.numpy().astype(np.float32))
    os.replace(tmp, path)
    return f


def w2_equal(a: torch.Tensor, b: torch.Tensor) -> float:
    """Exact 2-Wasserstein distance between two empirical laws of equally many points (m, D).

    With uniform weights on equal sizes an optimal plan is a permutation (Birkhoff), so W2^2 is
    the minimum-cost assignment of the squared distances (Hungarian algorithm, scipy).
    """
    from scipy.optimize import linear_sum_assignment

    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"need two (m, D) point sets of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    a64, b64 = a.detach().cpu().double(), b.detach().cpu().double()
    cost = torch.cdist(a64, b64).pow(2).numpy()
    rows, cols = linear_sum_assignment(cost)
    return float(np.sqrt(cost[rows, cols].mean()))


@torch.no_grad()
def classifier_features(clf, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Penultimate-layer features (N, F) of an evaluation classifier for normalised rows x (N, D)."""
    clf.eval()
    body = clf.net[:-1]  # everything but the final linear layer
    return torch.cat([body(clf._as_input(x[i:i + batch_size].float())) for i in range(0, len(x), batch_size)])


def _w2_sizes(num: int, n_real: int, cap: int) -> int:
    return max(2, min(cap, num, n_real // 2))


def _auto_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _log(msg: str, on: bool) -> None:
    if on:
        print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ evaluation


def evaluate_real(model: LatentScoreNet, cfg: Config, meta: dict, *, num_samples: int | None = None,
                  sampler: str | None = None, steps: int | None = None, seed: int | None = None,
                  progress: bool = False, guidance: float | None = None, device: str | torch.device | None = None,
                  fid: bool = True, extractor=None, feature_cache: Path | None | bool = True,
                  classifier_epochs: int = 8, w2_points: int = 1000, out_dir: str | Path | None = None,
                  data: LoadedData | None = None) -> dict:
    """The metrics of the module docstring for a model trained on ``cfg.data`` (a real source).

    ``device``: where sampling and Inception run (default: CUDA when available). ``fid=False``
    skips the Inception metrics. ``extractor`` replaces the Inception network (any object with
    ``features(images, batch_size, progress) -> (N, F)``). ``feature_cache``: True for
    :func:`cache_dir`, a folder, or False/None for no caching. With ``out_dir`` the guided samples
    are also written there as ``samples.png`` (one row per class for conditional models) and
    ``samples.npz`` (raw units, with labels), and baseline samples as ``baseline.png``.
    """
    from latentdit.data.images import save_image_grid, save_samples_npz
    from latentdit.evaluate import generate

    t_start = time.time()
    ec = cfg.eval
    num = num_samples or ec.num_samples
    sampler, steps = sampler or ec.sampler, steps or ec.steps
    seed = ec.seed if seed is None else seed
    guidance = cfg.sample.guidance if guidance is None else guidance
    dev = _auto_device(device)
    loaded = data if data is not None else load_real(cfg)
    if "normalisation" in meta:
        saved = meta["normalisation"]
        if saved["kind"] != loaded.norm.kind or not np.allclose(saved["shift"], loaded.norm.shift.tolist(), atol=1e-5) \
                or not np.allclose(saved["scale"], loaded.norm.scale.tolist(), atol=1e-5):
            raise DataError("the data no longer match the normalisation recorded at training time; "
                            "evaluate with the data the model was trained on")
    model = model.to(dev).eval()
    # the identity encoder (encoder.init = "identity") stores no basis: W_B = I
    W = model.W_B.detach().cpu() if model.W_B is not None else torch.eye(model.ambient_dim)
    metrics: dict = {"data": loaded.name, "num_real": len(loaded), "dim": loaded.dim,
                     "latent_dim": model.latent_dim, **retained_variance(loaded.x, W)}

    # ---- samples
    conditional = model.num_classes > 0
    labels = balanced_labels(num, model.num_classes) if conditional else None
    _log(f"sampling {num} points ({sampler}, {steps} steps"
         f"{f', guidance {guidance:g}' if conditional else ''})", progress)
    t0 = time.time()
    x_gen = generate(model, cfg, num, sampler=sampler, steps=steps, seed=seed, labels=labels,
                     guidance=guidance, progress=progress).cpu()
    metrics["sample_seconds"] = time.time() - t0
    if not torch.isfinite(x_gen).all():
        raise FloatingPointError("generated samples contain NaN/inf; the model diverged")
    baseline = GaussianLatentBaseline.fit(loaded.x, W)
    x_base = baseline.sample(num, torch.Generator().manual_seed(seed + 1))
    metrics.update({"num_samples": num, "sampler": sampler, "steps": steps, "seed": seed})

    # ---- distances in the data space (any data)
    m = _w2_sizes(num, len(loaded), w2_points)
    perm = torch.randperm(len(loaded), generator=torch.Generator().manual_seed(seed + 2))
    real_a, real_b = loaded.x[perm[:m]], loaded.x[perm[m:2 * m]]
    metrics["w2_data"] = w2_equal(x_gen[:m], real_a)
    metrics["w2_data_reference"] = w2_equal(real_b, real_a)
    metrics["w2_data_gaussian_baseline"] = w2_equal(x_base[:m], real_a)
    metrics["w2_points"] = m

    # ---- class-conditional accuracy
    if conditional:
        from latentdit.metrics.classifier import classifier_accuracy, train_classifier

        _log("training the evaluation classifier on real data", progress)
        clf, test_acc = train_classifier(loaded, epochs=classifier_epochs, seed=seed)
        metrics["guidance"] = guidance
        metrics["classifier_accuracy"] = classifier_accuracy(clf, x_gen, labels)
        metrics["classifier_test_accuracy"] = test_acc
        # Frechet distance in the classifier's penultimate features: a cheap FID-like figure
        # (seconds on a CPU) for every labelled data set, next to the Inception FID below.
        from latentdit.metrics.fid import fid_from_features

        f_real, f_gen, f_base = (classifier_features(clf, v) for v in (loaded.x, x_gen, x_base))
        half = len(f_real) // 2
        p = torch.randperm(len(f_real), generator=torch.Generator().manual_seed(seed + 5))
        metrics["classifier_fd"] = fid_from_features(f_real, f_gen)
        metrics["classifier_fd_reference"] = fid_from_features(f_real[p[:half]], f_real[p[half:2 * half]])
        metrics["classifier_fd_gaussian_baseline"] = fid_from_features(f_real, f_base)
        if guidance != 1.0:
            n_u = min(num, 1000)
            x_u = generate(model, cfg, n_u, sampler=sampler, steps=steps, seed=seed + 3, labels=labels[:n_u],
                           guidance=1.0).cpu()
            metrics["classifier_accuracy_unguided"] = classifier_accuracy(clf, x_u, labels[:n_u])
        else:
            metrics["classifier_accuracy_unguided"] = metrics["classifier_accuracy"]

    # ---- FID (image data)
    images = loaded.image_shape is not None
    if fid and images:
        from latentdit.metrics.fid import InceptionFeatures, fid_from_features

        ext = extractor if extractor is not None else InceptionFeatures(dev)
        cache = cache_dir() if feature_cache is True else (Path(feature_cache) if feature_cache else None)
        t0 = time.time()
        _log(f"Inception features of the real set ({len(loaded)} images; cached after the first run)", progress)
        f_real = cached_features(loaded.to_images(loaded.x), ext, cache=cache, progress=progress)
        _log(f"Inception features of {num} generated and {num} baseline images", progress)
        f_gen = ext.features(loaded.to_images(x_gen), 50, progress)
        f_base = ext.features(loaded.to_images(x_base), 50, progress)
        half = len(f_real) // 2
        p = torch.randperm(len(f_real), generator=torch.Generator().manual_seed(seed + 4))
        metrics["fid"] = fid_from_features(f_real, f_gen)
        metrics["fid_reference"] = fid_from_features(f_real[p[:half]], f_real[p[half:2 * half]])
        metrics["fid_gaussian_baseline"] = fid_from_features(f_real, f_base)
        metrics["fid_ratio_to_baseline"] = metrics["fid"] / max(metrics["fid_gaussian_baseline"], 1e-12)
        metrics["fid_reference_sizes"] = [half, half]
        metrics["fid_seconds"] = time.time() - t0

    # ---- files
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        raw = loaded.norm.invert(x_gen)
        save_samples_npz(out / "samples.npz", raw, labels)
        if images:
            per = 10
            if conditional:
                idx = torch.cat([torch.nonzero(labels == c).flatten()[:per] for c in range(model.num_classes)])
            else:
                idx = torch.arange(min(num, per * per))
            save_image_grid(loaded.to_images(x_gen[idx]), out / "samples.png", nrow=per, scale=_scale(loaded))
            save_image_grid(loaded.to_images(x_base[:len(idx)]), out / "baseline.png", nrow=per,
                            scale=_scale(loaded))
    metrics["eval_seconds"] = time.time() - t_start
    return metrics


def _scale(loaded: LoadedData) -> int:
    side = max(loaded.image_shape[:2])
    return max(1, 28 // side) if side < 28 else 1
