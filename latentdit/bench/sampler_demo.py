"""A trained image model sampled at a handful of NFE: latentdit's samplers next to the public peers.

``latentdit bench sampler --export DIR --out FILE.json [--demo-num N] [--demo-nfe 5 10 20] [--no-fid]``

``DIR`` is an export or run directory of a model trained on image data (the MNIST demo's
``run/``). For every budget in ``--demo-nfe`` the same labels (balanced over the classes) and the
same N(0, I) draws are sampled with the export's guidance by latentdit's solvers (on their grids
and on a grid fitted to this model on ``WARMUP`` warm-up trajectories) and by the peers of
:mod:`latentdit.bench.sampler_peers` (their own output at sigma = 0). A model call is one call of
the guided denoiser (one batched network pass of 2N rows under guidance), for every sampler
alike (:data:`latentdit.sampling.NFE_CONVENTION`). Each row has the classifier accuracy (a
classifier trained on the real data), the classifier-feature Frechet distance and, unless
``--no-fid``, the Inception FID to the real set; ``reference`` is the export's own sampler with
``REFERENCE_STEPS`` steps.
"""

from __future__ import annotations

from pathlib import Path

import torch

from latentdit.bench.sampler_peers import all_peers, run_peer
from latentdit.errors import DataError
from latentdit.evaluation.baselines import balanced_labels, classifier_features
from latentdit.evaluation import run_config
from latentdit.evaluation.real import load_real
from latentdit.metrics import fid as fid_metrics
from latentdit.metrics.classifier import classifier_accuracy, train_classifier
from latentdit.metrics.fid import fid_from_features, fid_to_reference
from latentdit.metrics.fid_stats import cache_dir, cached_features, cached_stats
from latentdit.models.guidance import GuidedDenoiser
from latentdit.pipeline import LatentDiTPipeline
from latentdit.sampling import DEFAULTS, NFE_CONVENTION, CountingCalls, get_sampler, resolve_grid
from latentdit.sampling.fit import fit_grid

DEMO_NFE = (5, 10, 20)
REFERENCE_STEPS = 30
OURS = (("unipc", "logsnr"), ("ipndm", "karras"), ("unipc", "fitted"), ("ipndm", "fitted"))
# The peers: the usual default (DPM-Solver++(2M) on Karras sigmas; diffusers' order-2 DPMSolverMultistep
# gives the same numbers) and the three best at 5 and 10 NFE on the exact-score problem
# (docs/bench/sampler_core.json, low_nfe.peer_rows: all on exponential sigmas).
PEERS = ("k-diffusion dpmpp_2m karras", "diffusers DPMSolverMultistep order 2 exponential",
         "diffusers UniPCMultistep bh2 order 2 exponential", "diffusers UniPCMultistep bh2 order 3 exponential")
WARMUP = 256


class _Scorer:
    """Classifier accuracy, classifier-feature FD and (optionally) Inception FID of normalised rows."""

    def __init__(self, cfg, fid: bool, device: torch.device, progress: bool):
        self.data = load_real(cfg)
        if self.data.image_shape is None:
            raise DataError(f"the sampler demo needs image data; the export was trained on {self.data.name!r}")
        self.clf, self.clf_test_accuracy = train_classifier(self.data, seed=0)
        self.f_clf_real = classifier_features(self.clf, self.data.x)
        self.ext = fid_metrics.InceptionFeatures(device) if fid else None
        if self.ext is not None:
            real = self.data.to_images(self.data.x)
            self.f_real = cached_features(real, self.ext, cache=cache_dir(), progress=progress)
            self.stats = cached_stats(real, self.ext, cache=cache_dir(), features=self.f_real)

    def __call__(self, x: torch.Tensor, labels: torch.Tensor | None) -> dict:
        out = {"classifier_fd": fid_from_features(self.f_clf_real, classifier_features(self.clf, x))}
        if labels is not None:
            out["classifier_accuracy"] = classifier_accuracy(self.clf, x, labels)
        if self.ext is not None:
            f = self.ext.features(self.data.to_images(x), fid_metrics.FEATURE_BATCH, False)
            out["fid"] = fid_to_reference(self.f_real, self.stats, f)
        return out


def _ours(den, z: torch.Tensor, name: str, ts: torch.Tensor) -> tuple[torch.Tensor, int]:
    counted = CountingCalls(den)
    with torch.no_grad():
        return get_sampler(name)(counted, z.clone(), ts.to(z.device)), counted.calls


def demo_comparison(export: Path, *, num: int = 2000, nfes: tuple[int, ...] = DEMO_NFE, fid: bool = True,
                    seed: int = 0, progress: bool = False) -> dict:
    """The rows of the module docstring for the model in ``export``."""
    pipe = LatentDiTPipeline.from_pretrained(export)
    model, cfg = pipe.model.eval(), run_config(export)
    dev = pipe.device
    score = _Scorer(cfg, fid, dev, progress)
    labels = balanced_labels(num, model.num_classes) if model.num_classes > 0 else None
    guidance = float(pipe.defaults.guidance)
    den = GuidedDenoiser(model, labels, guidance)
    z = torch.randn(num, model.ambient_dim, generator=torch.Generator().manual_seed(seed)).to(dev)
    warm = torch.randn(WARMUP, model.ambient_dim, generator=torch.Generator().manual_seed(seed + 1)).to(dev)
    warm_den = GuidedDenoiser(model, balanced_labels(WARMUP, model.num_classes) if labels is not None else None,
                              guidance)
    peers, libs = all_peers(pipe.T0, pipe.T)
    rows = []

    def add(row: dict, x: torch.Tensor) -> None:
        row.update(score(pipe.decode(x.float()).cpu(), labels))
        rows.append(row)
        print(f"[demo] {row}", flush=True)

    ref_name = pipe.defaults.sampler
    x, calls = _ours(den, z, ref_name, resolve_grid(ref_name, REFERENCE_STEPS, pipe.T0, pipe.T))
    add({"kind": "reference", "sampler": ref_name, "grid": "auto", "nfe": calls}, x)
    for nfe in nfes:
        fitted = fit_grid(warm_den, warm, nfe, T0=pipe.T0, T=pipe.T)
        for name, grid in OURS:
            ts = fitted if grid == "fitted" else resolve_grid(name, nfe, pipe.T0, pipe.T, grid)
            x, calls = _ours(den, z, name, ts)
            add({"kind": "latentdit", "sampler": name, "grid": grid, "nfe": calls}, x)
        for peer in (p for p in PEERS if p in peers):
            x, calls = run_peer(peers[peer], den, z.clone(), nfe, pipe.T0, pipe.T, torch.Generator().manual_seed(5),
                                carry_to_T0=False)
            add({"kind": "peer", "sampler": peer, "nfe": calls}, x)
    key = "fid" if fid else "classifier_fd"
    return {"export": str(export), "num": num, "guidance": guidance, "nfe_convention": NFE_CONVENTION,
            "peers": libs, "peers_not_run": [p for p in PEERS if p not in peers],
            "classifier_test_accuracy": score.clf_test_accuracy, "rows": rows, "ranked_by": key,
            "best": _best(rows, nfes, key)}


def _best(rows: list[dict], nfes, key: str) -> dict:
    """Per budget, the best latentdit row and the best peer row by ``key`` (lower is better), and the
    best latentdit row's gap to the reference row (``gap_to_reference_<nfe>``)."""
    out: dict = {}
    ref = next(r for r in rows if r["kind"] == "reference")
    for nfe in nfes:
        for kind in ("latentdit", "peer"):
            got = [r for r in rows if r["kind"] == kind and r["nfe"] == nfe]
            out[f"{kind}_{nfe}"] = min(got, key=lambda r: r[key]) if got else None
        if out[f"latentdit_{nfe}"] is not None:
            out[f"gap_to_reference_{nfe}"] = out[f"latentdit_{nfe}"][key] - ref[key]
    return out
