"""Evaluation of a model trained on real data (images or arbitrary vectors).

:func:`evaluate_real` returns, for a trained pipeline and its run configuration:

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from latentdit.build import build_data
from latentdit.device import resolve_device
from latentdit.config import Config
from latentdit.data.images import save_image_grid, save_samples_npz
from latentdit.data.real import LoadedData
from latentdit.errors import DataError
from latentdit.evaluation.baselines import (GaussianLatentBaseline, classifier_features,
                                            retained_variance, w2_equal)
from latentdit.metrics.classifier import classifier_accuracy, train_classifier
from latentdit.metrics import fid as fid_metrics
from latentdit.metrics.fid import fid_from_features, fid_to_reference
from latentdit.metrics.fid_stats import cache_dir, cached_features, cached_stats
from latentdit.models.guidance import balanced_labels
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


def _log(msg: str, on: bool) -> None:
    if on:
        print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ evaluation


@dataclass
class RealEvalOptions:
    """The settings of :func:`evaluate_real` (unset sizes come from the run's ``[eval]`` section).

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

    num_samples: int | None = None
    sampler: str | None = None
    steps: int | None = None
    seed: int | None = None
    guidance: float | None = None  # default: the pipeline's
    progress: bool = False
    device: str | torch.device | None = None
    fid: bool = True
    fid_baseline: bool = True
    fid_precision: str = "fp32"
    extractor: object = None
    feature_cache: Path | None | bool = True
    classifier_epochs: int = 8
    w2_points: int = 1000
    out_dir: str | Path | None = None


@dataclass
class _Samples:
    """Generated and baseline points of one evaluation, in the normalised data space."""

    z_gen: torch.Tensor  # the network's space
    x_gen: torch.Tensor
    x_base: torch.Tensor
    labels: torch.Tensor | None
    guidance: float


def evaluate_real(pipe: LatentDiTPipeline, cfg: Config, *, data: LoadedData | None = None, **options) -> dict:
    """The metrics of the module docstring for a pipeline trained on ``cfg.data`` (a real source);
    ``data``: the loaded real set (loaded from ``cfg`` when None); ``options``: :class:`RealEvalOptions`."""
    t_start = time.time()
    o = RealEvalOptions(**options)
    ec = cfg.eval
    num, seed = o.num_samples or ec.num_samples, ec.seed if o.seed is None else o.seed
    sampler, steps = o.sampler or ec.sampler, o.steps or ec.steps
    loaded = data if data is not None else load_real(cfg)
    _check_normalisation(pipe, loaded)
    pipe.model.to(resolve_device(o.device or "auto")).eval()
    model = pipe.model
    # the identity encoder (encoder.init = "identity") stores no basis: W_B = I
    W = model.W_B.detach().cpu() if model.W_B is not None else torch.eye(model.ambient_dim)
    space = pipe.encode(loaded.x).cpu()  # the network's data: the autoencoder's latent rows, if any
    metrics: dict = {"data": loaded.name, "num_real": len(loaded), "dim": loaded.dim,
                     "latent_dim": model.latent_dim, **retained_variance(space, W)}
    t0 = time.time()
    smp = _draw(pipe, space, W, num, sampler, steps, seed, o)
    metrics.update(sample_seconds=time.time() - t0, num_samples=num, sampler=sampler, steps=steps, seed=seed)
    metrics.update(_w2_metrics(smp, loaded, num, seed, o.w2_points))
    if model.num_classes > 0:
        metrics.update(_classifier_metrics(pipe, smp, loaded, sampler, steps, seed, o))
    if o.fid and loaded.image_shape is not None:
        metrics.update(_fid_metrics(smp, loaded, num, seed, o))
    if o.out_dir is not None:
        _write_samples(pipe, smp, loaded, Path(o.out_dir))
    metrics["eval_seconds"] = time.time() - t_start
    return metrics


def _check_normalisation(pipe: LatentDiTPipeline, loaded: LoadedData) -> None:
    saved = pipe.normalisation
    if saved is None:
        return
    if saved.kind != loaded.norm.kind or not np.allclose(saved.shift.tolist(), loaded.norm.shift.tolist(), atol=1e-5) \
            or not np.allclose(saved.scale.tolist(), loaded.norm.scale.tolist(), atol=1e-5):
        raise DataError("the data no longer match the normalisation recorded at training time; "
                        "evaluate with the data the model was trained on")


def _draw(pipe: LatentDiTPipeline, space: torch.Tensor, W: torch.Tensor, num: int, sampler: str, steps: int,
          seed: int, o: RealEvalOptions) -> _Samples:
    """``num`` samples (balanced labels and guidance for conditional models) and as many of the
    Gaussian latent baseline, fitted in the network's space and decoded like the samples."""
    k = pipe.model.num_classes
    labels = balanced_labels(num, k) if k > 0 else None
    guidance = pipe.defaults.guidance if o.guidance is None else o.guidance
    _log(f"sampling {num} points ({sampler}, {steps} steps{f', guidance {guidance:g}' if k > 0 else ''})", o.progress)
    z_gen = pipe.sample_model_space(num, sampler=sampler, steps=steps, seed=seed, labels=labels,
                                    guidance=guidance, progress=o.progress).cpu()
    if not torch.isfinite(z_gen).all():
        raise FloatingPointError("generated samples contain NaN/inf; the model diverged")
    baseline = GaussianLatentBaseline.fit(space, W)
    x_base = pipe.decode(baseline.sample(num, torch.Generator().manual_seed(seed + 1)))
    return _Samples(z_gen, pipe.decode(z_gen), x_base, labels, guidance)


def _w2_metrics(smp: _Samples, loaded: LoadedData, num: int, seed: int, w2_points: int) -> dict:
    """Exact W2 in the normalised data space: generated, real and baseline points (any data)."""
    m = _w2_sizes(num, len(loaded), w2_points)
    perm = torch.randperm(len(loaded), generator=torch.Generator().manual_seed(seed + 2))
    real_a, real_b = loaded.x[perm[:m]], loaded.x[perm[m:2 * m]]
    return {"w2_data": w2_equal(smp.x_gen[:m], real_a), "w2_data_reference": w2_equal(real_b, real_a),
            "w2_data_gaussian_baseline": w2_equal(smp.x_base[:m], real_a), "w2_points": m}


def _classifier_metrics(pipe: LatentDiTPipeline, smp: _Samples, loaded: LoadedData, sampler: str, steps: int,
                        seed: int, o: RealEvalOptions) -> dict:
    """Accuracy of a classifier trained on real data on the samples (guided and unguided), and the
    Frechet distance in its penultimate features: a cheap FID-like figure (seconds on a CPU)."""
    _log("training the evaluation classifier on real data", o.progress)
    clf, test_acc = train_classifier(loaded, epochs=o.classifier_epochs, seed=seed)
    out = {"guidance": smp.guidance, "classifier_accuracy": classifier_accuracy(clf, smp.x_gen, smp.labels),
           "classifier_test_accuracy": test_acc}
    f_real, f_gen, f_base = (classifier_features(clf, v) for v in (loaded.x, smp.x_gen, smp.x_base))
    half = len(f_real) // 2
    p = torch.randperm(len(f_real), generator=torch.Generator().manual_seed(seed + 5))
    out.update(classifier_fd=fid_from_features(f_real, f_gen),
               classifier_fd_reference=fid_from_features(f_real[p[:half]], f_real[p[half:2 * half]]),
               classifier_fd_gaussian_baseline=fid_from_features(f_real, f_base))
    if smp.guidance != 1.0:
        n_u = min(len(smp.labels), 1000)
        x_u = pipe.decode(pipe.sample_model_space(n_u, sampler=sampler, steps=steps, seed=seed + 3,
                                                  labels=smp.labels[:n_u], guidance=1.0).cpu())
        out["classifier_accuracy_unguided"] = classifier_accuracy(clf, x_u, smp.labels[:n_u])
    else:
        out["classifier_accuracy_unguided"] = out["classifier_accuracy"]
    return out


def _fid_metrics(smp: _Samples, loaded: LoadedData, num: int, seed: int, o: RealEvalOptions) -> dict:
    """Inception FID of the samples (and of the baseline) against the real set, next to two real halves."""
    ext = o.extractor if o.extractor is not None else fid_metrics.InceptionFeatures(resolve_device(o.device or "auto"),
                                                                                     precision=o.fid_precision)
    cache = cache_dir() if o.feature_cache is True else (Path(o.feature_cache) if o.feature_cache else None)
    t0 = time.time()
    _log(f"Inception features of the real set ({len(loaded)} images; cached after the first run)", o.progress)
    real_images = loaded.to_images(loaded.x)
    f_real = cached_features(real_images, ext, cache=cache, progress=o.progress)
    real_stats = cached_stats(real_images, ext, cache=cache, features=f_real) if cache is not None else None
    _log(f"Inception features of {num} generated" + (f" and {num} baseline images (baseline cached)"
                                                       if o.fid_baseline else " images"), o.progress)
    f_gen = ext.features(loaded.to_images(smp.x_gen), fid_metrics.FEATURE_BATCH, o.progress)
    half = len(f_real) // 2
    p = torch.randperm(len(f_real), generator=torch.Generator().manual_seed(seed + 4))
    out = {"fid": fid_to_reference(f_real, real_stats, f_gen),
           "fid_reference": fid_from_features(f_real[p[:half]], f_real[p[half:2 * half]])}
    if o.fid_baseline:
        f_base = cached_features(loaded.to_images(smp.x_base), ext, cache=cache, progress=o.progress)
        out["fid_gaussian_baseline"] = fid_to_reference(f_real, real_stats, f_base)
        out["fid_ratio_to_baseline"] = out["fid"] / max(out["fid_gaussian_baseline"], 1e-12)
    out.update(fid_reference_sizes=[half, half], fid_precision=getattr(ext, "precision", None),
               fid_seconds=time.time() - t0)
    return out


def _write_samples(pipe: LatentDiTPipeline, smp: _Samples, loaded: LoadedData, out: Path) -> None:
    """samples.npz (raw units, with labels) and, for images, samples.png and baseline.png."""
    out.mkdir(parents=True, exist_ok=True)
    save_samples_npz(out / "samples.npz", pipe.to_data_space(smp.z_gen), smp.labels)
    if loaded.image_shape is None:
        return
    idx, per = grid_indices(smp.labels if pipe.model.num_classes > 0 else None, len(smp.x_gen))  # a row per class
    scale = grid_scale(loaded.image_shape)
    save_image_grid(loaded.to_images(smp.x_gen[idx]), out / "samples.png", nrow=per, scale=scale)
    save_image_grid(loaded.to_images(smp.x_base[:len(idx)]), out / "baseline.png", nrow=per, scale=scale)
