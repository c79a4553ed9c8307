"""Plans of ``latentdit rates``: the training and evaluation budget, the sweeps over (D, d0, n, T0)
around a base point, and the unique configurations they expand to (one per point and seed)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Budget:
    """Per-configuration training and evaluation budget (identical for every configuration of a plan)."""

    steps: int = 2000
    batch_size: int = 256
    hidden: int = 64
    depth: int = 4
    heads: int = 4
    lr: float = 1e-3
    warmup: int = 100
    ema_decay: float = 0.999
    T: float = 10.0
    eval_samples: int = 2000
    sample_steps: int = 50
    score_times: int = 12
    score_points: int = 2000
    tv_points: int = 20000


@dataclass(frozen=True)
class Plan:
    name: str
    seeds: tuple[int, ...]
    D_values: tuple[int, ...] = (32, 128, 512, 2048)
    d0_values: tuple[int, ...] = (4, 16, 64)
    n_values: tuple[int, ...] = (500, 2000, 8000, 32000)
    T0_values: tuple[float, ...] = (1e-3, 1e-2, 1e-1)
    tv_d0: int = 2
    base_D: int = 128
    base_d0: int = 16
    base_n: int = 8000
    base_T0: float = 1e-3
    components: int = 8
    budget: Budget = field(default_factory=Budget)


def plan_for(mode: str) -> Plan:
    """``full`` (the reference run), ``quick`` (same sweeps, smaller model and budget) or ``micro`` (tests)."""
    if mode == "full":
        return Plan("full", seeds=(0, 1, 2, 3, 4))
    if mode == "quick":
        return Plan("quick", seeds=(0, 1, 2),
                    budget=Budget(steps=200, batch_size=128, hidden=32, depth=2, heads=2, lr=2e-3, warmup=20,
                                  ema_decay=0.97, eval_samples=600, sample_steps=20, score_times=6,
                                  score_points=600, tv_points=6000))
    if mode == "micro":
        return Plan("micro", seeds=(0, 1, 2), D_values=(8, 16), d0_values=(4, 16), n_values=(60, 240),
                    T0_values=(1e-3, 1e-1), base_D=16, base_d0=4, base_n=60, components=2,
                    budget=Budget(steps=4, batch_size=32, hidden=8, depth=1, heads=1, lr=1e-3, warmup=1,
                                  ema_decay=0.5, eval_samples=64, sample_steps=3, score_times=2,
                                  score_points=64, tv_points=256))
    raise ValueError(f"unknown mode {mode!r}; choose full, quick or micro")


def _point(plan: Plan, **kw) -> dict:
    p = {"D": plan.base_D, "d0": plan.base_d0, "n": plan.base_n, "T0": plan.base_T0}
    p.update(kw)
    return p


def sweeps(plan: Plan) -> dict[str, tuple[str, list[dict]]]:
    """Sweep name -> (swept parameter, list of points without seed)."""
    return {
        "D": ("D", [_point(plan, D=D) for D in plan.D_values]),
        "d0": ("d0", [_point(plan, d0=d0) for d0 in plan.d0_values]),
        "n": ("n", [_point(plan, n=n) for n in plan.n_values]),
        "T0": ("T0", [_point(plan, T0=T0) for T0 in plan.T0_values]),
        "tv": ("n", [_point(plan, d0=plan.tv_d0, n=n) for n in plan.n_values]),
    }


def config_key(params: dict) -> str:
    return json.dumps(params, sort_keys=True, separators=(",", ":"))


def configurations(plan: Plan) -> list[dict]:
    """Unique configurations of all sweeps (shared points run once), each with its seed and budget."""
    seen, out = set(), []
    b = asdict(plan.budget)
    for _, (_, points) in sweeps(plan).items():
        for p in points:
            for s in plan.seeds:
                c = {**p, "seed": s, "components": plan.components, "budget": b}
                k = config_key(c)
                if k not in seen:
                    seen.add(k)
                    out.append(c)
    return out
