"""Builds the pieces of a run from its configuration: data, ground truth, the model and the pipeline."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Callable

import torch

from latentdit.config import Config
from latentdit.data.gmm import SubspaceGMM
from latentdit.data.long import LongMixture
from latentdit.data.real import LoadedData, load_data
from latentdit.data.stationary import StationaryMixture
from latentdit.data.video import VideoData
from latentdit.export import default_pixel_range
from latentdit.firststage.linear import pca_basis
from latentdit.firststage.stage import FirstStage
from latentdit.firststage.video import VideoFirstStage
from latentdit.device import resolve_device  # noqa: F401 (re-exported)
from latentdit.errors import ConfigError, DataError
from latentdit.models.score import LatentScoreNet
from latentdit.pipeline import DataRecord, LatentDiTPipeline, SamplingDefaults


@dataclass
class TrainData:
    """Training data in the model's (normalised) space plus what is known about its law."""

    x: torch.Tensor  # (N, D) float32
    labels: torch.Tensor | None  # (N,) int64
    num_classes: int
    gmm: SubspaceGMM | None = None  # the ground truth when data.source == "gmm"
    loaded: LoadedData | VideoData | None = None  # real data
    # encoder.kind = "autoencoder": x then holds the first stage's scaled latent rows (N, c h w) and
    # ``loaded`` the images (moving_mnist: the clips, latent rows (N, L c pt p p), a VideoFirstStage)
    first_stage: FirstStage | VideoFirstStage | None = None
    # a population sampler (n, generator) -> (n, D) float32 in the model's space: the trainer then
    # draws fresh points every step (n = infinity) and ``x`` serves only the encoder init
    sampler: Callable[[int, torch.Generator], torch.Tensor] | None = None
    basis: torch.Tensor | None = None  # (D, d0): the encoder's initial W_B instead of PCA of ``x``
    val_x: torch.Tensor | None = None  # (V, D) held-out points for train.val_every (else drawn or split off)


def build_ground_truth(cfg: Config) -> SubspaceGMM:
    d = cfg.data
    return SubspaceGMM.random(d.ambient_dim, d.latent_dim, d.components, seed=d.seed)


def build_long_law(cfg: Config) -> LongMixture:
    """The long-sequence ground truth of ``data.source = "long"`` (it depends on ``cfg.data`` only)."""
    d = cfg.data
    return LongMixture.random(d.ambient_dim, d.components, seed=d.seed)


def build_stationary_law(cfg: Config) -> StationaryMixture:
    """The stationary-process mixture of ``data.source = "stationary"`` (it depends on ``cfg.data`` only)."""
    d = cfg.data
    return StationaryMixture.make(d.ambient_dim, d.components, seed=d.seed)


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
        law = build_long_law(cfg)
        x, comp = law.sample(d.n, generator=torch.Generator().manual_seed(d.seed + 1), return_labels=True)
        return TrainData(x.float(), comp if d.conditional else None, d.components if d.conditional else 0)
    if d.source == "stationary":  # R^D with B = I; n = 0 trains on fresh draws (latentdit.data.stationary)
        law = build_stationary_law(cfg)
        x, comp = law.sample(d.n or 256, generator=torch.Generator().manual_seed(d.seed + 1), return_labels=True)
        draw = (lambda m, g: law.sample(m, generator=g).float()) if d.n == 0 else None
        return TrainData(x.float(), comp if d.conditional else None, d.components if d.conditional else 0,
                         sampler=draw)
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
    if cfg.encoder.init == "identity" and d0 != D:
        raise ConfigError(f"encoder.init='identity' needs encoder.latent_dim = D = {D} (got {d0}); set "
                          f"encoder.latent_dim={D} or use encoder.init=pca")
    if d0 > data.x.shape[0] and cfg.encoder.init != "identity":  # PCA needs n >= d0
        raise ConfigError(f"encoder.latent_dim={d0} is larger than the number of samples "
                          f"n={data.x.shape[0]}; lower it or provide more data")
    return D, d0


def build_model(cfg: Config, data: TrainData, *, generator: torch.Generator | None = None) -> LatentScoreNet:
    """The score network of eq. (2.5), its W_B initialised from PCA of the data, at random, or the identity.

    With an autoencoder first stage (``data.first_stage``) the data are its latent rows; with
    ``encoder.init = "identity"`` the tokens are its c x p x p latent patches (p = ``model.patch``).

    ``cfg`` is not changed: what is resolved from the data (``num_classes``) is in the returned
    model's own configuration, ``model.cfg``, which is what an export records.
    """
    D, d0 = model_dims(cfg, data)
    mcfg = replace(cfg.model, num_classes=data.num_classes)
    stage = data.first_stage
    if stage is not None and cfg.encoder.init == "identity":
        # the whole autoencoder latent: its rows are laid out in c x p x p patches (p = model.patch), so
        # 1-D tokens of c p p consecutive coordinates are exactly the latent patches
        c, p = stage.latent_shape[0], stage.layout_patch
        # a video stage's tokens are c x pt x p x p spatio-temporal patches (latentdit.firststage.video)
        mcfg = replace(mcfg, patching="1d", patch=stage.token_dim if isinstance(stage, VideoFirstStage) else c * p * p)
    grid = list(stage.token_grid) if stage is not None and cfg.encoder.init == "identity" else []
    x = data.x
    if cfg.encoder.init == "identity":  # W_B = I, never stored (a plain DiT on the data's coordinates)
        W, h = "identity", x.double()
        second = float(h.pow(2).mean())
    elif cfg.encoder.init == "pca":
        W, _ = pca_basis(x, d0)
        h = x.double() @ W.double()
        second = float(h.pow(2).sum(1).mean() / d0)
    else:
        W, h = None, None
        second = float(x.double().pow(2).sum(1).mean() / d0)
    identity = isinstance(W, str)
    model = LatentScoreNet(D, d0, **asdict(mcfg), token_grid=grid, learn_encoder=cfg.encoder.learn,
                           identity_encoder=identity,
                           encoder_init=None if identity else W, latent_second_moment=max(second, 1e-8),
                           generator=generator)
    if mcfg.precondition_stats == "diagonal":
        if h is None:  # a random W_B: the statistics of the data's coordinates along it
            h = x.double() @ model.W_B.detach().double()
        model.latent_mean.copy_(h.mean(0))
        model.latent_var.copy_(h.var(0, correction=0).clamp_min(1e-8))
    return model


def data_record(cfg: Config, data: TrainData) -> DataRecord:
    """The data record an export carries: the normalisation, image shape, pixel range and class names
    of real data, and the clips' video shape (F, H, W) (nothing for the ground-truth sources)."""
    loaded = data.loaded
    if loaded is None:
        return DataRecord()
    pr = loaded.pixel_range
    pr = [float(v) for v in pr] if pr is not None else default_pixel_range(cfg.data.source, loaded.image_shape)
    return DataRecord.from_dict({"normalisation": loaded.norm.to_dict(), "image_shape": loaded.image_shape,
                                 "pixel_range": pr, "class_names": loaded.class_names,
                                 "video_shape": loaded.video_shape if isinstance(loaded, VideoData) else None})


def make_pipeline(model: LatentScoreNet, cfg: Config, data: TrainData) -> LatentDiTPipeline:
    """The pipeline of a network trained with ``cfg`` on ``data``: what a run exports."""
    return LatentDiTPipeline(model, cfg.diffusion.T0, cfg.diffusion.T, data_record(cfg, data),
                             SamplingDefaults(**asdict(cfg.sample)), data.first_stage)
