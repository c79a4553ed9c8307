"""Typed configuration: the single source of truth for a run.

Every run directory holds the resolved configuration as ``config.json``; checkpoints and exports
carry it too. Files may be TOML, YAML or JSON; any field can be overridden from the command line
with ``--set section.key=value``. An unknown key is an error naming the closest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


from latentdit.autoencoder.config import AutoencoderConfig, validate_autoencoder
from latentdit.diffusion import WEIGHTINGS
from latentdit.config_files import apply_overrides, read_config_file
from latentdit.data.video import check_video_config
from latentdit.errors import ConfigError
from latentdit.sampling import GRIDS, SAMPLERS



@dataclass
class DataConfig:
    """Where the training data come from.

    ``source="gmm"`` is the ground-truth model of the paper's assumptions (x = B h, h a Gaussian
    mixture); the other sources are real data loaded by :mod:`latentdit.data.real`.
    """

    source: str = "gmm"  # gmm | long | mnist | digits | npy | npz | csv | images | moving_mnist
    path: str | None = None  # file or folder for npy/npz/csv/images
    n: int = 10000  # number of training points (gmm) or cap on loaded items (0 = all)
    ambient_dim: int = 256  # D, gmm and long (long: D = d0 = tokens x token size, B = I)
    latent_dim: int = 16  # d0 of the ground truth, gmm only
    components: int = 8  # mixture components, gmm and long
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
    the scaled latent of a learned conv autoencoder ([autoencoder], :mod:`latentdit.autoencoder`),
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
class ModelConfig:
    """Score network s_W(x, t) = (W_B f(W_B^T x, t) - x) / sigma(t), eq. (2.5)."""

    block: str = "dit"  # dit (practical DiT block) | paper (the T^{r,m,l} class, Sec. 3)
    patch: int = 2  # p: patch side (2d) or token size (1d)
    patching: str = "auto"  # 2d | 1d | auto (2d when d0 is a square divisible by p, else 1d)
    patch_t: int = 1  # video (data.source = moving_mnist): frames per spatio-temporal patch
    hidden: int = 128  # DiT block width
    depth: int = 4  # number of blocks K
    heads: int = 4  # DiT block heads
    mlp_ratio: float = 4.0
    # DiT MLP activation: gelu (exact, erf) | gelu_tanh (the tanh approximation of the original DiT,
    # about 3x slower on CPU, which costs ~5% of a training step at hidden 256 and ~10% at 64)
    activation: str = "gelu"
    # paper block T^{r,m,l}: r heads of size m, feed-forward width l
    paper_heads: int = 2
    paper_head_dim: int = 1
    paper_ff: int = 4
    paper_entry_bound: float | None = None  # Def. 3.2: bound |entries| of W_K X, W_Q X (tanh clip)
    attention: str = "exact"  # exact | poly | auto | relu_linear (ReLU linear attention, no certificate)
    # DiT block: per-head query/key size m, apart from the value size hidden / heads (0 = the same).
    # A small m with QK-norm keeps the polynomial method's rank C(m + g, g) small (Sec. 4).
    qk_dim: int = 0
    attention_eps: float = 1e-3  # target relative error of the polynomial method
    qk_norm: bool = False  # DiT block: normalise q, k and use a capped learnable temperature
    tau_max: float = 1.7  # |logit| <= tau^2 <= tau_max^2 when qk_norm is on
    precondition: bool = True  # f = c_skip h + c_out F(c_in h, t) (EDM-style; see models/score.py)
    # statistics of the latent the preconditioning is built around: scalar (one second moment for all
    # coordinates) | diagonal (each coordinate's own mean and variance; for latents whose coordinates
    # differ in scale, such as PCA coordinates of images)
    precondition_stats: str = "scalar"
    num_classes: int = 0  # > 0 enables class conditioning (a null class is added for guidance)
    class_dropout: float = 0.1  # probability of dropping the label during training


@dataclass
class DiffusionConfig:
    """Ornstein-Uhlenbeck forward process and the training objective (Sec. 2)."""

    T0: float = 1e-3  # early-stopping time
    T: float = 10.0  # terminal time
    weighting: str = "edm"  # gamma(t): none | sigma | sigma2 | edm (see diffusion.py)


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
    # seconds; 0 = none (the budget is `steps`). > 0 stops earlier at that wall-clock limit (the LR
    # schedule still spans `steps`); the run then warns and records steps_trained < steps_planned.
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


@dataclass
class SampleConfig:
    sampler: str = "dpm2m"  # em | ei | heun | ddim | dpm2m | dpm3m
    steps: int = 50
    grid: str = "auto"  # auto (the sampler's own) | uniform | log | logsnr | karras
    rho: float = 7.0  # the karras grid's exponent
    guidance: float = 1.0  # classifier-free guidance scale (1 = no guidance)
    # Return Tweedie's E[x0 | x_T0] (one more NFE) instead of x_T0: no residual noise of scale
    # sqrt(sigma(T0)). Off by default, the paper's estimator (the law at T0); on for image data.
    denoise: bool = False


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
        cfg = _build(cls, d, "")
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


def _closest(name: str, options: typing.Iterable[str], prefix: str = "") -> str:
    match = difflib.get_close_matches(name, list(options), n=1, cutoff=0.4)
    return f"; did you mean {prefix + match[0]!r}?" if match else ""


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` to the annotated type ``tp`` or raise a ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: cannot read {value!r} as {tp}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(float(value)) if float(value).is_integer() else int(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported type {tp}")  # pragma: no cover


def _build(cls: type, d: Any, prefix: str) -> Any:
    if not isinstance(d, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a table of keys, got {d!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in d.items():
        where = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key {where!r}{_closest(key, names, prefix)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, f"{where}.")
        else:
            kwargs[key] = _coerce(value, tp, where)
    return cls(**kwargs)


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Defaults, then the file, then ``--set`` overrides; validated."""
    d = read_config_file(path) if path is not None else {}
    d = apply_overrides(d, overrides)
    return Config.from_dict(d)


# --------------------------------------------------------------------------------------------
# validation


def _choice(value: str, options: typing.Sequence[str], where: str) -> None:
    if value not in options:
        raise ConfigError(f"{where}={value!r} is not one of {list(options)}{_closest(value, options)}")


def validate(cfg: Config) -> None:
    """Range and choice checks that need more than a type (one message per problem)."""
    _choice(cfg.data.source, ("gmm", "long", "mnist", "digits", "npy", "npz", "csv", "images", "moving_mnist"),
            "data.source")
    _choice(cfg.data.normalise, ("minmax", "standard", "none"), "data.normalise")
    _choice(cfg.encoder.init, ("pca", "random", "identity"), "encoder.init")
    _choice(cfg.encoder.kind, ("linear", "autoencoder"), "encoder.kind")
    # moving_mnist: the autoencoder trains on the clips' frames, images like any image source
    validate_autoencoder(cfg.autoencoder, cfg.encoder.kind,
                         "images" if cfg.data.source == "moving_mnist" else cfg.data.source)
    if cfg.data.source == "moving_mnist":
        check_video_config(cfg.data, cfg.model.patch_t, cfg.encoder.kind, cfg.encoder.init)
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
    _choice(cfg.model.attention, ("exact", "poly", "auto", "relu_linear"), "model.attention")
    if cfg.model.qk_dim < 0:
        raise ConfigError(f"model.qk_dim={cfg.model.qk_dim} must be >= 0 (0 = model.hidden / model.heads)")
    _choice(cfg.diffusion.weighting, WEIGHTINGS, "diffusion.weighting")
    _choice(cfg.optim.schedule, ("cosine", "constant"), "optim.schedule")
    for where, s in (("sample.sampler", cfg.sample.sampler), ("eval.sampler", cfg.eval.sampler)):
        _choice(s, tuple(SAMPLERS), where)
    _choice(cfg.sample.grid, ("auto", *GRIDS), "sample.grid")
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
    if not 0 <= cfg.train.ema_decay < 1:
        raise ConfigError(f"train.ema_decay={cfg.train.ema_decay} must be in [0, 1)")
    if cfg.data.source == "gmm":
        if cfg.data.latent_dim > cfg.data.ambient_dim:
            raise ConfigError(f"data.latent_dim={cfg.data.latent_dim} is larger than data.ambient_dim="
                              f"{cfg.data.ambient_dim}; the latent subspace must fit in R^D")
        if cfg.encoder.latent_dim > cfg.data.ambient_dim:
            raise ConfigError(f"encoder.latent_dim={cfg.encoder.latent_dim} is larger than data.ambient_dim="
                              f"{cfg.data.ambient_dim}; lower encoder.latent_dim")

