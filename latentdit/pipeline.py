"""The sampling pipeline: a trained network, its OU schedule and its data normalisation.

``LatentDiTPipeline.from_pretrained(path)(num, ...)`` returns samples in DATA space (decoded by
the first stage when there is one, the normalisation undone; image data clipped to their pixel
range unless ``clip=False``). :meth:`LatentDiTPipeline.sample_model_space` returns the network's
own space (the normalised data, or the autoencoder's scaled latent rows), and
:meth:`LatentDiTPipeline.decode` maps that space to the normalised data, for metrics that compare
with the training set as the model saw it.

Building (data, model) lives in :mod:`latentdit.build`, the export format in :mod:`latentdit.export`;
their public names are re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from latentdit.autoencoder.stage import FirstStage
from latentdit.build import TrainData, build_data, build_ground_truth, build_model, model_dims, resolve_device
from latentdit.data.normalise import Normalisation
from latentdit.export import (EXPORT_CONFIG, EXPORT_WEIGHTS, FORMAT_VERSION, IMAGE_SOURCES, from_pretrained,
                              sampling_defaults, save_pretrained)
from latentdit.models.guidance import GuidedDenoiser
from latentdit.models.score import LatentScoreNet
from latentdit.sampling import DEFAULTS, get_sampler, sample

__all__ = ["EXPORT_CONFIG", "EXPORT_WEIGHTS", "FORMAT_VERSION", "LatentDiTPipeline", "TrainData", "build_data",
           "build_ground_truth", "build_model", "from_pretrained", "model_dims", "resolve_device", "save_pretrained"]


@dataclass
class LatentDiTPipeline:
    """model + OU time range + data normalisation + sampling defaults.

    ``defaults`` has the keys of ``sampling.json`` (sampler, steps, grid, rho, guidance, denoise; a
    ``grid`` may be explicit times, a fitted grid); unset keys take :data:`latentdit.sampling.DEFAULTS`;
    ``pixel_range`` (lo, hi) is set for image data, whose samples are clipped to it by default.
    """

    model: LatentScoreNet
    T0: float = 1e-3
    T: float = 10.0
    normalisation: Normalisation | None = None
    pixel_range: tuple[float, float] | None = None
    defaults: dict = field(default_factory=dict)
    image_shape: tuple[int, ...] | None = None
    first_stage: FirstStage | None = None  # the autoencoder of encoder.kind = "autoencoder"

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | torch.device = "cpu") -> "LatentDiTPipeline":
        """The pipeline of an export or run directory."""
        model, _, meta = from_pretrained(path, device=device)
        return cls.from_model(model, meta)

    @classmethod
    def from_model(cls, model: LatentScoreNet, meta: dict) -> "LatentDiTPipeline":
        """A pipeline from a network and an export's metadata (as :func:`from_pretrained` returns)."""
        norm = meta.get("normalisation")
        pr, shape = meta.get("pixel_range"), meta.get("image_shape")
        diff = meta.get("diffusion", {})
        return cls(model, T0=diff.get("T0", 1e-3), T=diff.get("T", 10.0),
                   normalisation=Normalisation.from_dict(norm) if norm else None,
                   pixel_range=tuple(pr) if pr else None, defaults=dict(meta.get("sampling", {})),
                   image_shape=tuple(shape) if shape else None, first_stage=meta.get("first_stage"))

    @classmethod
    def from_config(cls, model: LatentScoreNet, cfg, data_meta: dict | None = None,
                    first_stage: FirstStage | None = None) -> "LatentDiTPipeline":
        """A pipeline for a network being trained with ``cfg`` (sampling defaults from ``cfg.sample``);
        ``data_meta`` is the data record of an export (normalisation, image_shape, pixel_range),
        ``first_stage`` the autoencoder when the network models its latent."""
        meta = {**(data_meta or {}), "sampling": sampling_defaults(cfg.sample),
                "diffusion": {"T0": cfg.diffusion.T0, "T": cfg.diffusion.T}}
        if meta.get("image_shape") and "pixel_range" not in meta and cfg.data.source in IMAGE_SOURCES:
            meta["pixel_range"] = [0.0, 1.0]
        if first_stage is not None:
            meta["first_stage"] = first_stage
        return cls.from_model(model, meta)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _setting(self, name: str, value, fallback):
        return self.defaults.get(name, fallback) if value is None else value

    @torch.no_grad()
    def sample_model_space(self, num: int, *, labels: torch.Tensor | None = None, guidance: float | None = None,
                           sampler: str | None = None, steps: int | None = None, grid: str | list[float] | None = None,
                           rho: float | None = None, denoise: bool | None = None,
                           generator: torch.Generator | None = None, seed: int | None = None,
                           batch_size: int = 4096, progress: bool = False) -> torch.Tensor:
        """``num`` samples (num, D) in the network's normalised space; unset options take the defaults."""
        if not isinstance(num, int) or num <= 0:
            raise ValueError(f"sample_model_space: num={num!r} must be a positive integer")
        if labels is not None and len(labels) != num:
            raise ValueError(f"sample_model_space: labels has {len(labels)} entries for num={num}")
        sampler = self._setting("sampler", sampler, DEFAULTS.sampler)
        get_sampler(sampler)
        steps = self._setting("steps", steps, DEFAULTS.steps)
        grid, rho = self._setting("grid", grid, DEFAULTS.grid), self._setting("rho", rho, DEFAULTS.rho)
        guidance = self._setting("guidance", guidance, DEFAULTS.guidance)
        denoise = self._setting("denoise", denoise, DEFAULTS.denoise)
        if generator is None:
            generator = torch.Generator(device=self.device).manual_seed(0 if seed is None else seed)
        out = []
        for start in range(0, num, batch_size):
            n = min(batch_size, num - start)
            y = labels[start:start + n].to(self.device) if labels is not None else None
            fn = GuidedDenoiser(self.model, y, guidance)
            out.append(sample(fn, (n, self.model.ambient_dim), sampler=sampler, steps=steps, T0=self.T0, T=self.T,
                              grid=grid, rho=rho, generator=generator, device=self.device, progress=progress,
                              denoise=denoise))
        return torch.cat(out)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised data rows (N, D) -> the network's space (the first stage's latent rows, if any)."""
        return x if self.first_stage is None else self.first_stage.encode_vectors(x).to(x.device)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """The network's space -> normalised data rows (N, D): the first stage's decoder, if any."""
        return x if self.first_stage is None else self.first_stage.decode_vectors(x).to(x.device)

    def to_data_space(self, x: torch.Tensor, *, clip: bool = True) -> torch.Tensor:
        """Samples of the network's space in data units: decoded (:meth:`decode`), the normalisation
        undone; image data clipped to the pixel range unless ``clip=False``."""
        x = self.decode(x)
        if self.normalisation is not None:
            x = self.normalisation.invert(x)
        if clip and self.pixel_range is not None:
            x = x.clamp(*self.pixel_range)
        return x

    def __call__(self, num: int, *, clip: bool = True, **kw) -> torch.Tensor:
        """``num`` samples in data space; ``kw`` as :meth:`sample_model_space` (labels, guidance,
        sampler, steps, grid, rho, denoise, generator or seed, batch_size, progress)."""
        return self.to_data_space(self.sample_model_space(num, **kw), clip=clip)
