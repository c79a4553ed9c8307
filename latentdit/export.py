"""The export format: the files of a trained pipeline, read by their format version.

An export (format 3) holds

- ``config.json``: ``{"format": 3, "library": "latentdit", "version", "model", "diffusion", "data"}``
  where ``model`` holds exactly the score network's arguments
  (:class:`latentdit.models.config.ScoreNetConfig`: ``LatentScoreNet(**model)`` builds it),
  ``diffusion`` the trained time range ``{"T0", "T"}``, ``data`` the data record
  (``normalisation``, ``image_shape``, ``pixel_range``, ``class_names``, and ``video_shape``
  (F, H, W) for clips) and, with a learned first stage, ``"first_stage": {"kind", "weights",
  "config"}`` naming that stage's ``autoencoder.safetensors`` and ``autoencoder.json`` (kind
  ``conv_autoencoder``, or ``per_frame_video_autoencoder``: the same files, the record marked with
  the clips' layout, :mod:`latentdit.firststage.video`);
- ``sampling.json``: the sampling defaults (sampler, steps, grid, rho, guidance, denoise); ``grid``
  is a grid kind or, after :func:`store_fitted_grid`, a list of explicit times from T to T0;
- ``model.safetensors``: the weights (EMA), no pickle;
- ``training.json``: the training configuration and metadata (step, seconds) as provenance.
  Loading never reads it.

Earlier formats still load. Format 1 kept the network's arguments in three places (``ambient_dim``,
``latent_dim``, ``learn_encoder``, ``identity_encoder`` beside ``model``); format 2 is format 1 with
a first stage. Format 0 is the layout before the format was versioned: one ``config.json`` with the
whole training configuration under ``"config"`` (a DiT block without ``activation`` used the tanh
GELU then), read here without today's training schema.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from latentdit.errors import CheckpointError
from latentdit.firststage.stage import STAGE_CONFIG, STAGE_WEIGHTS, FirstStage
from latentdit.io import atomic_write_bytes, atomic_write_json
from latentdit.firststage.video import VideoFirstStage, load_first_stage
from latentdit.models.config import ModelConfig, ScoreNetConfig
from latentdit.version import __version__

FORMAT_VERSION = 3
EXPORT_CONFIG = "config.json"
EXPORT_SAMPLING = "sampling.json"
EXPORT_TRAINING = "training.json"
EXPORT_WEIGHTS = "model.safetensors"
DATA_KEYS = ("normalisation", "image_shape", "pixel_range", "class_names", "video_shape")
IMAGE_SOURCES = ("mnist", "digits", "images")  # data read as pixels in [0, 1]
_ARCH = tuple(f.name for f in fields(ModelConfig))


def default_pixel_range(source: str, image_shape) -> list[float] | None:
    """The pixel range of image data whose loader records none: [0, 1] for the image sources."""
    return [0.0, 1.0] if image_shape is not None and source in IMAGE_SOURCES else None


def store_fitted_grid(path: str | Path, grid, sampler: str | None = None) -> dict:
    """Write a fitted time grid (explicit times from T to T0, e.g. from
    :func:`latentdit.sampling.fit.fit_grid`) into an export's ``sampling.json`` as its default:
    ``grid`` the times, ``steps`` their number of steps, ``sampler`` if given; returns the record."""
    path = export_dir(path)
    rec = _read_json(path / EXPORT_SAMPLING) if (path / EXPORT_SAMPLING).is_file() else {}
    times = [float(t) for t in grid]
    rec.update(grid=times, steps=len(times) - 1, **({"sampler": sampler} if sampler else {}))
    atomic_write_json(path / EXPORT_SAMPLING, rec)
    return rec


@dataclass
class ExportContents:
    """What an export holds, by meaning rather than by file (any format version)."""

    model: dict  # the score network's arguments (ScoreNetConfig fields)
    state: dict  # its weights
    T0: float
    T: float
    data: dict = field(default_factory=dict)  # the data record, DATA_KEYS
    sampling: dict = field(default_factory=dict)  # sampling.json without its format key
    first_stage: FirstStage | VideoFirstStage | None = None
    format: int = FORMAT_VERSION


def write_export(path: str | Path, c: ExportContents, training: dict | None = None) -> None:
    """Write ``c`` as a format-3 export into ``path``, file by file atomically, config.json last (it
    marks a complete export); ``training`` (the run's configuration and metadata) goes to training.json."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    head = {"format": FORMAT_VERSION, "library": "latentdit", "version": __version__, "model": dict(c.model),
            "diffusion": {"T0": c.T0, "T": c.T}, "data": {k: c.data.get(k) for k in DATA_KEYS}}
    if c.first_stage is not None:
        c.first_stage.save(path)
        kind = "per_frame_video_autoencoder" if isinstance(c.first_stage, VideoFirstStage) else "conv_autoencoder"
        head["first_stage"] = {"kind": kind, "weights": STAGE_WEIGHTS, "config": STAGE_CONFIG}
    state = {k: v.detach().cpu().contiguous() for k, v in c.state.items()}
    atomic_write_bytes(path / EXPORT_WEIGHTS, save(state, metadata={"format": "pt", "library": "latentdit"}))
    if training is not None:
        atomic_write_json(path / EXPORT_TRAINING, training)
    atomic_write_json(path / EXPORT_SAMPLING, {"format": FORMAT_VERSION, **c.sampling})
    atomic_write_json(path / EXPORT_CONFIG, head)


def _read_json(p: Path) -> dict:
    try:
        d = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{str(p)!r} is not a latentdit export file: {e}") from e
    if not isinstance(d, dict):
        raise CheckpointError(f"{str(p)!r} is not a latentdit export file: not a JSON object")
    return d


def export_dir(path: str | Path) -> Path:
    """The export directory of ``path``: itself, or the ``model`` folder of a run directory."""
    path = Path(path)
    if (path / "model" / EXPORT_WEIGHTS).exists() and not (path / EXPORT_WEIGHTS).exists():
        path = path / "model"  # a run directory was given
    if not path.is_dir():
        raise CheckpointError(f"{str(path)!r} is not a directory; pass a run directory or an export "
                              "directory containing config.json and model.safetensors")
    if not (path / EXPORT_CONFIG).is_file() or not (path / EXPORT_WEIGHTS).is_file():
        raise CheckpointError(f"{str(path)!r} holds no export (config.json and model.safetensors); "
                              "train first with `latentdit train --out RUN`")
    return path


def _read_v0(head: dict) -> dict:
    """The parts of a format-0 config.json (the whole training configuration under "config")."""
    run = head["config"]
    model = {k: v for k, v in run["model"].items() if k in _ARCH}
    if model.get("block", "dit") == "dit":
        model.setdefault("activation", "gelu_tanh")  # written before the exact GELU became the default
    model["num_classes"] = head.get("num_classes", model.get("num_classes", 0))
    data = {k: head.get(k) for k in DATA_KEYS}
    data["pixel_range"] = data["pixel_range"] or default_pixel_range(run["data"].get("source", "gmm"),
                                                                     data["image_shape"])
    return {"model": {**model, "ambient_dim": head["ambient_dim"], "latent_dim": head["latent_dim"],
                      "learn_encoder": run["encoder"].get("learn", False)},
            "diffusion": run["diffusion"], "data": data, "sampling": run.get("sample", {})}


def _read_v12(head: dict, path: Path) -> dict:
    model = {**head["model"], "ambient_dim": head["ambient_dim"], "latent_dim": head["latent_dim"],
             "learn_encoder": head["learn_encoder"], "identity_encoder": head.get("identity_encoder", False)}
    return {"model": model, "diffusion": head["diffusion"], "data": head["data"],
            "sampling": _read_json(path / EXPORT_SAMPLING)}


def _read_v3(head: dict, path: Path) -> dict:
    return {"model": head["model"], "diffusion": head["diffusion"], "data": head["data"],
            "sampling": _read_json(path / EXPORT_SAMPLING)}


def read_export(path: str | Path) -> ExportContents:
    """Read an export directory (or a run directory holding one) of any format version; never
    reads training.json."""
    path = export_dir(path)
    head = _read_json(path / EXPORT_CONFIG)
    version = head.get("format", 0)
    readers = {0: lambda: _read_v0(head), 1: lambda: _read_v12(head, path), 2: lambda: _read_v12(head, path),
               FORMAT_VERSION: lambda: _read_v3(head, path)}
    if version not in readers:
        raise CheckpointError(f"{str(path / EXPORT_CONFIG)!r} has export format {version!r}; this version of "
                              f"latentdit reads formats 0..{FORMAT_VERSION}: upgrade latentdit")
    try:
        parts = readers[version]()
        model = asdict(ScoreNetConfig.from_dict(parts["model"]))
        T0, T = float(parts["diffusion"]["T0"]), float(parts["diffusion"]["T"])
    except (KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{str(path / EXPORT_CONFIG)!r} is not a latentdit export config: {e}") from e
    try:
        state = load_file(str(path / EXPORT_WEIGHTS))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise CheckpointError(f"{str(path / EXPORT_WEIGHTS)!r} is truncated or corrupt ({e}); re-export it from "
                              "the run's newest checkpoint with `latentdit train --out RUN`") from e
    sampling = {k: v for k, v in parts["sampling"].items() if k != "format"}
    stage = load_first_stage(path) if head.get("first_stage") else None  # an image or a per-frame video stage
    return ExportContents(model, state, T0, T, {k: parts["data"].get(k) for k in DATA_KEYS}, sampling, stage, version)


def read_training_record(path: str | Path) -> dict:
    """The provenance an export keeps in training.json (the run's configuration under ``config``,
    ``step``, ``steps_trained``, ...; format 0: in config.json); {} when absent. Not needed to load
    or sample."""
    path = export_dir(path)
    if (path / EXPORT_TRAINING).is_file():
        return _read_json(path / EXPORT_TRAINING)
    head = _read_json(path / EXPORT_CONFIG)
    if head.get("format", 0) == 0 and "config" in head:
        return {k: v for k, v in head.items() if k not in DATA_KEYS}
    return {}


def load_weights(model: torch.nn.Module, state: dict) -> None:
    """``model.load_state_dict(state)`` with a one-line error naming the export."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"weights do not match the export's config.json: {str(e).splitlines()[0]}") from e
