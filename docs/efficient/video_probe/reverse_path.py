"""Where along the reverse path a trained video run stops drawing digits.

    python docs/efficient/video_probe/reverse_path.py RUN_DIR --out FILE.json [--clips 20]

RUN_DIR is the ``--out`` of ``python -m latentdit.experiments.video`` (it holds ``run/``). On fresh
real clips, with the run's own first stage and the MNIST classifier of the video metrics:

- ``one_step``: per-frame accuracy of the decoded one-step estimate x0_hat(x_t) of clips noised to
  each t (the denoiser alone), with its latent MSE;
- ``from_real``: per-frame accuracy of clips noised to t_start and sampled back to T0 (dpm2m,
  20 steps, the run's guidance): above the t where this falls to chance the network cannot draw a
  digit from what the noise leaves of one;
- ``reconstruction``: the first stage alone (encode, decode), the ceiling of both.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

from latentdit.data.real import load_data
from latentdit.data.video import moving_mnist_from_config
from latentdit.diffusion import add_noise
from latentdit.evaluation import run_config
from latentdit.evaluation.video import frame_classes, identity_metrics
from latentdit.metrics.classifier import train_classifier
from latentdit.models.guidance import GuidedDenoiser
from latentdit.io import atomic_write_json
from latentdit.pipeline import LatentDiTPipeline
from latentdit.provenance import provenance_end, provenance_start
from latentdit.sampling import get_sampler, resolve_grid

ONE_STEP_T = (0.01, 0.1, 0.5, 1.0, 2.0, 4.0)
START_T = (1.0, 2.0, 4.0, 7.0, 10.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--clips", type=int, default=20)
    a = ap.parse_args()
    prov = provenance_start(["python", *sys.argv])
    torch.manual_seed(0)
    export = a.run / "run" / "model"
    pipe, cfg = LatentDiTPipeline.from_pretrained(export), run_config(export)
    stage, model = pipe.first_stage, pipe.model.eval()
    video = moving_mnist_from_config(cfg.data, n=a.clips, seed=cfg.eval.seed + 99)
    labels = video.labels
    mnist = load_data("mnist", normalise="minmax", seed=0)
    clf, _ = train_classifier(mnist, epochs=8, seed=0)

    def accuracy(latent: torch.Tensor) -> float:
        return identity_metrics(frame_classes(clf, mnist.norm, stage.decode_clips(latent)), labels)["accuracy"]

    g = torch.Generator().manual_seed(cfg.eval.seed)
    den = GuidedDenoiser(model, labels, float(pipe.defaults.guidance))
    out = {"run": str(a.run), "clips": a.clips, "frames": cfg.data.frames, "canvas": cfg.data.canvas,
           "guidance": float(pipe.defaults.guidance), "one_step": [], "from_real": []}
    with torch.no_grad():
        z = stage.encode_clips(video.render())
        out["reconstruction"] = accuracy(z)
        for t in ONE_STEP_T:
            tt = torch.full((a.clips,), t)
            x0 = model.denoise(add_noise(z, tt, torch.randn(z.shape, generator=g)), tt, labels)
            out["one_step"].append({"t": t, "latent_mse": float((x0 - z).pow(2).mean()), "accuracy": accuracy(x0)})
        for t in START_T:
            x = add_noise(z, torch.full((a.clips,), t), torch.randn(z.shape, generator=g))
            x = get_sampler("dpm2m")(den, x, resolve_grid("dpm2m", 20, pipe.T0, t))
            out["from_real"].append({"t_start": t, "accuracy": accuracy(x)})
    out["provenance"] = provenance_end(prov)
    atomic_write_json(a.out, out)
    print(json.dumps({k: out[k] for k in ("reconstruction", "one_step", "from_real")}))


if __name__ == "__main__":
    main()
