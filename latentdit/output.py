"""What a pipeline hands back, and the picture a person looks at.

- :func:`to_output`: samples in data space, rows (N, D), as images (N, C, H, W) or as the flat rows,
  as diffusers' ``output_type`` chooses between a picture and an array. Image data default to
  images; data without an image shape are vectors only.
- :func:`save_sample_grid`: a PNG grid of image samples, one row per class for class-conditional
  models (the demo's ``samples.png`` and ``latentdit sample --out grid.png``);
- :func:`save_clips_gif`: clips (N, F, H, W) as one animated GIF (``latentdit sample`` on a video
  model, the video experiment).

Rows of image data are stored flattened in (H, W) or (H, W, C) order (``image_shape``), the layout
of :meth:`latentdit.data.real.LoadedData.to_images`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from latentdit.data.images import save_image_grid
from latentdit.errors import DataError
from latentdit.io import atomic_write

OUTPUT_TYPES = ("images", "vectors")
GRID_PER_ROW = 10  # samples per row of a grid (per class for conditional models)


def resolve_output_type(image_shape: Sequence[int] | None, output_type: str | None) -> str:
    """``output_type`` checked, ``None`` meaning "images" for image data and "vectors" otherwise."""
    if output_type is None:
        return "images" if image_shape else "vectors"
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type={output_type!r} must be one of {OUTPUT_TYPES} (or None: the data's own)")
    if output_type == "images" and not image_shape:
        raise DataError("output_type='images' needs image data; these data are vectors (use output_type='vectors')")
    return output_type


def to_output(x: torch.Tensor, image_shape: Sequence[int] | None, output_type: str | None = None,
              video_shape: Sequence[int] | None = None) -> torch.Tensor:
    """Rows (N, D) -> images (N, C, H, W) (``"images"``) or the rows themselves (``"vectors"``).

    ``image_shape`` is (H, W) (one channel) or (H, W, C); ``None`` for non-image data. Clips
    (``video_shape`` = (F, H, W), rows of F H W pixels) come as (N, F, H, W) for ``"images"``."""
    if resolve_output_type(image_shape, output_type) == "vectors":
        return x
    if video_shape:
        F, H, W = video_shape
        if x.shape[1] != F * H * W:
            raise DataError(f"samples of dimension {x.shape[1]} do not fill clips of shape {tuple(video_shape)}")
        return x.reshape(x.shape[0], F, H, W)
    shape = tuple(image_shape)  # type: ignore[arg-type]
    hwc = shape if len(shape) == 3 else (*shape, 1)
    if x.shape[1] != hwc[0] * hwc[1] * hwc[2]:
        raise DataError(f"samples of dimension {x.shape[1]} do not fill images of shape {shape}")
    return x.reshape(x.shape[0], *hwc).permute(0, 3, 1, 2).contiguous()


def grid_indices(labels: torch.Tensor | None, num: int, per: int = GRID_PER_ROW) -> tuple[torch.Tensor, int]:
    """The samples a grid shows and its row length: the first ``per`` of each class present, a row per
    class (shortened to the rarest class's count, so that rows stay aligned), or without labels the
    first ``per`` x ``per`` samples in rows of ``per``."""
    if labels is None:
        return torch.arange(min(num, per * per)), per
    labels = labels.cpu()
    classes = torch.unique(labels)
    per = min(per, min(int((labels == c).sum()) for c in classes))
    return torch.cat([torch.nonzero(labels == c).flatten()[:per] for c in classes]), per


def grid_scale(image_shape: Sequence[int]) -> int:
    """Pixel enlargement for small images (8 x 8 digits drawn at about 28 x 28)."""
    side = max(image_shape[:2])
    return max(1, 28 // side) if side < 28 else 1


def unit_images(x: torch.Tensor, image_shape: Sequence[int], pixel_range: Sequence[float] | None) -> torch.Tensor:
    """Data-space rows (N, D) -> images (N, *image_shape) in [0, 1]: mapped from ``pixel_range``, or
    from the samples' own minimum and maximum when the data have none."""
    x = x.detach().to("cpu", torch.float32)
    lo, hi = (float(pixel_range[0]), float(pixel_range[1])) if pixel_range else (float(x.min()), float(x.max()))
    return ((x - lo) / (hi - lo if hi > lo else 1.0)).clamp(0.0, 1.0).reshape(-1, *image_shape)


def save_sample_grid(x: torch.Tensor, path: str | Path, *, image_shape: Sequence[int] | None,
                     pixel_range: Sequence[float] | None = None, labels: torch.Tensor | None = None) -> Path:
    """Write data-space samples (N, D) as a PNG grid (a row per class when ``labels`` are given)."""
    if not image_shape:
        raise DataError(f"a PNG grid needs image data; these samples are vectors of dimension {x.shape[1]}: "
                        "write .npy or .npz instead")
    idx, per = grid_indices(labels, x.shape[0])
    return save_image_grid(unit_images(x[idx], image_shape, pixel_range), path, nrow=per,
                           scale=grid_scale(image_shape))


def save_clips_gif(clips: np.ndarray | torch.Tensor, path: str | Path, *, ncol: int = 0, fps: float = 8.0,
                   scale: int = 2) -> Path:
    """Write clips (N, F, H, W) in [0, 1] as one animated GIF: the clips side by side in a grid of
    ``ncol`` columns (0: about square), frame by frame, each pixel ``scale`` x ``scale``; atomically."""
    from PIL import Image

    a = clips.detach().cpu().numpy() if isinstance(clips, torch.Tensor) else np.asarray(clips)
    if a.ndim != 4 or a.shape[0] == 0:
        raise DataError(f"save_clips_gif: clips of shape {a.shape} must be (N, F, H, W) with N >= 1")
    n, F, H, W = a.shape
    ncol = ncol or int(np.ceil(np.sqrt(n)))
    nrow = -(-n // ncol)
    grid = np.zeros((F, nrow * (H + 1) + 1, ncol * (W + 1) + 1), dtype=np.uint8)
    pix = (np.clip(a, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    for i in range(n):
        r, c = divmod(i, ncol)
        grid[:, 1 + r * (H + 1):1 + r * (H + 1) + H, 1 + c * (W + 1):1 + c * (W + 1) + W] = pix[i]
    frames = [Image.fromarray(g).resize((g.shape[1] * scale, g.shape[0] * scale), Image.Resampling.NEAREST)
              for g in grid]
    return atomic_write(path, lambda f: frames[0].save(f, format="GIF", save_all=True, append_images=frames[1:],
                                                       duration=int(1000 / fps), loop=0))
