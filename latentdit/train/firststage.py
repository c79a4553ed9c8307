"""First-stage training: the autoencoder on the training images, then the DiT's latent data.

:func:`prepare_first_stage` is the call the entry points (``latentdit train``, the demo, the
experiments) make before :func:`latentdit.train.train`: with ``encoder.kind = "autoencoder"`` it trains the autoencoder in RUN/autoencoder/ (or loads it when it
is already trained there), computes the unit-variance scale on the training latents and returns
the training data with the scaled latent rows as ``x``. The budget is ``autoencoder.epochs``.
The DiT's trainer takes those data (``train(cfg, run, data=...)``).

Training resumes exactly like the DiT's: a checkpoint (RUN/autoencoder/checkpoints/step_*.pt,
written atomically by :func:`latentdit.train.checkpoint.write_checkpoint`) holds the weights, the
optimiser, the LR schedule, the data order and the noise stream, so a run interrupted at any step
and resumed ends with the same weights as one never interrupted (bitwise on CPU with a fixed
thread count). The finished stage is ``autoencoder.safetensors`` + ``autoencoder.json`` there.

Clips (``data.source = "moving_mnist"``): :func:`prepare_video_first_stage` renders the clips of
``[data]``, trains the same autoencoder in RUN/autoencoder/ on up to :data:`AE_FRAMES` frames drawn
from them and returns the clips' scaled latent rows with the per-frame
:class:`latentdit.firststage.video.VideoFirstStage`; :func:`prepare_first_stage` hands such runs to it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from latentdit.firststage.autoencoder import ConvAutoencoder
from latentdit.firststage.stage import STAGE_CONFIG, FirstStage, latent_scale, padded_side
from latentdit.firststage.video import VideoFirstStage
from latentdit.build import TrainData, build_data
from latentdit.config import Config
from latentdit.data.real import LoadedData
from latentdit.data.video import VideoData, moving_mnist_from_config
from latentdit.errors import CheckpointError, ConfigError
from latentdit.io import atomic_write_json
from latentdit.progress import progress_bar
from latentdit.train.checkpoint import (CKPT_FORMAT, DataOrder, TrainClock, global_rng_state, read_latest,
                                        set_global_rng_state, write_checkpoint)
from latentdit.train.rundir import RunLock

AE_DIR = "autoencoder"
AE_FRAMES = 6000  # frames the clips' frame autoencoder trains on (drawn from the training clips)


def _lr_factor(step: int, total: int) -> float:
    """Cosine decay of the learning rate from 1 to 0.1 over the run."""
    return 0.1 + 0.45 * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))


class FirstStageTrainer:
    """The autoencoder, its optimiser and streams, on the padded training images (N, C, S, S)."""

    def __init__(self, cfg: Config, images: torch.Tensor, folder: str | Path, *, progress: bool = False,
                 on_step: Callable[[int], None] | None = None):
        self.cfg, self.a, self.folder = cfg, cfg.autoencoder, Path(folder)
        self.images, self.progress, self.on_step = images, progress, on_step
        a = self.a
        torch.manual_seed(a.seed)
        self.model = ConvAutoencoder(images.shape[1], a.factor, a.channels, a.width)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=a.lr, weight_decay=a.weight_decay)
        n = images.shape[0]
        self.batch = min(a.batch_size, n)
        self.total = a.epochs * (n // self.batch)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: _lr_factor(s, self.total))
        self.order = DataOrder(n, self.batch, a.seed)
        self.gen = torch.Generator().manual_seed(a.seed + 29)
        self.step, self.clock = 0, TrainClock()

    def _key(self) -> dict:
        """What the checkpoints must have been trained with to be resumed."""
        return {"autoencoder": asdict(self.a), "data": asdict(self.cfg.data), "images": list(self.images.shape)}

    def state_dict(self) -> dict:
        return {"format": CKPT_FORMAT, "config": self._key(), "step": self.step, "model": self.model.state_dict(),
                "ema": None, "opt": self.opt.state_dict(), "sched": self.sched.state_dict(),
                "order": self.order.state(), "rng": {"gen": self.gen.get_state(), **global_rng_state()},
                "clock": self.clock.state()}

    def load_state_dict(self, s: dict) -> None:
        if s["config"] != self._key():
            raise CheckpointError(f"the autoencoder checkpoints in {str(self.folder)!r} were trained with a different "
                                  "[autoencoder] or [data] config; use a new --out directory")
        self.model.load_state_dict(s["model"])
        self.opt.load_state_dict(s["opt"])
        self.sched.load_state_dict(s["sched"])
        self.gen.set_state(s["rng"]["gen"])
        set_global_rng_state(s["rng"])
        self.order = DataOrder(self.order.n, self.order.bs, self.a.seed, **s["order"])
        self.step, self.clock = s["step"], TrainClock.resumed(s.get("clock"))

    def train_step(self) -> float:
        x = self.images[self.order.next()]
        c, h = self.a.channels, x.shape[-1] // self.a.factor
        noise = torch.randn((x.shape[0], c, h, h), generator=self.gen)
        logits = self.model(x, noise, self.a.latent_noise)
        if self.a.loss == "bce":
            loss = F.binary_cross_entropy_with_logits(logits, x)
        else:
            loss = F.mse_loss(torch.sigmoid(logits), x)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        self.step += 1
        return float(loss.detach())

    def fit(self) -> ConvAutoencoder:
        """Train to ``epochs`` from the newest checkpoint; returns the trained network."""
        state, _, _ = read_latest(self.folder)
        if state is not None:
            self.load_state_dict(state)
        every = self.a.checkpoint_every or max(1, self.total // max(self.a.epochs, 1))
        bar = progress_bar(total=self.total, initial=self.step, desc="autoencoder", unit="step", enabled=self.progress)
        self.clock.start()
        try:
            while self.step < self.total:
                loss = self.train_step()
                if self.on_step is not None:
                    self.on_step(self.step)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
                if self.step % every == 0 or self.step == self.total:
                    write_checkpoint(self.folder, self.step, self.state_dict(), keep=2)
        finally:
            bar.close()
        return self.model.eval()


def _first_stage_key(cfg: Config, images: torch.Tensor) -> dict:
    return {"autoencoder": asdict(cfg.autoencoder), "data": asdict(cfg.data), "images": list(images.shape)}


def layout_patch(cfg: Config, latent_side: int) -> int:
    """The latent vectors' patch layout: ``model.patch`` when the DiT models the whole latent, else 1."""
    if cfg.encoder.init != "identity":
        return 1
    p = cfg.model.patch
    if latent_side % p:
        raise ConfigError(f"model.patch={p} must divide the autoencoder latent's side {latent_side} "
                          f"(image side / autoencoder.factor); choose a divisor of {latent_side}")
    return p


def train_first_stage(cfg: Config, data: TrainData, folder: str | Path, *, progress: bool = False,
                      on_step: Callable[[int], None] | None = None) -> FirstStage:
    """Train (or resume, or load when finished) the autoencoder of ``cfg`` on ``data`` in ``folder``."""
    loaded = data.loaded
    if loaded is None or loaded.image_shape is None or loaded.pixel_range is None:
        raise ConfigError("encoder.kind='autoencoder' needs image data; use encoder.kind='linear'")
    a, folder = cfg.autoencoder, Path(folder)
    side = padded_side(loaded.image_shape, a.factor, a.pad_to)
    lp = layout_patch(cfg, side // a.factor)
    bare = FirstStage(ConvAutoencoder(1 if len(loaded.image_shape) == 2 else loaded.image_shape[2], a.factor,
                                      a.channels, a.width), image_shape=loaded.image_shape, side=side,
                      normalisation=loaded.norm, pixel_range=loaded.pixel_range)
    images = bare.images_from_rows(loaded.x)
    key = _first_stage_key(cfg, images)
    done = folder / STAGE_CONFIG
    if done.is_file():
        if json.loads(done.read_text()).get("trained_with") != key:
            raise CheckpointError(f"the autoencoder in {str(folder)!r} was trained with a different [autoencoder] "
                                  "or [data] config; use a new --out directory")
        return FirstStage.load(folder).with_layout(lp)
    trainer = FirstStageTrainer(cfg, images, folder, progress=progress, on_step=on_step)
    ae = trainer.fit()
    stage = FirstStage(ae, image_shape=loaded.image_shape, side=side, normalisation=loaded.norm,
                       pixel_range=loaded.pixel_range)
    stage.scale = latent_scale(stage.encode_images(images))
    stage.train_seconds = trainer.clock.total()  # summed over resumed segments, with the latent scale
    stage.save(folder, {"trained_with": key, "step": trainer.step})
    return stage.with_layout(lp)


def prepare_first_stage(cfg: Config, run: str | Path, data: TrainData | None = None, *, progress: bool | None = None,
                        world_size: int | None = None) -> TrainData | None:
    """The DiT's training data: ``data`` (built from ``cfg`` when None) as they are for a linear encoder;
    for ``encoder.kind = "autoencoder"`` the scaled latent rows of the trained first stage.
    ``world_size``: the processes the DiT will train in (default: torchrun's ``WORLD_SIZE``, else 1)."""
    if cfg.data.source == "moving_mnist":
        return prepare_video_first_stage(cfg, run, progress=progress, world_size=world_size)
    if cfg.encoder.kind != "autoencoder":
        return data  # unchanged (None: the trainer builds them)
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    data = data if data is not None else build_data(cfg)
    if cfg.train.threads > 0:  # the first stage trains under the run's thread count too
        torch.set_num_threads(cfg.train.threads)
    run = Path(run)
    folder = run / AE_DIR
    if world_size > 1 and not (folder / STAGE_CONFIG).is_file():
        raise ConfigError("the autoencoder first stage trains in one process: run `latentdit train` once without "
                          "torchrun (or with train.steps small) to train it, then resume with torchrun")
    if world_size > 1:
        stage = train_first_stage(cfg, data, folder)
    else:
        if not (run / "config.json").is_file():  # a run directory from its first file on (resumable)
            atomic_write_json(run / "config.json", cfg.to_dict())
        with RunLock(run):
            show = progress is not False  # a bar on a terminal, plain lines otherwise
            stage = train_first_stage(cfg, data, folder, progress=show)
    return replace(data, x=stage.encode_vectors(data.x).float(), first_stage=stage)


def _frame_data(video: VideoData, count: int, seed: int, crop: int = 0) -> tuple[LoadedData, LoadedData]:
    """``count`` frames drawn from the clips (seeded) as image data rows for the frame autoencoder:
    (the whole frames, what the autoencoder trains on). With ``crop`` > 0 it trains on crop x crop
    windows around the first digit's centroid, jittered by up to crop / 5 pixels and kept inside the
    canvas: the digit fills the window as in the image demo's digits, where most pixels of a whole
    frame are background (at 64 x 64 a whole-frame autoencoder reconstructs blobs after 940 steps,
    docs/efficient/video_v1/first_stage.json; on 32 x 32 crops it reconstructs the strokes, at a
    quarter of the pixels per step)."""
    F = video.video_shape[0]
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(video) * F, generator=g)[:count].sort().values
    frames = []
    for clip in pick.div(F, rounding_mode="floor").unique():
        fr = pick[pick.div(F, rounding_mode="floor") == clip] % F
        frames.append(video.render(int(clip), int(clip) + 1)[0, fr])
    full = torch.cat(frames)  # (count, H, W)
    whole = LoadedData(full.reshape(len(pick), -1), None, 0, video.image_shape, video.norm, "moving_mnist_frames",
                       None, video.pixel_range)
    if not crop:
        return whole, whole
    centre = video.centroid_truth()[:, 0].reshape(-1, 2)[pick]  # (count, 2) (row, col) of the first digit
    jitter = torch.randint(-(crop // 5), crop // 5 + 1, (len(pick), 2), generator=g)
    corner = (centre - crop / 2).round().long().add(jitter).clamp(0, video.canvas - crop)
    crops = torch.stack([f[r:r + crop, c:c + crop] for f, (r, c) in zip(full, corner.tolist())])
    return whole, LoadedData(crops.reshape(len(pick), -1), None, 0, (crop, crop), video.norm,
                             "moving_mnist_frame_crops", None, video.pixel_range)


def _whole_frames(stage: FirstStage, cfg: Config, whole: LoadedData) -> FirstStage:
    """The autoencoder of ``stage`` (fully convolutional) on whole frames, its unit-variance scale
    over the whole frames' latents, which is what the DiT models."""
    a = cfg.autoencoder
    side = padded_side(whole.image_shape, a.factor, a.pad_to)
    out = FirstStage(stage.ae, image_shape=whole.image_shape, side=side, normalisation=whole.norm,
                     pixel_range=whole.pixel_range)
    out.scale = latent_scale(out.encode_images(out.images_from_rows(whole.x)))
    out.train_seconds = stage.train_seconds
    return out.with_layout(layout_patch(cfg, side // a.factor))


def prepare_video_first_stage(cfg: Config, run: str | Path, *, progress: bool | None = None,
                              world_size: int | None = None) -> TrainData:
    """The DiT's training data for ``data.source = "moving_mnist"``: the latent rows of the clips of
    ``cfg.data`` (N, L c pt p p) under the frame autoencoder, trained in RUN/autoencoder/ on frames
    of the clips (or loaded when it is already trained there)."""
    if (world_size if world_size is not None else int(os.environ.get("WORLD_SIZE", "1"))) > 1:
        raise ConfigError("data.source='moving_mnist' trains in one process; run it without torchrun")
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    video = moving_mnist_from_config(cfg.data)
    count = min(AE_FRAMES, len(video) * video.video_shape[0])
    whole, train_frames = _frame_data(video, count, cfg.autoencoder.seed, cfg.autoencoder.crop)
    frames = TrainData(torch.zeros(0), None, 0, loaded=train_frames)
    run = Path(run)
    if not (run / "config.json").is_file():  # a run directory from its first file on (resumable)
        atomic_write_json(run / "config.json", cfg.to_dict())
    with RunLock(run):
        frame_stage = train_first_stage(cfg, frames, run / AE_DIR, progress=progress is not False)
    if cfg.autoencoder.crop:
        frame_stage = _whole_frames(frame_stage, cfg, whole)
    stage = VideoFirstStage(frame_stage, cfg.data.frames, cfg.model.patch_t)
    rows = [stage.encode_clips(video.render(i, i + 64)) for i in range(0, len(video), 64)]
    return TrainData(torch.cat(rows).float(), video.labels if cfg.data.conditional else None,
                     video.num_classes if cfg.data.conditional else 0, loaded=video, first_stage=stage)
