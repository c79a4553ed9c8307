"""Invertible affine normalisation of data vectors, recorded so it can be saved and undone.

Every kind is x' = (x - shift) / scale with ``shift`` and ``scale`` either scalars or (D,) vectors:

- ``minmax``: one global range [lo, hi] of all entries is mapped to [-1, 1]
  (shift = (lo + hi) / 2, scale = (hi - lo) / 2). A single range keeps image pixels comparable
  and never divides by zero for constant pixels; constant data get scale 1.
- ``standard``: per-feature mean and standard deviation (shift = mean, scale = std); a constant
  feature gets scale 1 and maps to 0.
- ``none``: the identity.

``to_dict`` gives a JSON-friendly record for a run config; ``Normalisation.from_dict`` restores it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from latentdit.errors import DataError

NORMALISATIONS = ("minmax", "standard", "none")


@dataclass
class Normalisation:
    """x' = (x - shift) / scale; ``shift`` and ``scale`` are 0-d or (D,) float32 tensors."""

    kind: str
    shift: torch.Tensor
    scale: torch.Tensor

    @classmethod
    def fit(cls, x: torch.Tensor, kind: str = "minmax") -> "Normalisation":
        """Fit the normalisation ``kind`` to data x of shape (N, D)."""
        if kind not in NORMALISATIONS:
            raise DataError(f"unknown normalisation {kind!r}; use one of {', '.join(NORMALISATIONS)}")
        x = x.to(torch.float64)
        if kind == "minmax":
            lo, hi = x.min(), x.max()
            shift, scale = (lo + hi) / 2, (hi - lo) / 2
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        elif kind == "standard":
            shift, scale = x.mean(0), x.std(0, correction=0)  # (D,), (D,)
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        else:
            shift, scale = torch.tensor(0.0), torch.tensor(1.0)
        return cls(kind, shift.to(torch.float32), scale.to(torch.float32))

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Raw units -> normalised units; x (..., D)."""
        return (x - self.shift.to(x)) / self.scale.to(x)

    def invert(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised units -> raw units; x (..., D)."""
        return x * self.scale.to(x) + self.shift.to(x)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly record: ``{"kind", "shift", "scale"}`` (floats or lists of floats)."""
        return {"kind": self.kind, "shift": self.shift.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Normalisation":
        """Inverse of :meth:`to_dict`."""
        try:
            kind, shift, scale = d["kind"], d["shift"], d["scale"]
        except (KeyError, TypeError) as e:
            raise DataError(f"normalisation record needs keys kind, shift, scale; got {d!r}") from e
        if kind not in NORMALISATIONS:
            raise DataError(f"unknown normalisation {kind!r}; use one of {', '.join(NORMALISATIONS)}")
        return cls(kind, torch.tensor(shift, dtype=torch.float32), torch.tensor(scale, dtype=torch.float32))
