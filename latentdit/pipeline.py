"""Builds the pieces of a run from its configuration: data, ground truth, model, export/import.

``save_pretrained`` / ``from_pretrained`` write and read a self-contained export directory:
``config.json`` (the resolved :class:`~latentdit.config.Config` plus the model's dimensions) and
``model.safetensors`` (EMA weights). No pickle is involved, and no training state is needed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from latentdit.config import Config
from latentdit.data.gmm import SubspaceGMM
from latentdit.encoder import pca_basis
from latentdit.errors import CheckpointError, ConfigError, DataError
from latentdit.models.score import LatentScoreNet

EXPORT_CONFIG = "config.json"
EXPORT_WEIGHTS = "model.safetensors"


@dataclass
class TrainData:
    """Training data in the model's (normalised) space plus what is known about its law."""

    x: torch.Tensor  # (N, D) float32
    labels: torch.Tensor | None  # (N,) int64
    num_classes: int
    gmm: SubspaceGMM | None = None  # the ground truth when data.source == "gmm"
    loaded: object | None = None  # latentdit.data.real.LoadedData for real data


def build_ground_truth(cfg: Config) -> SubspaceGMM:
    d = cfg.data
    return SubspaceGMM.random(d.ambient_dim, d.latent_dim, d.components, seed=d.seed)


def build_data(cfg: Config) -> TrainData:
    """Load or generate the training set described by ``cfg.data``."""
    d = cfg.data
    if d.source == "gmm":
        gmm = build_ground_truth(cfg)
        gen = torch.Generator().manual_seed(d.seed + 1)
        x, comp = gmm.sample(d.n, generator=gen, return_labels=True)
        labels = comp if d.conditional else None
        return TrainData(x.float(), labels, d.components if d.conditional else 0, gmm=gmm)
    if d.source == "long":  # R^D with B = I; the law itself is in latentdit.data.long
        from latentdit.data.long import LongMixture

        law = LongMixture.random(d.ambient_dim, d.components, seed=d.seed)
        x, comp = law.sample(d.n, generator=torch.Generator().manual_seed(d.seed + 1), return_labels=True)
        return TrainData(x.float(), comp if d.conditional else None, d.components if d.conditional else 0)
    from latentdit.data.real import load_data

    loaded = load_data(d.source, d.path, image_size=d.image_size, normalise=d.normalise,
                       max_items=d.n if d.n > 0 else None, seed=d.seed,
                       **({"label_column": d.label_column} if d.source == "csv" else {}))
    labels = loaded.labels if d.conditional else None
    if d.conditional and labels is None:
        raise DataError(f"data.conditional=true but the {d.source!r} data carry no labels; "
                        "set data.conditional=false or provide labels")
    return TrainData(loaded.x.float(), labels, loaded.num_classes if labels is not None else 0, loaded=loaded)


def model_dims(cfg: Config, data: TrainData) -> tuple[int, int]:
    D = data.x.shape[1]
    d0 = cfg.encoder.latent_dim
    if d0 > D:
        raise ConfigError(f"encoder.latent_dim={d0} is larger than the data dimension D={D}; lower it")
    if d0 > data.x.shape[0] and cfg.encoder.init != "identity":
        raise ConfigError(f"encoder.latent_dim={d0} is larger than the number of samples "
                          f"n={data.x.shape[0]}; lower it or provide more data")
    return D, d0


def build_model(cfg: Config, data: TrainData, *, generator: torch.Generator | None = None) -> LatentScoreNet:
    """The score network of eq. (2.5), its W_B initialised from PCA of the data or at random."""
    D, d0 = model_dims(cfg, data)
    mcfg = cfg.model
    if data.num_classes != mcfg.num_classes:
        from dataclasses import replace

        mcfg = replace(mcfg, num_classes=data.num_classes)
        cfg.model = mcfg
    x = data.x
    if cfg.encoder.init == "identity":
        W, h = "identity", x.double()
        second = float(h.pow(2).mean())
    elif cfg.encoder.init == "pca":
        W, _ = pca_basis(x, d0)
        h = x.double() @ W.double()
        second = float(h.pow(2).sum(1).mean() / d0)
    else:
        W, h = None, None
        second = float(x.double().pow(2).sum(1).mean() / d0)
    model = LatentScoreNet(mcfg, D, d0, encoder_init=W, learn_encoder=cfg.encoder.learn,
                           latent_second_moment=max(second, 1e-8), generator=generator)
    if mcfg.precondition_stats == "diagonal":
        if h is None:  # a random W_B: the statistics of the data's coordinates along it
            h = x.double() @ model.W_B.detach().double()
        model.latent_mean.copy_(h.mean(0))
        model.latent_var.copy_(h.var(0, correction=0).clamp_min(1e-8))
    return model


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but CUDA is not available; use 'cpu' or 'auto'")
    return dev


# ------------------------------------------------------------------------------------------ export


def save_pretrained(model: LatentScoreNet, cfg: Config, path: str | Path, extra: dict | None = None) -> None:
    """Write ``config.json`` and ``model.safetensors`` into ``path`` (atomically, file by file)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    meta = {"config": cfg.to_dict(), "ambient_dim": model.ambient_dim, "latent_dim": model.latent_dim,
            "num_classes": model.num_classes, **(extra or {})}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path / (EXPORT_WEIGHTS + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt", "library": "latentdit"})
    _fsync(tmp)
    os.replace(tmp, path / EXPORT_WEIGHTS)
    tmp = path / (EXPORT_CONFIG + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    _fsync(tmp)
    os.replace(tmp, path / EXPORT_CONFIG)


def _fsync(p: Path) -> None:
    with open(p, "rb") as f:
        os.fsync(f.fileno())


def from_pretrained(path: str | Path, *, device: str | torch.device = "cpu") -> tuple[LatentScoreNet, Config, dict]:
    """Load an export written by :func:`save_pretrained`: (model in eval mode, config, metadata)."""
    path = Path(path)
    if (path / "model" / EXPORT_WEIGHTS).exists() and not (path / EXPORT_WEIGHTS).exists():
        path = path / "model"  # a run directory was given
    cfg_file, w_file = path / EXPORT_CONFIG, path / EXPORT_WEIGHTS
    if not path.is_dir():
        raise CheckpointError(f"{str(path)!r} is not a directory; pass a run directory or an export "
                              "directory containing config.json and model.safetensors")
    if not cfg_file.is_file() or not w_file.is_file():
        raise CheckpointError(f"{str(path)!r} holds no export (config.json and model.safetensors); "
                              "train first with `latentdit train --out RUN`")
    try:
        meta = json.loads(cfg_file.read_text())
        cfg = Config.from_saved(meta["config"])
    except (json.JSONDecodeError, KeyError) as e:
        raise CheckpointError(f"{str(cfg_file)!r} is not a latentdit export config: {e}") from e
    try:
        state = load_file(str(w_file))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise CheckpointError(f"{str(w_file)!r} is truncated or corrupt ({e}); re-export it from the "
                              "run's newest checkpoint with `latentdit train --out RUN`") from e
    mcfg = cfg.model
    model = LatentScoreNet(mcfg, meta["ambient_dim"], meta["latent_dim"], learn_encoder=cfg.encoder.learn,
                           encoder_init="identity" if cfg.encoder.init == "identity" else None)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"weights in {str(w_file)!r} do not match its config.json: "
                              f"{str(e).splitlines()[0]}") from e
    return model.to(device).eval(), cfg, meta
