"""The first stage's reconstruction floor: what the DiT's samples cannot beat.

A generated latent is decoded by the same decoder as a reconstruction, so the FID of the
reconstructions of real images (against the real set) is the floor of the sample FID, as the FID
of PCA projections is for a linear encoder. Both FIDs are computed against the whole real set;
with fewer reconstructions than samples the floor carries more of FID's small-sample bias (it is
then an overestimate of the floor at the samples' count).
"""

from __future__ import annotations

from pathlib import Path

import torch

from latentdit.firststage.stage import FirstStage
from latentdit.metrics import fid as fid_metrics


@torch.no_grad()
def reconstruction_mse(stage: FirstStage, loaded, batch_size: int = 500) -> float:
    """Mean squared error of decode(encode(x)) in pixel units [0, 1] over all images of ``loaded``."""
    total, count = 0.0, 0
    for i in range(0, len(loaded), batch_size):
        x = loaded.x[i:i + batch_size]
        img = stage.images_from_rows(x)
        rec = stage.decode_images(stage.encode_images(img))
        H, W = stage.image_shape[:2]
        err = (rec - img)[:, :, :H, :W]
        total += float(err.double().pow(2).sum())
        count += err.numel()
    return total / count


def reconstruction_metrics(stage: FirstStage, loaded, *, num: int = 1000, fid: bool = True, extractor=None,
                           device: str | torch.device = "cpu", feature_cache: Path | None | bool = True,
                           seed: int = 0, progress: bool = False) -> dict:
    """``recon_mse`` over the whole set and, with ``fid``, ``recon_fid``: the Inception FID of ``num``
    reconstructions of randomly chosen real images against the whole real set (``recon_num``).

    ``extractor`` replaces the Inception network (``features(images, batch_size, progress)``);
    ``feature_cache`` as in :func:`latentdit.evaluation.real.evaluate_real` (the real set's features
    are shared with it through that cache).
    """
    out = {"recon_mse": reconstruction_mse(stage, loaded)}
    if not fid or num <= 0:
        return out
    num = min(num, len(loaded))
    idx = torch.randperm(len(loaded), generator=torch.Generator().manual_seed(seed))[:num]
    rec = stage.decode_vectors(stage.encode_vectors(loaded.x[idx]))
    ext = extractor if extractor is not None else fid_metrics.InceptionFeatures(device)
    cache = fid_metrics.cache_dir() if feature_cache is True else (Path(feature_cache) if feature_cache else None)
    f_real = fid_metrics.cached_features(loaded.to_images(loaded.x), ext, cache=cache, progress=progress)
    f_rec = ext.features(loaded.to_images(rec), fid_metrics.FEATURE_BATCH, progress)
    out.update({"recon_fid": fid_metrics.fid_from_features(f_real, f_rec), "recon_num": num})
    return out
