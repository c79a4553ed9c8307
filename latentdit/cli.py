"""Command-line interface: ``latentdit {train, sample, evaluate, bench, demo, rates}``.

Errors a user can fix (bad config, bad data, missing run, an output path that cannot be written, a
full disk, ...) print one line and exit with status 2; ``--debug`` shows the traceback instead. Every
command checks its output paths before it starts working (``latentdit.io``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from latentdit.errors import CheckpointError, ConfigError, DataError, LatentDitError
from latentdit.hostmem import reuse_host_memory
from latentdit.io import WRITE_ERRNOS, atomic_write, check_output_dir, check_output_file, describe_write_error

DELEGATED = {  # subcommand -> module with main(argv) -> int
    "demo": "latentdit.experiments.demo",
    "rates": "latentdit.experiments.rates",
}
BENCHES = {"attention": "latentdit.bench.attention", "dit": "latentdit.bench.dit", "model": "latentdit.bench.model",
           "sampler": "latentdit.bench.sampler", "inception": "latentdit.bench.inception"}
OUTPUTS = {  # delegated command -> (flag, kind) of the paths it writes, checked before it starts
    "demo": (("--out", "dir"),), "rates": (("--out", "dir"),), "bench": (("--out", "file"), ("--plot", "file")),
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="latentdit", description="Latent diffusion transformers (eq. 2.5 of Hu et al. 2024).")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a score network (resumes an existing run directory)")
    t.add_argument("--config", type=Path, help="TOML, YAML or JSON config file (defaults if omitted)")
    t.add_argument("--out", type=Path, required=True, help="run directory")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set model.depth=6 (repeatable)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")

    s = sub.add_parser("sample", help="draw samples from a trained run")
    s.add_argument("--run", type=Path, required=True)
    s.add_argument("--num", type=int, default=1000)
    s.add_argument("--steps", type=int, default=None)
    s.add_argument("--sampler", default=None, help="em | ei | heun | ddim | dpm2m | dpm3m | ipndm | ipndm_v | unipc")
    s.add_argument("--grid", default=None, help="time grid: auto | uniform | log | logsnr | karras | polylambda")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    s.add_argument("--denoise", action=argparse.BooleanOptionalAction, default=None,
                   help="end with Tweedie's E[x0 | x_T0] (default: the run's sample.denoise)")
    s.add_argument("--label", type=int, action="append", default=None,
                   help="class label(s) for conditional models, cycled over the samples")
    s.add_argument("--raw", action="store_true",
                   help="image data: keep values outside the pixel range (default: clipped to it)")
    s.add_argument("--out", type=Path, required=True,
                   help="output .npy, .npz (with labels) or, for image data, .png (a grid, a row per class); "
                        "video models write .npy or .npz and an animated .gif beside it")

    e = sub.add_parser("evaluate", help="metrics of a trained run (ground truth or real data)")
    e.add_argument("--run", type=Path, required=True)
    e.add_argument("--out", type=Path, required=True, help="metrics.json")
    e.add_argument("--num", type=int, default=None, help="number of generated samples")
    e.add_argument("--sampler", default=None)
    e.add_argument("--steps", type=int, default=None)
    e.add_argument("--seed", type=int, default=None)
    e.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale of the guided samples (default: the run's sample.guidance)")

    b = sub.add_parser("bench", help="benchmarks: attention | dit | model | sampler | inception")
    b.add_argument("which", choices=sorted(BENCHES))
    b.add_argument("rest", nargs=argparse.REMAINDER)

    for name, help_ in (("demo", "train on MNIST and write samples.png + metrics.json"),
                        ("rates", "measure the paper's statistical rates")):
        d = sub.add_parser(name, help=help_, add_help=False)
        d.add_argument("rest", nargs=argparse.REMAINDER)
    return p


def _delegate(module: str, argv: list[str]) -> int:
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module:
            raise LatentDitError(f"{module} is not available in this installation") from e
        raise
    return int(mod.main(argv) or 0)


def _cmd_train(a: argparse.Namespace) -> int:
    from latentdit.config import Config, load_config
    from latentdit.evaluation import snapshot_metrics
    from latentdit.train import TrainCallbacks, check_run_dir, prepare_first_stage, train

    check_output_dir(a.out)
    check_run_dir(a.out)
    if (a.out / "config.json").is_file() and a.config is None:
        import json

        cfg = Config.from_saved(json.loads((a.out / "config.json").read_text()))  # resume as it was
        if a.overrides:
            from latentdit.config import apply_overrides

            cfg = Config.from_dict(apply_overrides(cfg.to_dict(), a.overrides))
    else:
        cfg = load_config(a.config, a.overrides)
    progress = None if not a.quiet else False
    data = prepare_first_stage(cfg, a.out, progress=progress)  # the first stage, before the DiT
    train(cfg, a.out, progress=progress, data=data, callbacks=TrainCallbacks(evaluate=snapshot_metrics(cfg)))
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"run written to {a.out} (export in {a.out / 'model'})")
    return 0


def _check_sampling_flags(a: argparse.Namespace) -> None:
    """The sampling flags of ``sample`` and ``evaluate``, checked once here."""
    from latentdit.sampling import GRIDS, SAMPLERS

    if getattr(a, "num", None) is not None and a.num <= 0:
        raise ConfigError(f"--num {a.num} must be > 0")
    if a.steps is not None and a.steps <= 0:
        raise ConfigError(f"--steps {a.steps} must be > 0")
    if a.sampler is not None and a.sampler not in SAMPLERS:
        raise ConfigError(f"--sampler {a.sampler!r} is not one of {list(SAMPLERS)}")
    grid = getattr(a, "grid", None)
    if grid is not None and grid not in ("auto", *GRIDS):
        raise ConfigError(f"--grid {grid!r} is not one of {['auto', *GRIDS]}")


def _cmd_sample(a: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from latentdit.output import save_clips_gif, save_sample_grid
    from latentdit.pipeline import LatentDiTPipeline

    check_output_file(a.out)
    _check_sampling_flags(a)
    if a.out.suffix not in (".npy", ".npz", ".png"):
        raise ConfigError(f"--out {str(a.out)!r} must end in .npy, .npz or .png")
    pipe = LatentDiTPipeline.from_pretrained(a.run)
    if a.out.suffix == ".png" and not pipe.image_shape:
        raise DataError(f"--out {str(a.out)!r}: a PNG grid needs image data, but {str(a.run)!r} models vectors "
                        f"of dimension {pipe.model.ambient_dim}; write .npy or .npz instead")
    video = pipe.video_shape  # clips: (N, F, H, W) and an animated GIF beside
    if video is not None:
        if a.out.suffix == ".png":
            raise DataError(f"--out {str(a.out)!r}: {str(a.run)!r} models clips; write .npy or .npz (an animated "
                            ".gif is written beside it)")
        check_output_file(a.out.with_suffix(".gif"))
    k = pipe.model.num_classes
    labels = None
    if k > 0:
        chosen = a.label if a.label else list(range(k))
        bad = [c for c in chosen if not 0 <= c < k]
        if bad:
            raise ConfigError(f"--label {bad[0]} is out of range; the model has classes 0..{k - 1}")
        labels = torch.tensor(chosen)[torch.arange(a.num) % len(chosen)]
    elif a.label:
        raise ConfigError("--label given but the model is not class-conditional")
    x = pipe(a.num, sampler=a.sampler, steps=a.steps, grid=a.grid, seed=a.seed, labels=labels, guidance=a.guidance,
             denoise=a.denoise, clip=not a.raw, progress=True, output_type="vectors")
    if a.out.suffix == ".png":
        save_sample_grid(x, a.out, image_shape=pipe.image_shape, pixel_range=pipe.pixel_range, labels=labels)
        print(f"wrote a grid of samples{' (a row per class)' if labels is not None else ''} to {a.out}")
        return 0
    arr = x.cpu().numpy()
    if video is not None:
        arr = arr.reshape(arr.shape[0], *video)
        save_clips_gif(arr, a.out.with_suffix(".gif"))
    if a.out.suffix == ".npz":
        atomic_write(a.out, lambda f: np.savez(f, x=arr, **({"labels": labels.numpy()} if labels is not None else {})))
    else:
        atomic_write(a.out, lambda f: np.save(f, arr))
    if video is not None:
        print(f"wrote {arr.shape[0]} clips of {video[0]} x {video[1]} x {video[2]} to {a.out} and "
              f"{a.out.with_suffix('.gif')}")
        return 0
    print(f"wrote {arr.shape[0]} samples of dimension {arr.shape[1]} to {a.out}")
    return 0


def _cmd_evaluate(a: argparse.Namespace) -> int:
    import json

    from latentdit.evaluation import evaluate_run

    check_output_file(a.out)
    if not a.run.is_dir():
        raise CheckpointError(f"run directory {str(a.run)!r} does not exist; check the path or train first "
                              "with `latentdit train --out RUN`")
    _check_sampling_flags(a)
    kw = {k: v for k, v in (("num_samples", a.num), ("sampler", a.sampler), ("steps", a.steps),
                            ("seed", a.seed), ("guidance", a.guidance)) if v is not None}
    m = evaluate_run(a.run, a.out, progress=True, **kw)  # a bar on a terminal, plain lines otherwise
    print(json.dumps({k: v for k, v in m.items() if not isinstance(v, (dict, list))}, indent=2))
    return 0


def _split_delegated(argv: list[str]) -> argparse.Namespace | None:
    """Delegated subcommands (demo, rates, bench NAME) are split off before parsing: argparse's
    REMAINDER cannot start with an option, so `latentdit rates --out DIR` would be rejected."""
    debug = argv[:1] == ["--debug"]
    rest = argv[1:] if debug else argv
    if rest and rest[0] in DELEGATED:
        return argparse.Namespace(debug=debug, command=rest[0], which=None, rest=rest[1:])
    if len(rest) > 1 and rest[0] == "bench" and rest[1] in BENCHES:
        return argparse.Namespace(debug=debug, command="bench", which=rest[1], rest=rest[2:])
    return None


def _flag_values(argv: list[str], flag: str) -> list[str]:
    """The values given to ``flag`` (``--out X`` or ``--out=X``) in a delegated command's arguments."""
    return [argv[i + 1] if x == flag else x[len(flag) + 1:] for i, x in enumerate(argv)
            if (x == flag and i + 1 < len(argv)) or x.startswith(flag + "=")]


def _check_delegated_outputs(command: str, argv: list[str]) -> None:
    """The output paths a delegated command was given can be written (before it does any work)."""
    for flag, kind in OUTPUTS.get(command, ()):
        for value in _flag_values(argv, flag):
            (check_output_dir if kind == "dir" else check_output_file)(Path(value), flag)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _split_delegated(argv) or _parser().parse_args(argv)
    try:
        reuse_host_memory()  # large CPU activations without a page fault each (latentdit.hostmem)
        if args.command in OUTPUTS:
            _check_delegated_outputs(args.command, args.rest)
        if args.command == "train":
            return _cmd_train(args)
        if args.command == "sample":
            return _cmd_sample(args)
        if args.command == "evaluate":
            return _cmd_evaluate(args)
        if args.command == "bench":
            return _delegate(BENCHES[args.which], args.rest)
        return _delegate(DELEGATED[args.command], args.rest)
    except LatentDitError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # an output that could not be written (disk full, read-only, ...): not a bug
        if args.debug or e.errno not in WRITE_ERRNOS:
            raise
        out = getattr(args, "out", None) or next(iter(_flag_values(getattr(args, "rest", None) or [], "--out")), None)
        print(f"error: {describe_write_error(e, out)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint is kept and `latentdit train --out RUN` resumes", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
