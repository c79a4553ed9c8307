"""Gaussian statistics (mean, covariance, its square root) of feature sets, and an on-disk cache
of features and statistics keyed by a fingerprint of the images.

Cache layout: one folder, :func:`cache_dir` (``$LATENTDIT_CACHE`` or ``~/.cache/latentdit``), holding

- ``features_<key>.npy``: the features (N, F) float32 of one image set;
- ``stats_<key>.npz``: ``mu`` (F,) and ``sigma`` (F, F) (float64, unbiased) of those features,
  ``sigma_root`` = sigma^{1/2} (what every FID against this set needs first) and ``fingerprint``
  (the full key, checked on reading).

``<key>`` is the first 20 hex digits of :func:`cache_key`: a SHA-1 of the images (as float32, with
their shape) and of the extractor (class, quantisation, precision, resize, batch-norm folding,
weights file name and size, :data:`FEATURE_CACHE_VERSION`). Any image set is keyed by what it
contains, so the real set is computed once per data set, and so are the Gaussian latent
baseline's images at a fixed seed (they are a deterministic function of the data, the encoder
basis and the seed: the same inputs give the same images, hence the same key; a changed one
gives a new entry).

Writes are atomic (:func:`latentdit.io.atomic_write`). An entry that cannot be read, or whose shape
or fingerprint is wrong, is recomputed and overwritten; a bad cache is never fatal.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from latentdit.io import atomic_write

# Inception batch size of every feature pass: the fastest on a 2-core CPU in fp32 and in bf16
# (docs/bench/inception.json: 11.3 images/s at 16 against 8.3 at 50 and 100).
FEATURE_BATCH = 16

FEATURE_CACHE_VERSION = "2"  # bump when preprocessing or the file layout changes


def feature_stats(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean (F,) and unbiased covariance (F, F), float64, of features (N, F), N >= 2."""
    f = features.detach().cpu().double().numpy() if isinstance(features, torch.Tensor) else np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need features of shape (N, F) with N >= 2, got {tuple(f.shape)}")
    return f.mean(0), np.cov(f, rowvar=False)


def _drop_noise(w: np.ndarray) -> np.ndarray:
    """Zero the eigenvalues at rounding-noise level (|w| <= n eps max|w|), as a singular matrix has.

    Their square roots (~1e-8 each) would otherwise add up to a visible bias in tr(.)^{1/2}.
    """
    tol = len(w) * np.finfo(np.float64).eps * max(float(np.abs(w).max(initial=0.0)), 1e-300)
    return np.where(w > tol, w, 0.0)


def sqrt_psd(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root S^{1/2} of a positive semi-definite matrix (eigenvalues at rounding
    noise level set to zero)."""
    s = np.asarray(sigma, np.float64)
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(_drop_noise(w))) @ v.T


def cache_dir() -> Path:
    """Folder for cached reference features: ``$LATENTDIT_CACHE`` or ``~/.cache/latentdit``."""
    return Path(os.environ.get("LATENTDIT_CACHE") or Path.home() / ".cache" / "latentdit")


def _extractor_key(extractor) -> str:
    weights = getattr(extractor, "weights_path", None)
    parts = [type(extractor).__name__, str(getattr(extractor, "quantise", "")),
             str(getattr(extractor, "precision", "")), str(getattr(extractor, "fast_resize", "")),
             str(getattr(extractor, "fold_bn", "")), FEATURE_CACHE_VERSION]
    if weights is not None:
        weights = Path(weights)
        parts += [weights.name, str(weights.stat().st_size)]
    return "|".join(parts)


def cache_key(images: np.ndarray | torch.Tensor, extractor) -> str:
    """SHA-1 hex digest of the images (float32 bytes and shape) and of the extractor's settings."""
    x = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    x = np.ascontiguousarray(x, dtype=np.float32)
    h = hashlib.sha1(x.tobytes())
    h.update(repr((x.shape, _extractor_key(extractor))).encode())
    return h.hexdigest()


def _stale(path: Path, why: str) -> None:
    warnings.warn(f"cache entry {str(path)!r} {why}; recomputing it", RuntimeWarning, stacklevel=3)


def read_npz(path: Path, key: str, names: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """The arrays ``names`` of the ``.npz`` at ``path`` if it exists, is readable and holds
    ``fingerprint == key``; else None (with a warning when the file exists but is unusable)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if "fingerprint" not in z.files or str(z["fingerprint"]) != key:
                return None  # another image set or extractor: recompute and overwrite
            out = {k: z[k] for k in names}
    except Exception as e:  # truncated or corrupted file (zipfile, OSError, ValueError, KeyError, ...)
        _stale(path, f"cannot be read ({type(e).__name__})")
        return None
    if not all(np.isfinite(v).all() for v in out.values() if v.dtype.kind == "f"):
        _stale(path, "holds NaN/inf")
        return None
    return out


def write_npz(path: Path, **arrays) -> None:
    atomic_write(path, lambda f: np.savez(f, **arrays))


def cached_features(images: torch.Tensor, extractor, *, cache: Path | None = None,
                    batch_size: int = FEATURE_BATCH,
                    progress: bool = False) -> torch.Tensor:
    """Features (N, F) of images (N, H, W[, C]) in [0, 1], read from or written to ``cache``
    (``features_<key>.npy``, see the module doc); no caching when ``cache`` is None."""
    if cache is None:
        return extractor.features(images, batch_size, progress)
    path = Path(cache) / f"features_{cache_key(images, extractor)[:20]}.npy"
    if path.is_file():
        try:
            f = np.load(path, allow_pickle=False)
            if f.ndim == 2 and f.shape[0] == len(images) and np.isfinite(f).all():
                return torch.from_numpy(f)
            _stale(path, f"has shape {f.shape} or NaN/inf, not {len(images)} finite rows")
        except Exception as e:  # truncated or corrupted file
            _stale(path, f"cannot be read ({type(e).__name__})")
    f = extractor.features(images, batch_size, progress)
    atomic_write(path, lambda fh: np.save(fh, f.detach().cpu().numpy().astype(np.float32)))
    return f


def cached_stats(images: torch.Tensor, extractor, *, cache: Path | None = None, features=None,
                 batch_size: int = FEATURE_BATCH, progress: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mu, sigma, sigma^{1/2}) of the images' features, read from or written to ``cache``
    (``stats_<key>.npz``). ``features``: the images' features when already at hand (else they come
    from :func:`cached_features`)."""
    key = cache_key(images, extractor) if cache is not None else None
    path = Path(cache) / f"stats_{key[:20]}.npz" if cache is not None else None
    if path is not None:
        hit = read_npz(path, key, ("mu", "sigma", "sigma_root"))
        if hit is not None and hit["sigma"].shape == hit["mu"].shape * 2 == hit["sigma_root"].shape:
            return hit["mu"], hit["sigma"], hit["sigma_root"]
    if features is None:
        features = cached_features(images, extractor, cache=cache, batch_size=batch_size, progress=progress)
    mu, sigma = feature_stats(features)
    root = sqrt_psd(sigma)
    if path is not None:
        write_npz(path, mu=mu, sigma=sigma, sigma_root=root, fingerprint=np.array(key),
                  num_images=np.array(len(images)))
    return mu, sigma, root
