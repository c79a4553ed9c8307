"""Writing samples: PNG image grids (Pillow) and ``.npz`` arrays that ``load_data("npz")`` reads back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from latentdit.io import atomic_write


def _as_numpy(a: np.ndarray | torch.Tensor) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def save_image_grid(images: np.ndarray | torch.Tensor, path: str | Path, nrow: int, *,
                    padding: int = 2, pad_value: float = 1.0, scale: int = 1) -> Path:
    """Write images as one PNG grid, ``nrow`` images per row, filled row by row.

    images: (N, H, W) grayscale or (N, H, W, C) with C in {1, 3}, values in [0, 1] (clamped).
    To get one row per class, pass the samples grouped by class with ``nrow`` = samples per class.
    ``padding`` pixels of ``pad_value`` separate the tiles; ``scale`` enlarges each pixel
    (nearest neighbour), useful for 8x8 digits. Parent folders are created. Returns the path.
    """
    a = _as_numpy(images).astype(np.float32)
    if a.ndim == 4 and a.shape[3] == 1:
        a = a[..., 0]
    if a.ndim not in (3, 4) or (a.ndim == 4 and a.shape[3] != 3) or a.shape[0] == 0:
        raise ValueError(f"images must be (N, H, W) or (N, H, W, C) with C in {{1, 3}} and N >= 1, "
                         f"got shape {tuple(a.shape)}")
    if nrow < 1 or padding < 0 or scale < 1:
        raise ValueError(f"need nrow >= 1, padding >= 0, scale >= 1; got {nrow}, {padding}, {scale}")
    a = np.nan_to_num(a, nan=0.0).clip(0.0, 1.0)
    if scale > 1:
        a = a.repeat(scale, axis=1).repeat(scale, axis=2)
    n, h, w = a.shape[:3]
    rows = -(-n // nrow)
    cols = min(n, nrow)
    grid = np.full((rows * (h + padding) + padding, cols * (w + padding) + padding, *a.shape[3:]),
                   pad_value, dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, nrow)
        y, x = padding + r * (h + padding), padding + c * (w + padding)
        grid[y:y + h, x:x + w] = a[i]
    from PIL import Image

    picture = Image.fromarray(np.round(grid * 255).astype(np.uint8))
    return atomic_write(path, lambda f: picture.save(f, format="PNG"))  # complete or absent


def save_samples_npz(path: str | Path, x: np.ndarray | torch.Tensor,
                     labels: np.ndarray | torch.Tensor | None = None) -> Path:
    """Save samples under key ``x`` (and ``labels`` when given), the layout ``load_data("npz")`` reads."""
    arrays = {"x": _as_numpy(x)}
    if labels is not None:
        arrays["labels"] = _as_numpy(labels).astype(np.int64)
        if arrays["labels"].shape != (arrays["x"].shape[0],):
            raise ValueError(f"labels of shape {arrays['labels'].shape} do not match {arrays['x'].shape[0]} samples")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:  # a file object keeps numpy from appending ".npz" to the name
        np.savez(f, **arrays)
    return path
