"""train.noise = "latent": the DSM noise drawn in the latent coordinates of a frozen encoder."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from latentdit.build import TrainData, build_model
from latentdit.config import load_config
from latentdit.data.gmm import SubspaceGMM, random_orthonormal
from latentdit.diffusion import DSMLoss, draw_noise
from latentdit.errors import ConfigError


def cfg_for(D: int, *sets: str):
    base = [f"data.ambient_dim={D}", "data.latent_dim=2", "encoder.latent_dim=2", "data.components=2",
            "model.hidden=16", "model.depth=1", "model.heads=2", "model.patch=1", "train.threads=1",
            "train.device=cpu", "train.log_every=1", "optim.warmup_steps=2", "train.ema_decay=0.9",
            "train.steps=12", "train.batch_size=16", "train.val_every=4", "train.val_points=32"]
    return load_config(None, base + list(sets))


def law_at(D: int) -> SubspaceGMM:
    """One latent mixture embedded at ambient dimension D (the same latent law for every D)."""
    lat = SubspaceGMM.random(2, 2, 2, seed=5)
    B = random_orthonormal(D, 2, torch.Generator().manual_seed(D))
    return SubspaceGMM(B, lat.weights, lat.means, lat.eigvecs, lat.eigvals)


def test_latent_draws_have_the_law_of_the_ambient_noise_seen_through_W():
    """W^T z ~ N(0, I_d0) (mean 0, covariance I within 4 standard errors of 40,000 draws) and z lies in
    the span of W (its part off the subspace is zero to float rounding)."""
    W = random_orthonormal(16, 3, torch.Generator().manual_seed(0)).float()
    z = draw_noise(40_000, 16, generator=torch.Generator().manual_seed(1), basis=W)
    u = z @ W
    assert z.shape == (40_000, 16)
    assert (z - u @ W.T).abs().max() < 1e-5
    se = 4 / 40_000 ** 0.5
    assert u.mean(0).abs().max() < se
    assert (torch.cov(u.T) - torch.eye(3)).abs().max() < 4 * se  # the SE of a unit-variance entry is <= sqrt(2/n)


def test_frozen_encoder_loss_sees_only_the_latent_part_of_the_noise():
    """Implementation check (holds by construction of eq. 2.5's latent-form loss): with W_B frozen, the
    loss of x_t = beta x0 + sigma z is the same for z = W u and z = W u + (I - W W^T) v."""
    cfg = cfg_for(12)
    gmm = law_at(12)
    x = gmm.sample(64, generator=torch.Generator().manual_seed(0)).float()
    model = build_model(cfg, TrainData(x, None, 0), generator=torch.Generator().manual_seed(0))
    W = model.W_B.detach()
    g = torch.Generator().manual_seed(2)
    t = torch.rand(64, generator=g) * 2 + 1e-3
    u, v = torch.randn(64, 2, generator=g), torch.randn(64, 12, generator=g)
    full = u @ W.T + v - (v @ W) @ W.T
    assert torch.allclose(DSMLoss()(model, x, t, u @ W.T), DSMLoss()(model, x, t, full), rtol=1e-5, atol=0)


def test_latent_noise_pairs_runs_across_D_and_ambient_noise_does_not(tmp_path):
    """The same latent law at D = 8 and D = 32 with the exact frozen encoder: under latent noise the two
    runs draw the same latent batches (the loss, a mean over D coordinates, agrees after scaling by
    D) and end with nearly the same latent network; under ambient noise they do not."""
    from latentdit.train import train

    def run(D: int, noise: str):
        gmm = law_at(D)
        data = TrainData(gmm.sample(256, generator=torch.Generator().manual_seed(0)).float(), None, 0,
                         sampler=lambda m, g: gmm.sample(m, generator=g).float(), basis=gmm.B.float())
        out = train(cfg_for(D, f"train.noise={noise}"), tmp_path / f"{noise}{D}", progress=False, data=data)
        recs = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
        weights = load_file(str(out / "model" / "model.safetensors"))
        return [r["loss"] * D for r in recs if "loss" in r], {k: v for k, v in weights.items() if "W" not in k}

    def gap(wa, wb):
        return max(float((wa[k] - wb[k]).abs().max()) for k in wa)

    (la, wa), (lb, wb) = run(8, "latent"), run(32, "latent")
    (ca, va), (cb, vb) = run(8, "ambient"), run(32, "ambient")
    assert len(la) == 12 and la == pytest.approx(lb, rel=1e-4)
    assert ca != pytest.approx(cb, rel=1e-2)
    # float rounding of W^T x0 at the two D still moves Adam's steps a little; unpaired draws move them
    # by about the learning rate times the steps
    assert gap(wa, wb) < 0.25 * gap(va, vb)


def test_latent_noise_refuses_a_learned_encoder():
    with pytest.raises(ConfigError, match="train.noise='latent'"):
        cfg_for(8, "train.noise=latent", "encoder.learn=true")
    with pytest.raises(ConfigError, match="train.noise"):
        cfg_for(8, "train.noise=ambiant")
