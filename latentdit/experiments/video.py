"""Moving digits at >= 4,096 tokens: train the video DiT, measure it, and time poly against exact.

    python -m latentdit.experiments.video --out DIR [--variant poly|relu_linear|exact|none] [--frames F]
        [--config FILE] [--set KEY=VALUE ...] [--smoke] [--no-fid] [--time-repeats N] [--json PATH]
        [--summary PATH]
    python -m latentdit.experiments.video --check-stage RUN --out DIR

One command trains the reference configuration (``configs/moving_mnist.toml``: 164 frames of
40 x 40, the per-frame autoencoder's 4 x 10 x 10 latents in 2 x 2 patches, 4,100 tokens, the
polynomial method in every attention call; plan: ``docs/efficient/video_plan.md``) through
:func:`latentdit.train.train`, then

1. checks that it learned (:func:`learning_check`): the DSM loss of the trained (EMA) model against
   a freshly initialised one, its x0 error against the per-coordinate Gaussian denoiser's, and the
   first and last logged training losses;
2. samples ``eval.num_samples`` clips (classes cycled, guidance ``sample.guidance``) and scores
   them with :func:`latentdit.evaluation.video.video_metrics` against fresh real clips (per-frame
   FID on ``--fid-frames`` frames, classifier accuracy, identity consistency, speed W1, constant
   velocity), the same figures for real clips as the floor, and the first stage alone (real clips
   encoded and decoded: :func:`first_stage_check`); writes DIR/samples.gif and .npz;
3. times poly against exact attention at the model's own L, interleaved, medians
   (:func:`latentdit.timing.interleaved_times`): a training step of ``--time-batch`` clips and one
   network evaluation (NFE) of sampling ``--sample-batch`` clips with guidance (2 rows per clip).

``--variant relu_linear`` trains the same network with ReLU linear attention (no certificate);
``--variant exact`` with exact attention, meant with a shorter clip (``--frames 44``: 1,100 tokens);
``--variant none`` without attention (every token on its own): what attention adds.
``encoder.latent_dim`` follows the clip size. DIR/<variant>_F<frames>.json holds everything, with
provenance; ``--json`` also writes the headline keys (``video_tokens``, ``video_accuracy``,
``video_identity_consistency``, ``video_speed_w1_rel``, ``video_train_seconds``,
``video_poly_speedup_train``, ``video_poly_speedup_sample``) there, e.g. docs/efficient/video.json;
``--summary`` merges them into the long-sequence summary (docs/efficient/summary.json) as its
``video`` part, keeping the ground-truth keys.
``--smoke`` shrinks everything to a run of about a minute (4 frames of 32 x 32, a few steps).
``--check-stage RUN`` measures only the first stage of a trained run, with that run's configuration.

The full command's cost on 2 idle cores: the frame autoencoder 1,880 steps on 32 x 32 crops (about
1 min), the DiT ``train.steps`` steps of 8,200 tokens (``train.time_limit`` stops it at 90 min),
encoding and evaluation (100 clips at 20 guided steps, the classifier, 1,000 Inception frames a
side), the timing (exact attention at 4,100 tokens: a few minutes). On an oversubscribed machine
set ``--set train.threads=1``: two OpenMP threads fighting other processes can be many times slower
than one.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from latentdit.build import TrainData, build_model
from latentdit.config import Config, apply_overrides, read_config_file
from latentdit.data.real import load_data
from latentdit.data.video import moving_mnist_from_config
from latentdit.diffusion import DSMLoss, add_noise
from latentdit.errors import CheckpointError, LatentDitError
from latentdit.evaluation.video import frame_classes, identity_metrics, video_metrics
from latentdit.experiments.efficient_report import write_summary
from latentdit.export import read_training_record
from latentdit.firststage.stage import padded_side
from latentdit.hostmem import reuse_host_memory
from latentdit.io import atomic_write, atomic_write_json
from latentdit.metrics.classifier import train_classifier
from latentdit.output import save_clips_gif
from latentdit.pipeline import LatentDiTPipeline
from latentdit.provenance import provenance_end, provenance_start
from latentdit.timing import interleaved_times, medians
from latentdit.train import Trainer, prepare_first_stage, train

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "moving_mnist.toml"
VARIANTS = {
    "poly": ["model.attention=poly"],
    "relu_linear": ["model.attention=relu_linear", "model.qk_norm=false"],
    "exact": ["model.attention=exact"],
    "none": ["model.attention=none"],  # no attention: every token on its own, the attention-free baseline
}
SMOKE = ["data.n=24", "data.frames=4", "data.canvas=32", "autoencoder.epochs=1", "train.steps=8",
         "train.window_frames=2", "train.window_steps=4",
         "train.batch_size=4", "optim.warmup_steps=1", "train.checkpoint_every=0", "train.log_every=1",
         "eval.num_samples=10", "eval.steps=3", "sample.steps=3"]


def video_config(path: Path, variant: str, frames: int | None, overrides: list[str], smoke: bool) -> Config:
    """The configuration file with the smoke sizes, the variant, ``frames`` and ``overrides``; the
    encoder's latent_dim set to the whole clip latent, frames x channels x (side / factor)^2."""
    d = read_config_file(path)
    extra = (SMOKE if smoke else []) + VARIANTS[variant] + ([f"data.frames={frames}"] if frames else [])
    d = apply_overrides(d, extra + overrides)
    data, ae = d.setdefault("data", {}), d.setdefault("autoencoder", {})
    factor = ae.get("factor", 4)
    side = padded_side((data.get("canvas", 64),) * 2, factor, ae.get("pad_to", 0)) // factor
    d.setdefault("encoder", {})["latent_dim"] = data.get("frames", 16) * ae.get("channels", 4) * side * side
    return Config.from_dict(d)


GRID_T = (0.01, 0.1, 0.5, 1.0, 2.0)  # times of the denoising-error profile of the learning check


def learning_check(model, cfg: Config, stage, num: int = 32) -> dict:
    """The trained model on held-out clips against a fresh initialisation (the DSM loss of training,
    same times and noise) and against the per-coordinate Gaussian denoiser fitted to fresh clips
    (F = 0 with diagonal statistics: it knows the background and where digits tend to be, nothing
    of their shape or motion), by the mean squared error of x0_hat at each t of ``GRID_T``, a scale
    that does not depend on a model's preconditioning (the EDM weighting does)."""
    video = moving_mnist_from_config(cfg.data, n=num, seed=cfg.eval.seed + 7)
    x0 = stage.encode_clips(video.render())
    y = video.labels if model.num_classes > 0 else None
    g = torch.Generator().manual_seed(cfg.eval.seed)
    T0, T = cfg.diffusion.T0, cfg.diffusion.T
    t = torch.exp(torch.empty(num).uniform_(math.log(T0), math.log(T), generator=g))  # log-uniform in [T0, T]
    noise = torch.randn(x0.shape, generator=g)
    init = build_model(cfg, TrainData(x0, y, model.num_classes, first_stage=stage),
                       generator=torch.Generator().manual_seed(cfg.train.seed)).eval()
    fit = stage.encode_clips(moving_mnist_from_config(cfg.data, n=max(num, 256), seed=cfg.eval.seed + 8).render())
    diag = replace(cfg, model=replace(cfg.model, precondition_stats="diagonal"))
    gauss = build_model(diag, TrainData(fit, None, model.num_classes, first_stage=stage)).eval()
    loss = DSMLoss(cfg.diffusion.weighting, T0, T)
    models = {"trained": model, "init": init, "gaussian": gauss}
    with torch.no_grad():
        out = {f"loss_{k}": float(loss(models[k], x0, t, noise, y)) for k in ("trained", "init")}
        mse = {k: [float((m.denoise(add_noise(x0, torch.full((num,), s), noise), torch.full((num,), s), y) - x0)
                         .pow(2).mean()) for s in GRID_T] for k, m in models.items()}
    out["beats_init"] = out["loss_trained"] < out["loss_init"]
    out.update({"denoise_t": list(GRID_T), **{f"denoise_mse_{k}": v for k, v in mse.items()}})
    out["beats_gaussian"] = all(a < b for a, b in zip(mse["trained"], mse["gaussian"]))
    return out


def loss_curve(run: Path) -> dict:
    """The first and last logged training losses of RUN/metrics.jsonl."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    losses = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    return {"loss_first": losses[0], "loss_last": losses[-1], "loss_logged": len(losses)} if losses else {}


def first_stage_check(stage, cfg: Config, classifier, norm, num: int = 32) -> dict:
    """The first stage alone: fresh real clips encoded and decoded, against the clips: the pixel MSE
    (all pixels, and the digit's pixels, those above 0.3), and the classifier's per-frame accuracy and
    identity consistency on the reconstructions, the ceiling of any DiT's samples through this decoder."""
    video = moving_mnist_from_config(cfg.data, n=num, seed=cfg.eval.seed + 9)
    clips = video.render()
    with torch.no_grad():
        rec = stage.decode_clips(stage.encode_clips(clips))
    err = (rec - clips) ** 2
    ids = identity_metrics(frame_classes(classifier, norm, rec), video.labels)
    return {"recon_mse": float(err.mean()), "recon_digit_mse": float(err[clips > 0.3].mean()),
            "recon_accuracy": ids["accuracy"], "recon_identity_consistency": ids["identity_consistency"],
            "recon_clips": num}


def evaluate(pipe: LatentDiTPipeline, cfg: Config, out: Path, *, fid_frames: int, smoke: bool) -> dict:
    """Sample ``eval.num_samples`` clips, write them, and score them against fresh real clips."""
    num, k = cfg.eval.num_samples, pipe.model.num_classes
    labels = torch.arange(num) % max(k, 1)
    t0 = time.time()
    clips = pipe(num, labels=labels if k > 0 else None, steps=cfg.eval.steps, sampler=cfg.eval.sampler,
                 seed=cfg.eval.seed, batch_size=16)  # (num, F, H, W)
    sample_seconds = time.time() - t0
    save_clips_gif(clips[:20], out / "samples.gif")
    atomic_write(out / "samples.npz", lambda f: np.savez(f, x=clips.numpy(), labels=labels.numpy()))
    real = moving_mnist_from_config(cfg.data, n=num, seed=cfg.eval.seed + 1)
    real_b = moving_mnist_from_config(cfg.data, n=num, seed=cfg.eval.seed + 2)
    save_clips_gif(real.render(0, 20), out / "real.gif")
    mnist = load_data("mnist", normalise="minmax", seed=0)
    clf, test_acc = train_classifier(mnist, epochs=1 if smoke else 8, seed=0)
    m = video_metrics(clips, labels, real.render(), real.labels, real_b.render(), clf, mnist.norm,
                      fid_frames=fid_frames, seed=cfg.eval.seed)
    m["first_stage"] = first_stage_check(pipe.first_stage, cfg, clf, mnist.norm, num=8 if smoke else 32)
    return {**m, "classifier_test_accuracy": test_acc, "guidance": pipe.defaults.guidance,
            "sample_seconds": sample_seconds, "sample_steps": cfg.eval.steps}


def set_attention(model, mode: str) -> None:
    for blk in model.backbone.blocks:
        blk.attention_mode = mode


def time_poly_exact(cfg: Config, stage, repeats: int, train_batch: int, sample_batch: int) -> dict:
    """Seconds per training step and per sampling NFE at the model's L, poly against exact, interleaved.

    The timed training steps see whole clips (``train.window_frames = 0``): a run that trains on
    windows first would otherwise time its first window step; ``train_tokens`` is the sequence
    length the first block of the timed step received."""
    video = moving_mnist_from_config(cfg.data, n=train_batch, seed=cfg.eval.seed + 3)
    x0 = stage.encode_clips(video.render())
    data = TrainData(x0, video.labels, video.num_classes, first_stage=stage)
    tmp = tempfile.TemporaryDirectory()  # the trainers write nothing before fit()
    trainers, seen = {}, {}
    for mode in ("poly", "exact"):
        c = Config.from_dict(apply_overrides(cfg.to_dict(), [f"model.attention={mode}", f"train.batch_size={train_batch}",
                                                             "train.window_frames=0", "train.window_steps=0"]))
        trainers[mode] = Trainer(c, Path(tmp.name) / mode, progress=False, data=data)
        def record(_m, args, mode=mode) -> None:  # a pre-hook returning None leaves the inputs as they are
            seen.setdefault(mode, int(args[0].shape[1]))
        hook = trainers[mode].model.backbone.blocks[0].register_forward_pre_hook(record)
        trainers[mode].train_step()  # warm-up
        hook.remove()
    train_times = interleaved_times({m: tr.train_step for m, tr in trainers.items()}, repeats, "train step")
    model = trainers["poly"].ema
    # one guided NFE: the conditional and the null-class rows of sample_batch clips in one call
    x = torch.randn(2 * sample_batch, x0.shape[1], generator=torch.Generator().manual_seed(0))
    y = torch.cat([torch.arange(sample_batch) % model.num_classes, torch.full((sample_batch,), model.num_classes)])
    t = torch.full((2 * sample_batch,), 0.5)

    def nfe(mode: str):
        def run() -> None:
            set_attention(model, mode)
            with torch.no_grad():
                model.denoise(x, t, y)
        return run

    nfe_times = interleaved_times({m: nfe(m) for m in ("poly", "exact")}, repeats, "sampling NFE")
    tmp.cleanup()
    mt, mn = medians(train_times), medians(nfe_times)
    return {"tokens": model.reshape.num_tokens, "train_tokens": seen, "train_batch": train_batch,
            "sample_batch": sample_batch,
            "threads": torch.get_num_threads(), "train_step_s": mt, "nfe_s": mn,
            "speedup_train": mt["exact"] / mt["poly"], "speedup_sample": mn["exact"] / mn["poly"],
            "train_times_s": train_times, "nfe_times_s": nfe_times}


def headline(rep: dict) -> dict:
    """The keys the summary of the long-sequence results holds for the video model (training seconds:
    both stages, the frame autoencoder's when this process trained it; the DiT's summed over resumed
    segments, None when a segment resumed from a checkpoint that did not record them)."""
    ev, tm = rep.get("eval", {}), rep.get("timing", {})
    return {"video_tokens": rep["tokens"], "video_accuracy": ev.get("accuracy"),
            "video_identity_consistency": ev.get("identity_consistency"), "video_speed_w1_rel": ev.get("speed_w1_rel"),
            "video_train_seconds": (None if rep["train_seconds"] is None
                                    else rep["train_seconds"] + (rep["autoencoder_train_seconds"] or 0.0)),
            "video_poly_speedup_train": tm.get("speedup_train"),
            "video_poly_speedup_sample": tm.get("speedup_sample")}


def _trained_run(run: Path):
    """The configuration and first stage of a trained video run; a one-line error if RUN is not one."""
    if not (run / "config.json").is_file():
        raise CheckpointError(f"{str(run)!r} is not a trained run directory (no config.json); give the --out "
                              "of a finished video run, or its run/ subdirectory")
    return Config.from_dict(json.loads((run / "config.json").read_text())), LatentDiTPipeline.from_pretrained(run).first_stage


def check_stage(run: Path, out: Path, prov: dict) -> int:
    """``--check-stage RUN``: :func:`first_stage_check` of a trained run, with its own configuration."""
    cfg, stage = _trained_run(run)
    mnist = load_data("mnist", normalise="minmax", seed=0)
    clf, test_acc = train_classifier(mnist, epochs=8, seed=0)
    rep = {**first_stage_check(stage, cfg, clf, mnist.norm), "classifier_test_accuracy": test_acc,
           "run": str(run), "autoencoder": cfg.to_dict()["autoencoder"], "frames": cfg.data.frames}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "first_stage.json", {**rep, "provenance": provenance_end(prov)})
    print(json.dumps(rep, indent=1), flush=True)
    return 0


def time_only(run: Path, out: Path, args, prov: dict) -> int:
    """``--time-only RUN``: :func:`time_poly_exact` with a trained run's configuration and first stage
    (the timed networks are fresh: the timing does not depend on the trained weights). ``--set``
    overrides apply to that configuration, e.g. ``train.threads=2`` for a run trained on one thread."""
    cfg, stage = _trained_run(run)
    cfg = Config.from_dict(apply_overrides(cfg.to_dict(), args.overrides))
    rep = {"run": str(run), "overrides": list(args.overrides), "timing": time_poly_exact(cfg, stage, max(1, args.time_repeats), args.time_batch,
                                                      args.sample_batch)}
    out.mkdir(parents=True, exist_ok=True)
    prov = provenance_end(prov)
    atomic_write_json(out / "timing.json", {**rep, "provenance": prov})
    if args.summary is not None:  # part "video_timing": these keys replace those of the run's own timing
        tm = rep["timing"]
        write_summary(args.summary, "video_timing", {"video_poly_speedup_train": tm["speedup_train"],
                                                     "video_poly_speedup_sample": tm["speedup_sample"]}, prov)
    print(json.dumps(rep["timing"], indent=1), flush=True)
    return 0


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m latentdit.experiments.video", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="directory for the run, the samples and the JSON")
    ap.add_argument("--config", type=Path, default=CONFIG, help="the video configuration (default: the reference)")
    ap.add_argument("--variant", choices=sorted(VARIANTS), default="poly", help="the attention the DiT trains with")
    ap.add_argument("--frames", type=int, default=None, help="frames per clip (default: the config's)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--smoke", action="store_true", help="tiny clips and a few steps (about a minute)")
    ap.add_argument("--no-fid", action="store_true", help="skip the per-frame Inception FID")
    ap.add_argument("--fid-frames", type=int, default=1000, help="frames per side of the per-frame FID")
    ap.add_argument("--time-repeats", type=int, default=5, help="interleaved repeats of the timing (0: no timing)")
    ap.add_argument("--time-batch", type=int, default=4, help="clips per training step in the timing")
    ap.add_argument("--sample-batch", type=int, default=4, help="clips per sampling NFE in the timing (2 rows each)")
    ap.add_argument("--json", type=Path, default=None, help="also write the headline keys here")
    ap.add_argument("--check-stage", type=Path, default=None, metavar="RUN",
                    help="only measure the first stage of the trained run RUN (its own config) into OUT/first_stage.json")
    ap.add_argument("--time-only", type=Path, default=None, metavar="RUN",
                    help="only time poly against exact with the trained run RUN's config into OUT/timing.json")
    ap.add_argument("--summary", type=Path, default=None,
                    help="merge the headline keys into this shared summary (part 'video'; other keys kept), "
                         "e.g. docs/efficient/summary.json")
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    reuse_host_memory()  # the allocator of every `latentdit` command (latentdit.hostmem)
    prov = provenance_start(["python", "-m", "latentdit.experiments.video", *argv])
    if args.check_stage is not None:
        return check_stage(args.check_stage, args.out, prov)
    if args.time_only is not None:
        return time_only(args.time_only, args.out, args, prov)
    cfg = video_config(args.config, args.variant, args.frames, args.overrides, args.smoke)
    run = args.out / "run"
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    train(cfg, run, progress=False, data=prepare_first_stage(cfg, run, progress=False))
    pipe, meta = LatentDiTPipeline.from_pretrained(run), read_training_record(run)
    model, stage = pipe.model, pipe.first_stage
    rep = {"variant": args.variant, "tokens": model.reshape.num_tokens, "frames": cfg.data.frames,
           "train_seconds": meta.get("train_seconds"), "train_segments": meta.get("segments", 1),
           "autoencoder_train_seconds": stage.train_seconds,
           "steps_trained": meta.get("steps_trained"), "wall_train_seconds": time.time() - t0,
           "attention_planned": meta.get("attention", {}).get("planned"), **loss_curve(run),
           **learning_check(model, cfg, stage, num=8 if args.smoke else 32)}
    print(f"trained {rep['steps_trained']} steps in {rep['train_seconds'] or float('nan'):.0f} s "
          f"({rep['train_segments']} segment(s)); held-out loss {rep['loss_trained']:.4f} "
          f"(initialisation {rep['loss_init']:.4f}); x0 error at t = {rep['denoise_t']}: "
          f"{[round(v, 4) for v in rep['denoise_mse_trained']]} (Gaussian denoiser "
          f"{[round(v, 4) for v in rep['denoise_mse_gaussian']]})", flush=True)
    rep["eval"] = evaluate(pipe, cfg, args.out, fid_frames=0 if args.no_fid else args.fid_frames,
                           smoke=args.smoke)
    if args.time_repeats > 0 and cfg.model.qk_norm and model.num_classes > 0:  # poly needs the QK-norm bound
        rep["timing"] = time_poly_exact(cfg, stage, args.time_repeats, args.time_batch, args.sample_batch)
    rep.update({"config": cfg.to_dict(), "smoke": args.smoke, "provenance": provenance_end(prov)})
    name = f"{args.variant}_F{cfg.data.frames}.json"
    atomic_write_json(args.out / name, rep)
    top = headline(rep)
    if args.json is not None:
        atomic_write_json(args.json, {**top, "variant": args.variant, "smoke": args.smoke, "report": str(args.out / name),
                                      "provenance": rep["provenance"]})
    if args.summary is not None:
        write_summary(args.summary, "video", top, rep["provenance"])
    print(json.dumps(top, indent=1), flush=True)
    return 0


def _main_cli() -> int:
    try:
        return main()
    except LatentDitError as e:  # bad input: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(_main_cli())
