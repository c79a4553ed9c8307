"""Classifier-free guidance in one place: the null class, label dropout and the guided denoiser.

A class-conditional network with ``num_classes`` classes embeds ``num_classes + 1`` labels; the
last index, ``num_classes``, is the null class. Training replaces each label by the null class with
probability ``model.class_dropout`` (:func:`drop_labels`), so the same network is also the
unconditional model. Sampling with guidance scale w combines the two predictions,

    x0_hat = x0_hat_uncond + w (x0_hat_cond - x0_hat_uncond),

which, the score being affine in x0_hat with the same coefficients (eq. 2.5), is exactly the
guided score s_uncond + w (s_cond - s_uncond).
"""

from __future__ import annotations

import torch


def null_labels(n: int, num_classes: int, *, device=None) -> torch.Tensor:
    """``n`` copies of the null class (index ``num_classes``), int64."""
    if num_classes <= 0:
        raise ValueError(f"null_labels: num_classes={num_classes} must be > 0 (an unconditional model has none)")
    return torch.full((n,), num_classes, dtype=torch.long, device=device)


def drop_labels(y: torch.Tensor, drop_mask: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Label dropout: ``y`` with the entries where ``drop_mask`` is true replaced by the null class."""
    if drop_mask.shape != y.shape:
        raise ValueError(f"drop_labels: drop_mask has shape {tuple(drop_mask.shape)}, y has {tuple(y.shape)}")
    return torch.where(drop_mask, torch.full_like(y, num_classes), y)


class GuidedDenoiser:
    """``denoiser(x, t)`` of a (possibly class-conditional) network, guided or not.

    - unconditional model: the network's own denoiser (``labels`` must be None);
    - conditional model without labels: the null class, the unconditional model it was trained as;
    - labels with ``guidance == 1``: the conditional denoiser;
    - labels with ``guidance != 1``: classifier-free guidance, one batched call of 2N rows.
    """

    def __init__(self, model, labels: torch.Tensor | None = None, guidance: float = 1.0):
        if labels is not None and model.num_classes <= 0:
            raise ValueError("GuidedDenoiser: labels given but the model is not class-conditional")
        if labels is not None and not bool(((labels >= 0) & (labels < model.num_classes)).all()):
            raise ValueError(f"GuidedDenoiser: labels must lie in 0..{model.num_classes - 1}")
        self.model, self.labels, self.guidance = model, labels, float(guidance)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        m, y = self.model, self.labels
        if y is None:
            null = null_labels(x.shape[0], m.num_classes, device=x.device) if m.num_classes > 0 else None
            return m.denoise(x, t, null)
        y = y.to(x.device)
        if self.guidance == 1.0:
            return m.denoise(x, t, y)
        d = m.denoise(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null_labels(len(y), m.num_classes,
                                                                                      device=x.device)]))
        d_c, d_u = d.chunk(2)
        return torch.lerp(d_u, d_c, self.guidance)


def balanced_labels(num: int, num_classes: int) -> torch.Tensor:
    """Labels 0, 1, ..., K-1, 0, 1, ... of length ``num`` (equal counts up to one)."""
    return torch.arange(num) % num_classes
