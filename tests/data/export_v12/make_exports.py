"""Writes the format-1 and format-2 exports stored in this folder and their reference outputs.

Run with the code of the time these formats were current (before the export format 3):

    python tests/data/export_v12/make_exports.py

- ``gmm_v1``: configs/tiny.toml for 5 steps (format 1, no data record);
- ``digits_v1``: digits, class-conditional, d0 = 16, diagonal preconditioning (format 1 with the
  normalisation, image shape and pixel range);
- ``digits_v2``: digits through a factor-2 conv autoencoder, the DiT on its whole latent (format 2).

reference.json holds the denoiser and score on fixed inputs and 4 data-space samples (ddim,
4 steps, seed 0) for each; tests/test_export_compat.py checks that today's loader reproduces them.
It also records the same outputs for the two format-0 exports in ../export_v0 (``v0_tiny``,
``v0_digits``). Training files other than the export are removed to keep the folder small.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).parent
ROOT = HERE.parents[2]
SETS = {
    "gmm_v1": ["--config", str(ROOT / "configs" / "tiny.toml"), "--set", "train.steps=5"],
    "digits_v1": ["--set", "data.source=digits", "--set", "data.n=256", "--set", "data.conditional=true",
                  "--set", "encoder.latent_dim=16", "--set", "model.precondition_stats=diagonal",
                  "--set", "model.hidden=16", "--set", "model.depth=1", "--set", "model.heads=2",
                  "--set", "train.steps=5", "--set", "train.batch_size=32", "--set", "train.threads=1",
                  "--set", "sample.steps=3"],
    "digits_v2": ["--set", "data.source=digits", "--set", "data.n=256", "--set", "data.conditional=true",
                  "--set", "encoder.kind=autoencoder", "--set", "encoder.init=identity",
                  "--set", "encoder.latent_dim=64", "--set", "autoencoder.factor=2",
                  "--set", "autoencoder.channels=4", "--set", "autoencoder.width=8", "--set", "autoencoder.epochs=1",
                  "--set", "autoencoder.batch_size=32", "--set", "model.hidden=16", "--set", "model.depth=1",
                  "--set", "model.heads=2", "--set", "model.patch=2", "--set", "train.steps=5",
                  "--set", "train.batch_size=32", "--set", "train.threads=1", "--set", "sample.steps=3"],
}


def inputs(D: int, num_classes: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, D, generator=g)
    t = torch.tensor([1e-3, 0.01, 0.1, 0.5, 2.0, 9.0])
    y = torch.arange(6) % num_classes if num_classes > 0 else None
    return x, t, y


def record(path: Path) -> dict:
    from latentdit.pipeline import LatentDiTPipeline

    pipe = LatentDiTPipeline.from_pretrained(path)
    model = pipe.model
    x, t, y = inputs(model.ambient_dim, model.num_classes)
    labels = torch.arange(4) % model.num_classes if model.num_classes > 0 else None
    with torch.no_grad():
        return {"x0_hat": model.denoise(x, t, y).tolist(), "score": model(x, t, y).tolist(),
                "samples": pipe(4, labels=labels, sampler="ddim", steps=4, seed=0).tolist()}


def main() -> None:
    ref = {}
    for name, args in SETS.items():
        run = HERE / f"run_{name}"
        shutil.rmtree(run, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "latentdit.cli", "train", "--out", str(run), *args], check=True)
        shutil.rmtree(HERE / name, ignore_errors=True)
        shutil.move(str(run / "model"), str(HERE / name))
        shutil.rmtree(run)
        ref[name] = record(HERE / name)
    for name in ("tiny", "digits"):  # the format-0 exports beside this folder
        ref[f"v0_{name}"] = record(HERE.parent / "export_v0" / name)
    (HERE / "reference.json").write_text(json.dumps(ref) + "\n")


if __name__ == "__main__":
    main()
