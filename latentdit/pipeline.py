"""The trained artifact: a score network, its OU time range, its data record, an optional first
stage and its sampling defaults.

``LatentDiTPipeline.from_pretrained(path)(num, ...)`` returns samples in DATA space (decoded by
the first stage when there is one, the normalisation undone; image data clipped to their pixel
range unless ``clip=False``); :meth:`LatentDiTPipeline.save_pretrained` writes it
(:mod:`latentdit.export` holds the file format). :meth:`LatentDiTPipeline.sample_model_space`
returns the network's own space (the normalised data, or the autoencoder's scaled latent rows), and
:meth:`LatentDiTPipeline.decode` maps that space to the normalised data, for metrics that compare
with the training set as the model saw it. Sampling needs nothing of the training recipe.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from latentdit.data.normalise import Normalisation
from latentdit.export import ExportContents, load_weights, read_export, write_export
from latentdit.firststage.stage import FirstStage
from latentdit.firststage.video import VideoFirstStage
from latentdit.models.guidance import GuidedDenoiser
from latentdit.models.score import LatentScoreNet
from latentdit.output import to_output
from latentdit.sampling import SamplingDefaults, get_sampler, sample

__all__ = ["DataRecord", "LatentDiTPipeline", "SamplingDefaults"]


@dataclass
class DataRecord:
    """How the network's data space maps to the data: the normalisation to undo, the image shape of
    image data (rows are row-major (H, W[, C])), their pixel range and class names; for clips the
    video shape (F, H, W) (rows are row-major (F, H, W), ``image_shape`` one frame's)."""

    normalisation: Normalisation | None = None
    image_shape: tuple[int, ...] | None = None
    pixel_range: tuple[float, float] | None = None
    class_names: list[str] | None = None
    video_shape: tuple[int, int, int] | None = None

    @classmethod
    def from_dict(cls, d: dict) -> "DataRecord":
        """From an export's ``data`` record; keys it lacks (older exports) are None."""
        norm, shape, pr = d.get("normalisation"), d.get("image_shape"), d.get("pixel_range")
        video = d.get("video_shape")
        return cls(Normalisation.from_dict(norm) if norm else None, tuple(shape) if shape else None,
                   (float(pr[0]), float(pr[1])) if pr else None, d.get("class_names"),
                   tuple(int(v) for v in video) if video else None)

    def to_dict(self) -> dict:
        return {"normalisation": None if self.normalisation is None else self.normalisation.to_dict(),
                "image_shape": None if self.image_shape is None else list(self.image_shape),
                "pixel_range": None if self.pixel_range is None else list(self.pixel_range),
                "class_names": self.class_names,
                "video_shape": None if self.video_shape is None else list(self.video_shape)}


@dataclass
class LatentDiTPipeline:
    """model + OU time range + data record + first stage + sampling defaults (a ``grid`` of the
    defaults may be explicit times: a fitted grid, :func:`latentdit.export.store_fitted_grid`)."""

    model: LatentScoreNet
    T0: float = 1e-3
    T: float = 10.0
    data: DataRecord = field(default_factory=DataRecord)
    defaults: SamplingDefaults = field(default_factory=SamplingDefaults)
    # the autoencoder of encoder.kind = "autoencoder" (per frame for clips)
    first_stage: FirstStage | VideoFirstStage | None = None

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | torch.device = "cpu") -> "LatentDiTPipeline":
        """The pipeline of an export or run directory (any export format), the network in eval mode."""
        c = read_export(path)
        model = LatentScoreNet(**c.model)
        load_weights(model, c.state)
        return cls(model.to(device).eval(), c.T0, c.T, DataRecord.from_dict(c.data),
                   SamplingDefaults.from_dict(c.sampling), c.first_stage)

    def save_pretrained(self, path: str | Path, *, training: dict | None = None) -> None:
        """Write the pipeline as an export (:mod:`latentdit.export`); ``training`` (the training
        configuration and metadata) is kept as provenance in training.json."""
        write_export(path, ExportContents(self.model.config_dict(), self.model.state_dict(), self.T0, self.T,
                                          self.data.to_dict(), asdict(self.defaults), self.first_stage), training)

    @property
    def normalisation(self) -> Normalisation | None:
        return self.data.normalisation

    @property
    def pixel_range(self) -> tuple[float, float] | None:
        return self.data.pixel_range

    @property
    def image_shape(self) -> tuple[int, ...] | None:
        return self.data.image_shape

    @property
    def video_shape(self) -> tuple[int, int, int] | None:
        """(F, H, W) of clip data (samples are rows of F H W pixels), else None."""
        return self.data.video_shape

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

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
        d = self.defaults
        sampler = d.sampler if sampler is None else sampler
        get_sampler(sampler)
        steps = d.steps if steps is None else steps
        grid, rho = d.grid if grid is None else grid, d.rho if rho is None else rho
        guidance = d.guidance if guidance is None else guidance
        denoise = d.denoise if denoise is None else denoise
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

    def __call__(self, num: int, *, clip: bool = True, output_type: str | None = None, **kw) -> torch.Tensor:
        """``num`` samples in data space; ``kw`` as :meth:`sample_model_space` (labels, guidance,
        sampler, steps, grid, rho, denoise, generator or seed, batch_size, progress).
        ``output_type``: "images" (N, C, H, W), the default for image data (clips: (N, F, H, W)), or
        "vectors" (N, D)."""
        x = self.to_data_space(self.sample_model_space(num, **kw), clip=clip)
        return to_output(x, self.image_shape, output_type, self.video_shape)
