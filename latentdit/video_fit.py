"""Training the per-frame video first stage on a run's clips (``data.source = "moving_mnist"``).

:func:`prepare_video_first_stage` is the call :func:`latentdit.train.train` makes for moving digits,
as :func:`latentdit.autoencoder.fit.prepare_first_stage` is for images: it renders the clips of
``[data]`` (:func:`latentdit.data.video.moving_mnist_from_config`), trains (or resumes, or loads)
the frame autoencoder in RUN/autoencoder/ through :func:`latentdit.autoencoder.fit.train_first_stage`
on up to :data:`AE_FRAMES` frames drawn from them, and returns the clips' scaled latent rows with the
:class:`latentdit.video_stage.VideoFirstStage`. :func:`prepare_first_stage` picks the first stage of
any run: this one for moving digits, the image autoencoder's (or none) otherwise.
"""

from __future__ import annotations

from pathlib import Path

import torch

import latentdit.autoencoder.fit as first_stage_fit  # a module: it imports latentdit.train.checkpoint
from latentdit.build import TrainData
from latentdit.config import Config
from latentdit.data.real import LoadedData
from latentdit.data.video import VideoData, moving_mnist_from_config
from latentdit.errors import ConfigError
from latentdit.io import atomic_write_json
from latentdit.train.rundir import RunLock
from latentdit.video_stage import VideoFirstStage

AE_FRAMES = 6000  # frames the frame autoencoder trains on (drawn from the training clips)


def _frame_data(video: VideoData, count: int, seed: int) -> LoadedData:
    """``count`` frames drawn from the clips (seeded) as image data rows for the frame autoencoder."""
    F = video.video_shape[0]
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(video) * F, generator=g)[:count].sort().values
    frames = []
    for clip in pick.div(F, rounding_mode="floor").unique():
        fr = pick[pick.div(F, rounding_mode="floor") == clip] % F
        frames.append(video.render(int(clip), int(clip) + 1)[0, fr])
    x = torch.cat(frames).reshape(len(pick), -1)
    return LoadedData(x, None, 0, video.image_shape, video.norm, "moving_mnist_frames", None, video.pixel_range)


def prepare_video_first_stage(cfg: Config, run: str | Path, data: TrainData | None = None, *,
                              progress: bool | None = None, world_size: int = 1) -> TrainData:
    """The DiT's training data for ``data.source = "moving_mnist"``: the latent rows of the clips
    (N, L c pt p p) under the frame autoencoder, trained in RUN/autoencoder/ on frames of the clips.
    The clips come from ``cfg.data``; ``data`` is accepted for the common signature and not used."""
    if world_size > 1:
        raise ConfigError("data.source='moving_mnist' trains in one process; run it without torchrun")
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    video = moving_mnist_from_config(cfg.data)
    count = min(AE_FRAMES, len(video) * video.video_shape[0])
    frames = TrainData(torch.zeros(0), None, 0, loaded=_frame_data(video, count, cfg.autoencoder.seed))
    run = Path(run)
    if not (run / "config.json").is_file():  # a run directory from its first file on (resumable)
        atomic_write_json(run / "config.json", cfg.to_dict())
    with RunLock(run):
        frame_stage = first_stage_fit.train_first_stage(cfg, frames, run / first_stage_fit.AE_DIR,
                                                      progress=bool(progress))
    stage = VideoFirstStage(frame_stage, cfg.data.frames, cfg.model.patch_t)
    rows = []
    for i in range(0, len(video), 64):
        rows.append(stage.encode_clips(video.render(i, i + 64)))
    return TrainData(torch.cat(rows).float(), video.labels if cfg.data.conditional else None,
                     video.num_classes if cfg.data.conditional else 0, loaded=video, first_stage=stage)


def prepare_first_stage(cfg: Config, run: str | Path, data: TrainData | None = None, *,
                        progress: bool | None = None, world_size: int = 1) -> TrainData | None:
    """The DiT's training data of any run: :func:`prepare_video_first_stage` for ``moving_mnist``,
    else :func:`latentdit.autoencoder.fit.prepare_first_stage`."""
    prepare = prepare_video_first_stage if cfg.data.source == "moving_mnist" else first_stage_fit.prepare_first_stage
    return prepare(cfg, run, data, progress=progress, world_size=world_size)
