"""Typed configuration: the single source of truth for a run.

Every run directory holds the resolved configuration as ``config.json``; checkpoints and exports
carry it too. Files may be TOML, YAML or JSON; any field can be overridden from the command line
with ``--set section.key=value``. An unknown key is an error naming the closest valid key.
"""

from __future__ import annotations

import json
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


from latentdit.diffusion import TIME_KINDS, WEIGHTINGS
from latentdit.config_files import apply_overrides, build_dataclass, closest, read_config_file
from latentdit.data.video import check_video_config
from latentdit.errors import ConfigError
from latentdit.export import IMAGE_SOURCES as AE_SOURCES
from latentdit.models.config import ModelConfig
from latentdit.sampling import GRIDS, SAMPLERS, SamplingDefaults



@dataclass
class DataConfig:
    """Where the training data come from.

    ``source="gmm"`` is the ground-truth model of the paper's assumptions (x = B h, h a Gaussian
    mixture); the other sources are real data loaded by :mod:`latentdit.data.real`.
    """

    source: str = "gmm"  # gmm | long | stationary | mnist | digits | npy | npz | csv | images | moving_mnist
    path: str | None = None  # file or folder for npy/npz/csv/images
    # number of training points (gmm, long, stationary; stationary: 0 = fresh draws every step) or
    # cap on loaded items (0 = all)
    n: int = 10000
    ambient_dim: int = 256  # D, gmm, long and stationary (the last two: D = d0 = tokens x token size, B = I)
    latent_dim: int = 16  # d0 of the ground truth, gmm only
    components: int = 8  # mixture components, gmm, long and stationary
    seed: int = 0  # seed of the ground-truth model and of data shuffling
    normalise: str = "minmax"  # real data: minmax | standard | none
    image_size: int | None = None  # real image folders: resize to this square size
    label_column: str | None = None  # csv: name or index of the label column
    conditional: bool = False  # use class labels (real data with labels)
    # moving_mnist (latentdit.data.video): clips of `frames` canvas x canvas frames, `digits` digits per
    # clip moving at a speed uniform in [speed_min, speed_max] pixels per frame; n clips
    frames: int = 16
    canvas: int = 64
    digits: int = 1
    speed_min: float = 2.0
    speed_max: float = 4.0


@dataclass
class EncoderConfig:
    """The linear W_B (D x d0, orthonormal columns), on the data or (``kind="autoencoder"``) inside
    the scaled latent of a learned conv autoencoder ([autoencoder], :mod:`latentdit.firststage`),
    where D = c h w; ``init="identity"`` then models the whole latent in c x p x p patch tokens."""

    kind: str = "linear"  # linear (W_B on the data) | autoencoder (W_B on a learned conv latent)
    latent_dim: int = 16  # d0 of the model
    init: str = "pca"  # pca | random | identity (W_B = I: needs latent_dim = D, a plain DiT)
    learn: bool = False  # learn W_B (kept orthonormal) or keep it frozen
    # learning-rate multiplier of a learned encoder: Adam moves every entry of the D x d0 parameter
    # by about lr per step while the entries are O(1/sqrt(D)); a larger rate finds the subspace in
    # a few hundred steps and the LR decay then removes the jitter
    lr_scale: float = 5.0


@dataclass
class AutoencoderConfig:
    """A small conv autoencoder trained on the images before the DiT (``epochs`` is its budget), with
    checkpoints and exact resume in RUN/autoencoder/; see :mod:`latentdit.firststage`."""

    factor: int = 4  # spatial downsampling f (1, 2, 4 or 8): an H x W image -> an H/f x W/f latent
    channels: int = 4  # latent channels c
    width: int = 16  # conv width of the first level (doubled at the first downsampling only)
    pad_to: int = 0  # images are padded (edge pixels repeated) to this side; 0 = next multiple of 2f
    latent_noise: float = 0.1  # std of the training noise on the latent, relative to the latent's RMS
    loss: str = "bce"  # bce (pixels in [0, 1] read as probabilities) | mse
    epochs: int = 16
    batch_size: int = 64
    lr: float = 3e-3  # AdamW, cosine decay to a tenth over the run
    weight_decay: float = 1e-4
    seed: int = 0
    checkpoint_every: int = 0  # optimiser steps between checkpoints; 0 = once per epoch
    recon_samples: int = 1000  # reconstructions whose Inception FID is the floor the demo reports
    # moving_mnist: train on crop x crop windows around the digit (0: whole frames); the fully
    # convolutional autoencoder then encodes whole frames (latentdit.train.firststage._frame_data)
    crop: int = 0


def _validate_autoencoder(a: AutoencoderConfig, kind: str, source: str) -> None:
    """Range and choice checks of the section (``kind`` = encoder.kind, ``source`` = data.source)."""
    if a.factor not in (1, 2, 4, 8):
        raise ConfigError(f"autoencoder.factor={a.factor} is not one of [1, 2, 4, 8]")
    if a.loss not in ("bce", "mse"):
        raise ConfigError(f"autoencoder.loss={a.loss!r} is not one of ['bce', 'mse']")
    for where, v in (("channels", a.channels), ("width", a.width), ("epochs", a.epochs),
                     ("batch_size", a.batch_size), ("lr", a.lr)):
        if not v > 0:
            raise ConfigError(f"autoencoder.{where}={v} must be > 0")
    for where, v in (("latent_noise", a.latent_noise), ("weight_decay", a.weight_decay), ("pad_to", a.pad_to),
                     ("checkpoint_every", a.checkpoint_every), ("recon_samples", a.recon_samples), ("crop", a.crop)):
        if v < 0:
            raise ConfigError(f"autoencoder.{where}={v} must be >= 0")
    if a.pad_to % a.factor:
        raise ConfigError(f"autoencoder.pad_to={a.pad_to} must be divisible by autoencoder.factor={a.factor}")
    if kind == "autoencoder" and source not in AE_SOURCES:
        raise ConfigError(f"encoder.kind='autoencoder' needs image data (data.source one of {list(AE_SOURCES)}), "
                          f"not data.source={source!r}; use encoder.kind='linear'")


@dataclass
class DiffusionConfig:
    """Ornstein-Uhlenbeck forward process and the training objective (Sec. 2)."""

    T0: float = 1e-3  # early-stopping time
    T: float = 10.0  # terminal time
    weighting: str = "edm"  # gamma(t): none | sigma | sigma2 | edm (see diffusion.py)
    times: str = "uniform"  # training times: uniform on [T0, T] (eq. 2.3) | log (log t uniform)


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.99
    warmup_steps: int = 200
    schedule: str = "cosine"  # cosine | constant
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0  # 0 disables clipping


@dataclass
class TrainConfig:
    steps: int = 10000
    batch_size: int = 256
    # seconds; 0 = none (the budget is `steps`). > 0 stops earlier when the run's training seconds,
    # summed over resumed segments, reach it (the LR schedule still spans `steps`); the run then warns
    # and records steps_trained < steps_planned.
    time_limit: float = 0.0
    ema_decay: float = 0.999
    ema_warmup: bool = True  # decay min(ema_decay, (1 + step) / (10 + step))
    seed: int = 0
    log_every: int = 100
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    eval_every: int = 0  # 0 disables periodic evaluation
    # held-out validation loss of the EMA model every val_every steps (0 = off) on val_points fixed
    # (x0, t, noise): fresh population draws when the data have a sampler, else a held-out split
    val_every: int = 0
    val_points: int = 2048
    patience: int = 0  # stop after this many validations without improvement (0 = never); best EMA kept
    val_min_delta: float = 0.0  # relative improvement a validation must make to reset the patience count
    # on a plateau (patience validations without improvement): multiply the LR by plateau_factor and
    # go on, at most plateau_decays times, before stopping (0: stop at the first plateau)
    plateau_decays: int = 0
    plateau_factor: float = 0.3
    # DSM noise: ambient (N(0, I_D)) or latent (W_B u, u ~ N(0, I_d0); frozen encoder only): the same
    # loss in law, d0 normals per point, and a random stream that does not depend on D
    noise: str = "ambient"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    compile: bool = False  # torch.compile the network
    deterministic: bool = False  # torch.use_deterministic_algorithms
    threads: int = 0  # torch CPU threads (0 = torch's default)
    tensorboard: bool = False
    # video (data.source = moving_mnist): the first window_steps steps train on windows of
    # window_frames consecutive frames (0 = whole clips throughout). Such a step draws
    # frames / window_frames global batches of clips and one random window of each: the same tokens
    # per step as a whole-clip step, from that many times more clips (latentdit.train.batches)
    window_frames: int = 0
    window_steps: int = 0


@dataclass
class SampleConfig(SamplingDefaults):
    """The ``[sample]`` section: the sampling defaults an export records (``sampling.json``); the
    fields and their defaults are :class:`latentdit.sampling.SamplingDefaults`."""


@dataclass
class EvalConfig:
    num_samples: int = 2000
    sampler: str = "dpm2m"
    steps: int = 100
    score_times: int = 16  # number of t values for the score error
    seed: int = 1234


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        cfg = build_dataclass(cls, d)
        validate(cfg)
        return cfg

    @classmethod
    def from_saved(cls, d: dict[str, Any]) -> "Config":
        """A configuration written by an earlier run, export or checkpoint (a full ``to_dict``).

        Keys added since are filled with the value that reproduces the saved network, not today's
        default: runs saved before ``model.activation`` existed used the tanh GELU.
        """
        d = json.loads(json.dumps(d))
        model = d.get("model")
        if isinstance(model, dict) and model.get("block", "dit") == "dit":
            model.setdefault("activation", "gelu_tanh")
        return cls.from_dict(d)


# --------------------------------------------------------------------------------------------
# parsing


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Defaults, then the file, then ``--set`` overrides; validated."""
    d = read_config_file(path) if path is not None else {}
    d = apply_overrides(d, overrides)
    return Config.from_dict(d)


# --------------------------------------------------------------------------------------------
# validation


def _choice(value: str, options: typing.Sequence[str], where: str) -> None:
    if value not in options:
        raise ConfigError(f"{where}={value!r} is not one of {list(options)}{closest(value, options)}")


def validate(cfg: Config) -> None:
    """Range and choice checks that need more than a type (one message per problem)."""
    _validate_choices(cfg)
    _validate_ranges(cfg)
    _validate_training(cfg.train)


def _validate_choices(cfg: Config) -> None:
    _choice(cfg.data.source, ("gmm", "long", "stationary", "mnist", "digits", "npy", "npz", "csv", "images",
                              "moving_mnist"), "data.source")
    _choice(cfg.data.normalise, ("minmax", "standard", "none"), "data.normalise")
    _choice(cfg.encoder.init, ("pca", "random", "identity"), "encoder.init")
    _choice(cfg.encoder.kind, ("linear", "autoencoder"), "encoder.kind")
    # moving_mnist: the autoencoder trains on the clips' frames, images like any image source
    _validate_autoencoder(cfg.autoencoder, cfg.encoder.kind,
                          "images" if cfg.data.source == "moving_mnist" else cfg.data.source)
    if cfg.data.source == "moving_mnist":
        check_video_config(cfg.data, cfg.model.patch_t, cfg.encoder.kind, cfg.encoder.init)
    _validate_windows(cfg)
    crop, factor = cfg.autoencoder.crop, cfg.autoencoder.factor
    if crop and cfg.data.source != "moving_mnist":
        raise ConfigError("autoencoder.crop trains on windows around the moving digits: it is for "
                          "data.source='moving_mnist'; set autoencoder.crop=0")
    if crop and not (28 <= crop <= cfg.data.canvas and crop % factor == 0):
        raise ConfigError(f"autoencoder.crop={crop} must hold a digit (>= 28), fit the canvas "
                          f"(<= data.canvas={cfg.data.canvas}) and be divisible by autoencoder.factor={factor}")
    if cfg.encoder.init == "identity" and cfg.encoder.learn:
        raise ConfigError("encoder.init='identity' is a fixed W_B = I; set encoder.learn=false")
    _choice(cfg.train.noise, ("ambient", "latent"), "train.noise")
    if cfg.train.noise == "latent" and cfg.encoder.learn:
        raise ConfigError("train.noise='latent' draws only W_B^T z, which a learned W_B's gradient does not allow; "
                          "set train.noise='ambient' or encoder.learn=false")
    _choice(cfg.model.block, ("dit", "paper"), "model.block")
    _choice(cfg.model.patching, ("auto", "2d", "1d"), "model.patching")
    _choice(cfg.model.activation, ("gelu", "gelu_tanh"), "model.activation")
    _choice(cfg.model.precondition_stats, ("scalar", "diagonal"), "model.precondition_stats")
    _choice(cfg.model.pos_embed, ("learned", "sincos"), "model.pos_embed")
    if cfg.model.pos_embed == "sincos" and cfg.model.block != "dit":
        raise ConfigError("model.pos_embed='sincos' is a DiT block option; the paper block learns its E "
                          "(set 'learned')")
    _choice(cfg.model.attention, ("exact", "poly", "auto", "relu_linear", "none"), "model.attention")
    _choice(cfg.diffusion.weighting, WEIGHTINGS, "diffusion.weighting")
    _choice(cfg.diffusion.times, TIME_KINDS, "diffusion.times")
    _choice(cfg.optim.schedule, ("cosine", "constant"), "optim.schedule")
    for where, s in (("sample.sampler", cfg.sample.sampler), ("eval.sampler", cfg.eval.sampler)):
        _choice(s, tuple(SAMPLERS), where)
    _choice(cfg.sample.grid, ("auto", *GRIDS), "sample.grid")


def _validate_ranges(cfg: Config) -> None:
    if cfg.model.qk_dim < 0:
        raise ConfigError(f"model.qk_dim={cfg.model.qk_dim} must be >= 0 (0 = model.hidden / model.heads)")
    if not cfg.sample.rho > 0:
        raise ConfigError(f"sample.rho={cfg.sample.rho} must be > 0")
    d = cfg.diffusion
    if not d.T0 > 0:
        raise ConfigError(f"diffusion.T0={d.T0} must be > 0 (the early-stopping time)")
    if not d.T0 < d.T:
        raise ConfigError(f"diffusion.T0={d.T0} must be smaller than diffusion.T={d.T}")
    positive = {
        "encoder.latent_dim": cfg.encoder.latent_dim, "model.patch": cfg.model.patch,
        "model.hidden": cfg.model.hidden, "model.depth": cfg.model.depth,
        "model.heads": cfg.model.heads, "train.steps": cfg.train.steps,
        "train.batch_size": cfg.train.batch_size, "sample.steps": cfg.sample.steps,
        "eval.steps": cfg.eval.steps, "eval.num_samples": cfg.eval.num_samples,
        "optim.lr": cfg.optim.lr, "model.paper_heads": cfg.model.paper_heads,
        "model.paper_head_dim": cfg.model.paper_head_dim, "model.paper_ff": cfg.model.paper_ff,
    }
    for where, v in positive.items():
        if not v > 0:
            raise ConfigError(f"{where}={v} must be > 0")
    if cfg.model.hidden % cfg.model.heads:
        raise ConfigError(f"model.hidden={cfg.model.hidden} must be divisible by model.heads={cfg.model.heads}")
    if not 0 <= cfg.model.class_dropout < 1:
        raise ConfigError(f"model.class_dropout={cfg.model.class_dropout} must be in [0, 1)")
    if cfg.data.source == "gmm":
        if cfg.data.latent_dim > cfg.data.ambient_dim:
            raise ConfigError(f"data.latent_dim={cfg.data.latent_dim} is larger than data.ambient_dim="
                              f"{cfg.data.ambient_dim}; the latent subspace must fit in R^D")
        if cfg.encoder.latent_dim > cfg.data.ambient_dim:
            raise ConfigError(f"encoder.latent_dim={cfg.encoder.latent_dim} is larger than data.ambient_dim="
                              f"{cfg.data.ambient_dim}; lower encoder.latent_dim")


def _validate_windows(cfg: Config) -> None:
    tc = cfg.train
    if not tc.window_frames and not tc.window_steps:
        return
    if cfg.data.source != "moving_mnist" or cfg.model.block != "dit":
        raise ConfigError("train.window_frames trains on windows of clips: it is for data.source='moving_mnist' "
                          "with model.block='dit'; set train.window_frames=0 and train.window_steps=0")
    w, F, pt = tc.window_frames, cfg.data.frames, cfg.model.patch_t
    if not (0 < w < F and F % w == 0 and w % pt == 0):
        raise ConfigError(f"train.window_frames={w} must be a divisor of data.frames={F} below it and a multiple "
                          f"of model.patch_t={pt}")
    if not 0 < tc.window_steps <= tc.steps:
        raise ConfigError(f"train.window_steps={tc.window_steps} must be in [1, train.steps={tc.steps}]")


def _validate_training(tc: TrainConfig) -> None:
    if (min(tc.val_every, tc.patience, tc.val_points - 1, tc.plateau_decays) < 0 or not 0 <= tc.val_min_delta < 1
            or not 0 < tc.plateau_factor < 1):
        raise ConfigError(f"train.val_every={tc.val_every}, train.patience={tc.patience} and train.plateau_decays="
                          f"{tc.plateau_decays} must be >= 0, train.val_points={tc.val_points} >= 1, "
                          f"train.val_min_delta={tc.val_min_delta} in [0, 1), train.plateau_factor="
                          f"{tc.plateau_factor} in (0, 1)")
    if not 0 <= tc.ema_decay < 1:
        raise ConfigError(f"train.ema_decay={tc.ema_decay} must be in [0, 1)")
