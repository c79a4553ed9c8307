"""Versioned export directories: ``save_pretrained`` / ``load_export``.

An export (format 1) holds

- ``config.json``: the model's own configuration, ``{"format": 1, "library": "latentdit",
  "ambient_dim", "latent_dim", "learn_encoder", "identity_encoder" (W_B = I, not stored), "model": {...model config with the resolved
  num_classes...}, "diffusion": {"T0", "T"}, "data": {"normalisation", "image_shape",
  "pixel_range", "class_names"}}``: everything needed to rebuild the network and map its samples
  back to data space;
- ``sampling.json``: the sampling defaults (sampler, steps, grid, rho, guidance, denoise, clip);
- ``training.json``: the training configuration the model came from and the training metadata
  (step, seconds), for reference and for evaluation;
- ``model.safetensors``: the weights (EMA), no pickle.

Format 2 is format 1 with a learned first stage (``encoder.kind = "autoencoder"``): config.json
gains ``"first_stage": {"kind", "weights", "config"}`` and the export holds that stage's
``autoencoder.safetensors`` and ``autoencoder.json`` (:class:`latentdit.autoencoder.FirstStage`);
the network's ``ambient_dim`` is then the latent's c h w. Exports without a first stage are still
written as format 1, so that every version that reads format 1 reads them.

Format 0 is the layout before the format was versioned: one ``config.json`` holding the whole
training configuration under ``"config"`` beside the dimensions and the data record. Its model
section is read as written then, where a DiT block without ``activation`` used the tanh GELU.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from latentdit.autoencoder.stage import STAGE_CONFIG, STAGE_WEIGHTS, FirstStage
from latentdit.config import Config, ModelConfig, SampleConfig
from latentdit.errors import CheckpointError, ConfigError
from latentdit.io import atomic_write_bytes, atomic_write_json
from latentdit.models.score import LatentScoreNet
from latentdit.video_stage import load_first_stage

FORMAT_VERSION = 1  # an export without a first stage
FIRST_STAGE_FORMAT = 2  # an export with a learned first stage
EXPORT_CONFIG = "config.json"
EXPORT_SAMPLING = "sampling.json"
EXPORT_TRAINING = "training.json"
EXPORT_WEIGHTS = "model.safetensors"
DATA_KEYS = ("normalisation", "image_shape", "pixel_range", "class_names", "video_shape")
IMAGE_SOURCES = ("mnist", "digits", "images")  # data read as pixels in [0, 1]


def sampling_defaults(sc: SampleConfig) -> dict:
    """The ``sampling.json`` record of a sample configuration."""
    return asdict(sc)


def save_pretrained(model: LatentScoreNet, cfg: Config, path: str | Path, extra: dict | None = None,
                    first_stage=None) -> None:
    """Write a format-1 export of ``model`` (trained with ``cfg``) into ``path``, file by file atomically;
    format 2 with ``first_stage`` (a :class:`latentdit.autoencoder.FirstStage`), whose files go first.

    ``extra`` holds training metadata; its keys ``normalisation``, ``image_shape``, ``pixel_range``
    and ``class_names`` (the data record) go into the model config, the rest into ``training.json``.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    extra = dict(extra or {})
    data = {k: extra.pop(k, None) for k in DATA_KEYS}
    if data["pixel_range"] is None and data["image_shape"] is not None and cfg.data.source in IMAGE_SOURCES:
        data["pixel_range"] = [0.0, 1.0]
    version = FORMAT_VERSION if first_stage is None else FIRST_STAGE_FORMAT
    model_cfg = {"format": version, "library": "latentdit", "ambient_dim": model.ambient_dim,
                 "latent_dim": model.latent_dim, "learn_encoder": model.encoder.learn,
                 "identity_encoder": model.encoder.identity, "model": asdict(model.cfg),
                 "diffusion": {"T0": cfg.diffusion.T0, "T": cfg.diffusion.T}, "data": data}
    if first_stage is not None:
        first_stage.save(path)
        model_cfg["first_stage"] = {"kind": "conv_autoencoder", "weights": STAGE_WEIGHTS, "config": STAGE_CONFIG}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(path / EXPORT_WEIGHTS, save(state, metadata={"format": "pt", "library": "latentdit"}))
    atomic_write_json(path / EXPORT_TRAINING, {"config": cfg.to_dict(), **extra})
    atomic_write_json(path / EXPORT_SAMPLING, {"format": version, **sampling_defaults(cfg.sample)})
    atomic_write_json(path / EXPORT_CONFIG, model_cfg)  # last: marks a complete export


def _read_json(p: Path) -> dict:
    try:
        d = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{str(p)!r} is not a latentdit export file: {e}") from e
    if not isinstance(d, dict):
        raise CheckpointError(f"{str(p)!r} is not a latentdit export file: not a JSON object")
    return d


def _resolve_dir(path: Path) -> Path:
    if (path / "model" / EXPORT_WEIGHTS).exists() and not (path / EXPORT_WEIGHTS).exists():
        path = path / "model"  # a run directory was given
    if not path.is_dir():
        raise CheckpointError(f"{str(path)!r} is not a directory; pass a run directory or an export "
                              "directory containing config.json and model.safetensors")
    if not (path / EXPORT_CONFIG).is_file() or not (path / EXPORT_WEIGHTS).is_file():
        raise CheckpointError(f"{str(path)!r} holds no export (config.json and model.safetensors); "
                              "train first with `latentdit train --out RUN`")
    return path


def _read_v0(head: dict) -> tuple[dict, Config, dict, dict]:
    """(model record, training config, sampling defaults, metadata) of a format-0 config.json."""
    cfg = Config.from_saved(head["config"])  # fills a missing DiT activation with gelu_tanh
    record = {"ambient_dim": head["ambient_dim"], "latent_dim": head["latent_dim"],
              "learn_encoder": cfg.encoder.learn,
              "model": asdict(replace(cfg.model, num_classes=head.get("num_classes", cfg.model.num_classes))),
              "diffusion": {"T0": cfg.diffusion.T0, "T": cfg.diffusion.T},
              "data": {k: head.get(k) for k in DATA_KEYS}}
    if record["data"]["image_shape"] is not None and cfg.data.source in IMAGE_SOURCES:
        record["data"]["pixel_range"] = [0.0, 1.0]
    meta = {k: v for k, v in head.items() if k not in ("config", *DATA_KEYS)}
    return record, cfg, sampling_defaults(cfg.sample), meta


def load_export(path: str | Path) -> tuple[dict, Config, dict, dict, dict]:
    """Read an export directory (or a run directory holding one) by its format version:
    (model record, training config, sampling defaults, training metadata, weights)."""
    path = _resolve_dir(Path(path))
    head = _read_json(path / EXPORT_CONFIG)
    version = head.get("format", 0)
    try:
        if version == 0:
            record, cfg, sampling, meta = _read_v0(head)
        elif version in (FORMAT_VERSION, FIRST_STAGE_FORMAT):
            training = _read_json(path / EXPORT_TRAINING)
            cfg = Config.from_saved(training["config"])
            sampling = {k: v for k, v in _read_json(path / EXPORT_SAMPLING).items() if k != "format"}
            record, meta = head, {k: v for k, v in training.items() if k != "config"}
        else:
            raise CheckpointError(f"{str(path / EXPORT_CONFIG)!r} has export format {version!r}; this version of "
                                  f"latentdit reads formats 0..{FIRST_STAGE_FORMAT}: upgrade latentdit")
    except (KeyError, TypeError, ConfigError) as e:
        raise CheckpointError(f"{str(path / EXPORT_CONFIG)!r} is not a latentdit export config: {e}") from e
    try:
        state = load_file(str(path / EXPORT_WEIGHTS))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise CheckpointError(f"{str(path / EXPORT_WEIGHTS)!r} is truncated or corrupt ({e}); re-export it from "
                              "the run's newest checkpoint with `latentdit train --out RUN`") from e
    meta["format"] = version
    if record.get("first_stage"):
        meta["first_stage"] = load_first_stage(path)  # an image stage or a per-frame video stage
    return record, cfg, sampling, meta, state


def model_from_record(record: dict, state: dict | None = None) -> LatentScoreNet:
    """The network described by a model record, with ``state`` loaded when given."""
    mcfg = ModelConfig(**record["model"])
    model = LatentScoreNet(mcfg, record["ambient_dim"], record["latent_dim"], learn_encoder=record["learn_encoder"],
                           encoder_init="identity" if record.get("identity_encoder", False) else None)
    if state is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise CheckpointError(f"weights do not match the export's config.json: {str(e).splitlines()[0]}") from e
    return model


def from_pretrained(path: str | Path, *, device: str | torch.device = "cpu") -> tuple[LatentScoreNet, Config, dict]:
    """Load an export (any format version): (model in eval mode, training config, metadata).

    The metadata hold the training record (``step``, ...), ``format``, the data record
    (``normalisation``, ``image_shape``, ``pixel_range``, ``class_names``), ``sampling``, the
    sampling defaults, and for format 2 ``first_stage``, the :class:`latentdit.autoencoder.FirstStage`
    that maps the network's latent rows to the data.
    """
    record, cfg, sampling, meta, state = load_export(path)
    model = model_from_record(record, state)
    meta = {**meta, **{k: v for k, v in record["data"].items() if v is not None}, "sampling": sampling,
            "diffusion": record["diffusion"]}
    return model.to(device).eval(), cfg, meta
