"""The trainer's fresh population draws (n = infinity), held-out loss and early stopping."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from latentdit.build import TrainData
from latentdit.config import load_config
from latentdit.data.gmm import SubspaceGMM
from latentdit.pipeline import LatentDiTPipeline
from latentdit.train import TrainCallbacks, list_checkpoints, train
from latentdit.train.early import EarlyStopping, ValidationSet


def tiny(*sets: str):
    base = ["data.ambient_dim=8", "data.latent_dim=2", "encoder.latent_dim=2", "data.components=2",
            "model.hidden=32", "model.depth=1", "model.heads=2", "model.patch=1", "train.threads=1",
            "train.device=cpu", "train.log_every=10", "optim.warmup_steps=5", "train.ema_decay=0.9"]
    return load_config(None, base + list(sets))


def law() -> SubspaceGMM:
    return SubspaceGMM.random(8, 2, 2, seed=3)


def population(gmm: SubspaceGMM) -> TrainData:
    x = gmm.sample(512, generator=torch.Generator().manual_seed(0)).float()
    return TrainData(x, None, 0, sampler=lambda m, g: gmm.sample(m, generator=g).float())


def records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_early_stopping_logic_on_a_constructed_sequence():
    """Best value, its step and weights, and the stop after `patience` misses, on a known sequence."""
    ema = torch.nn.Linear(1, 1)
    es = EarlyStopping(patience=2)
    for step, v in enumerate([3.0, 2.0, 2.5, 1.0, 1.5, 1.2], 1):
        with torch.no_grad():
            ema.weight.fill_(v)
        es.update(step, v, ema)
        if es.stopped:
            break
    assert (es.best, es.best_step, step) == (1.0, 4, 6)
    es.restore(ema)
    assert float(ema.weight.detach()) == 1.0
    never = EarlyStopping(0)
    for s, v in enumerate([1.0, 2.0, 3.0, 4.0], 1):
        never.update(s, v, ema)
    assert not never.stopped and never.bad == 3
    # min_delta: improvements smaller than 10% of the reference count as misses, the best weights
    # still follow the lowest value
    slow = EarlyStopping(patience=2, min_delta=0.1)
    for s, v in enumerate([1.0, 0.95, 0.93, 0.8], 1):
        with torch.no_grad():
            ema.weight.fill_(v)
        slow.update(s, v, ema)
        if slow.stopped:
            break
    assert slow.stopped and s == 3 and (slow.best, slow.best_step, slow.ref) == (0.93, 3, 1.0)
    slow.restore(ema)
    assert float(ema.weight.detach()) == pytest.approx(0.93)


@pytest.mark.slow
def test_fresh_draws_resume_exactly(tmp_path):
    """A fresh-draw run with validation, interrupted after step 23 and resumed, ends with the same
    weights, the same logged losses and the same validation record as an uninterrupted run."""
    gmm = law()
    cfg = tiny("train.steps=40", "train.batch_size=16", "train.checkpoint_every=10", "train.val_every=5",
               "train.val_points=64", "train.patience=50")
    ref = train(cfg, tmp_path / "ref", progress=False, data=population(gmm))

    class Stop(Exception):
        pass

    def die(step):
        if step == 23:
            raise Stop

    with pytest.raises(Stop):
        train(cfg, tmp_path / "run", progress=False, data=population(gmm), callbacks=TrainCallbacks(on_step=die))
    assert [int(p.stem.split("_")[1]) for p in list_checkpoints(tmp_path / "run")][-1] == 20
    run = train(cfg, tmp_path / "run", progress=False, data=population(gmm))
    a, b = load_file(str(ref / "model" / "model.safetensors")), load_file(str(run / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = records(ref), records(run)
    key = lambda rs, f: [(r["step"], r[f]) for r in rs if f in r]  # noqa: E731
    assert key(ra, "loss") == key(rb, "loss") and key(ra, "val_loss") == key(rb, "val_loss")
    assert len(key(ra, "val_loss")) == 8
    # fresh draws: the training points differ from step to step (a finite set would repeat them)
    other = train(tiny("train.steps=40", "train.batch_size=16", "train.seed=1"), tmp_path / "o", progress=False,
                  data=population(gmm))
    assert key(records(other), "loss") != key(ra, "loss")


@pytest.mark.slow
def test_early_stopping_on_an_overfit_problem_restores_the_best_weights(tmp_path):
    """n = 4 training points of a 1-d Gaussian, times in [1e-3, 0.05] (where the noised empirical law
    of 4 points is far from the true one) and thousands of steps: the held-out population loss must
    rise as the network memorises the points; the run stops by patience before the step cap and
    exports the EMA weights of the best evaluation."""
    gmm = SubspaceGMM.random(2, 1, 1, seed=3, var_range=(1.0, 1.0), mean_scale=0.0)
    x = gmm.sample(4 + 256, generator=torch.Generator().manual_seed(1)).float()
    cfg = load_config(None, [
        "data.ambient_dim=2", "data.latent_dim=1", "encoder.latent_dim=1", "model.hidden=32", "model.depth=1",
        "model.heads=2", "model.patch=1", "train.threads=1", "train.device=cpu", "optim.warmup_steps=5",
        "train.ema_decay=0.99", "train.steps=4000", "train.batch_size=4", "train.checkpoint_every=0",
        "train.val_every=50", "train.val_points=256", "train.patience=4", "optim.lr=3e-3", "optim.schedule=constant",
        "train.log_every=1000", "diffusion.T=0.05"])
    # 256 of the 260 points are held out (a seeded permutation): the trainer sees 4
    run = train(cfg, tmp_path / "run", progress=False, data=TrainData(x, None, 0))
    rs = records(run)
    vals = [(r["step"], r["val_loss"]) for r in rs if "val_loss" in r]
    best_step, best = min(vals, key=lambda sv: sv[1])
    meta = json.loads((run / "model" / "training.json").read_text())
    assert meta["converged"] is True and meta["steps_trained"] < 4000
    assert meta["best_val_loss"] == best and meta["best_val_step"] == best_step
    assert vals[-1][0] == meta["steps_trained"] == best_step + 50 * 4
    assert all(v > best for s, v in vals if s > best_step)
    assert max(v for _, v in vals) > 1.3 * best, vals  # the held-out loss rose: the model overfits
    assert rs[-1]["converged"] is True and rs[-1]["steps_trained"] == meta["steps_trained"]
    # the exported weights are the best evaluation's: their held-out loss is that value, not the last one
    model = LatentDiTPipeline.from_pretrained(run / "model").model
    from latentdit.train.batches import held_out_split

    _, out = held_out_split(x.shape[0], 256, cfg.train.seed)
    val = ValidationSet(x[out], None, cfg.diffusion.T0, cfg.diffusion.T, cfg.train.seed, cfg.diffusion.weighting)
    assert math.isclose(val.loss(model), best, rel_tol=1e-5)
    assert not math.isclose(val.loss(model), vals[-1][1], rel_tol=1e-3)


def test_reduce_on_plateau_decays_then_stops_on_a_constructed_sequence():
    """With decays = 2, the first two plateaus multiply lr_scale by the factor and reset the count;
    the third stops. The state round-trips (a resumed run goes on where it left)."""
    ema = torch.nn.Linear(1, 1)
    es = EarlyStopping(patience=2, decays=2, factor=0.5)
    seq = [1.0, 1.1, 1.2, 0.9, 0.95, 0.97, 0.96, 0.99]  # plateaus end at the 3rd, 6th and 8th values
    scales = []
    for step, v in enumerate(seq, 1):
        es.update(step, v, ema)
        scales.append(es.lr_scale)
    assert scales == [1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25] and es.decays_done == 2
    assert es.stopped and (es.best, es.best_step) == (0.9, 4)
    other = EarlyStopping(patience=2, decays=2, factor=0.5)
    other.load_state_dict(es.state_dict())
    assert (other.lr_scale, other.decays_done, other.stopped) == (0.25, 2, True)


def test_plateau_decays_scale_the_learning_rate_the_trainer_applies(tmp_path):
    """On a constant schedule the logged LR is optim.lr times the plateau scale: after the run,
    every logged LR is lr * factor^k with k the decays done before that step, and the last line says
    how many there were."""
    gmm = law()
    cfg = tiny("train.steps=400", "train.batch_size=16", "train.val_every=10", "train.val_points=64",
               "train.patience=1", "train.val_min_delta=0.5", "train.plateau_decays=2", "train.plateau_factor=0.1",
               "optim.schedule=constant", "optim.warmup_steps=0", "optim.lr=1e-3", "train.log_every=5")
    rs = records(train(cfg, tmp_path / "run", progress=False, data=population(gmm)))
    # min_delta 0.5 makes every validation after the first a miss: decays at steps 20 and 30, stop at 40
    scale_at = [(r["step"], r["lr_scale"]) for r in rs if "lr_scale" in r]
    assert scale_at[:4] == [(10, 1.0), (20, pytest.approx(0.1)), (30, pytest.approx(0.01)), (40, pytest.approx(0.01))]
    lrs = {r["step"]: r["lr"] for r in rs if "lr" in r}
    assert lrs[5] == pytest.approx(1e-3) and lrs[25] == pytest.approx(1e-4) and lrs[35] == pytest.approx(1e-5)
    assert rs[-1]["steps_trained"] == 40 and rs[-1]["converged"] is True and rs[-1]["lr_decays"] == 2
    with pytest.raises(Exception, match="plateau_factor"):
        train(tiny("train.val_every=10", "train.plateau_factor=1.5"), tmp_path / "bad", progress=False,
              data=population(gmm))
