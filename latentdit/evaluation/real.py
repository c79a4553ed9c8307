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

With an autoencoder first stage (``encoder.kind = "autoencoder"``) the network's space is the
autoencoder's latent: samples are decoded to pixels before every metric, and the Gaussian latent
baseline is fitted to the latent rows of the real set and decoded the same way.

The real set's Inception features and statistics, and the Gaussian baseline's features, are
cached on disk (:mod:`latentdit.metrics.fid_stats`, keyed by a fingerprint of the images and of
the feature extractor) under ``$LATENTDIT_CACHE`` or ``~/.cache/latentdit``, so they are computed
once per data set (and baseline seed).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from latentdit.build import build_data
from latentdit.config import Config
from latentdit.data.images import save_image_grid, save_samples_npz
from latentdit.data.real import LoadedData
from latentdit.errors import DataError
from latentdit.evaluation.baselines import (GaussianLatentBaseline, balanced_labels, classifier_features,
                                            retained_variance, w2_equal)
from latentdit.metrics.classifier import classifier_accuracy, train_classifier
from latentdit.metrics import fid as fid_metrics
from latentdit.metrics.fid import fid_from_features, fid_to_reference
from latentdit.metrics.fid_stats import cache_dir, cached_features, cached_stats
from latentdit.models.score import LatentScoreNet
from latentdit.output import grid_indices, grid_scale
from latentdit.pipeline import LatentDiTPipeline

def load_real(cfg: Config) -> LoadedData:
    """The real data set of a run, loaded and normalised exactly as for training."""
    loaded = build_data(cfg).loaded
    if loaded is None:
        raise DataError(f"data.source={cfg.data.source!r} is not a real-data source")
    return loaded


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
                  data: LoadedData | None = None, fid_precision: str = "fp32",
                  fid_baseline: bool = True) -> dict:
    """The metrics of the module docstring for a model trained on ``cfg.data`` (a real source).

    ``device``: where sampling and Inception run (default: CUDA when available). ``fid=False``
    skips the Inception metrics and ``fid_baseline=False`` only the Gaussian baseline's (its
    classifier and W2 figures stay). ``extractor`` replaces the Inception network (any object with
    ``features(images, batch_size, progress) -> (N, F)``); ``fid_precision`` ("fp32" or "bf16",
    see :class:`~latentdit.metrics.fid.InceptionFeatures`) sets the one built otherwise.
    ``feature_cache``: True for :func:`cache_dir`, a folder, or False/None for no caching; it holds
    the real set's features and statistics and the Gaussian baseline's features. With ``out_dir``
    the guided samples are also written there as ``samples.png`` (one row per class for conditional
    models) and ``samples.npz`` (raw units, with labels), and baseline samples as ``baseline.png``.
    """
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
    pipe = LatentDiTPipeline.from_config(model, cfg, meta)
    # the identity encoder (encoder.init = "identity") stores no basis: W_B = I
    W = model.W_B.detach().cpu() if model.W_B is not None else torch.eye(model.ambient_dim)
    space = pipe.encode(loaded.x).cpu()  # the network's data: the autoencoder's latent rows, if any
    metrics: dict = {"data": loaded.name, "num_real": len(loaded), "dim": loaded.dim,
                     "latent_dim": model.latent_dim, **retained_variance(space, W)}

    # ---- samples
    conditional = model.num_classes > 0
    labels = balanced_labels(num, model.num_classes) if conditional else None
    _log(f"sampling {num} points ({sampler}, {steps} steps"
         f"{f', guidance {guidance:g}' if conditional else ''})", progress)
    t0 = time.time()
    z_gen = pipe.sample_model_space(num, sampler=sampler, steps=steps, seed=seed, labels=labels,
                                    guidance=guidance, progress=progress).cpu()
    if not torch.isfinite(z_gen).all():
        raise FloatingPointError("generated samples contain NaN/inf; the model diverged")
    x_gen = pipe.decode(z_gen)  # normalised data rows (decoded by the autoencoder, if any)
    metrics["sample_seconds"] = time.time() - t0
    baseline = GaussianLatentBaseline.fit(space, W)  # in the network's space, decoded like the samples
    x_base = pipe.decode(baseline.sample(num, torch.Generator().manual_seed(seed + 1)))
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
        _log("training the evaluation classifier on real data", progress)
        clf, test_acc = train_classifier(loaded, epochs=classifier_epochs, seed=seed)
        metrics["guidance"] = guidance
        metrics["classifier_accuracy"] = classifier_accuracy(clf, x_gen, labels)
        metrics["classifier_test_accuracy"] = test_acc
        # Frechet distance in the classifier's penultimate features: a cheap FID-like figure
        # (seconds on a CPU) for every labelled data set, next to the Inception FID below.
        f_real, f_gen, f_base = (classifier_features(clf, v) for v in (loaded.x, x_gen, x_base))
        half = len(f_real) // 2
        p = torch.randperm(len(f_real), generator=torch.Generator().manual_seed(seed + 5))
        metrics["classifier_fd"] = fid_from_features(f_real, f_gen)
        metrics["classifier_fd_reference"] = fid_from_features(f_real[p[:half]], f_real[p[half:2 * half]])
        metrics["classifier_fd_gaussian_baseline"] = fid_from_features(f_real, f_base)
        if guidance != 1.0:
            n_u = min(num, 1000)
            x_u = pipe.decode(pipe.sample_model_space(n_u, sampler=sampler, steps=steps, seed=seed + 3,
                                                      labels=labels[:n_u], guidance=1.0).cpu())
            metrics["classifier_accuracy_unguided"] = classifier_accuracy(clf, x_u, labels[:n_u])
        else:
            metrics["classifier_accuracy_unguided"] = metrics["classifier_accuracy"]

    # ---- FID (image data)
    images = loaded.image_shape is not None
    if fid and images:
        ext = extractor if extractor is not None else fid_metrics.InceptionFeatures(dev, precision=fid_precision)
        cache = cache_dir() if feature_cache is True else (Path(feature_cache) if feature_cache else None)
        t0 = time.time()
        _log(f"Inception features of the real set ({len(loaded)} images; cached after the first run)", progress)
        real_images = loaded.to_images(loaded.x)
        f_real = cached_features(real_images, ext, cache=cache, progress=progress)
        real_stats = cached_stats(real_images, ext, cache=cache, features=f_real) if cache is not None else None
        _log(f"Inception features of {num} generated" + (f" and {num} baseline images (baseline cached)"
                                                           if fid_baseline else " images"), progress)
        f_gen = ext.features(loaded.to_images(x_gen), fid_metrics.FEATURE_BATCH, progress)
        half = len(f_real) // 2
        p = torch.randperm(len(f_real), generator=torch.Generator().manual_seed(seed + 4))
        metrics["fid"] = fid_to_reference(f_real, real_stats, f_gen)
        metrics["fid_reference"] = fid_from_features(f_real[p[:half]], f_real[p[half:2 * half]])
        if fid_baseline:
            f_base = cached_features(loaded.to_images(x_base), ext, cache=cache, progress=progress)
            metrics["fid_gaussian_baseline"] = fid_to_reference(f_real, real_stats, f_base)
            metrics["fid_ratio_to_baseline"] = metrics["fid"] / max(metrics["fid_gaussian_baseline"], 1e-12)
        metrics["fid_reference_sizes"] = [half, half]
        metrics["fid_precision"] = getattr(ext, "precision", None)
        metrics["fid_seconds"] = time.time() - t0

    # ---- files
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        raw = pipe.to_data_space(z_gen)
        save_samples_npz(out / "samples.npz", raw, labels)
        if images:
            idx, per = grid_indices(labels if conditional else None, num)  # a row per class
            scale = grid_scale(loaded.image_shape)
            save_image_grid(loaded.to_images(x_gen[idx]), out / "samples.png", nrow=per, scale=scale)
            save_image_grid(loaded.to_images(x_base[:len(idx)]), out / "baseline.png", nrow=per, scale=scale)
    metrics["eval_seconds"] = time.time() - t_start
    return metrics
