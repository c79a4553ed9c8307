"""Plans of ``latentdit rates``: one dataclass of sizes per section, and the tasks they expand to.

A task is a plain dict ``{"section", <the point's parameters>, "seed", "budget"}``: one training run
of the :class:`latentdit.train.Trainer` plus its evaluation. Sections:

- ``sample``: sample complexity (Thm 3.2, Cor. 3.2.1): nested subsets of n points plus n = infinity
  (``n = 0``: fresh draws every step), each trained to early stopping on a held-out population loss;
- ``approx``: approximation (Thm 3.1) at n = infinity against capacity (depth K, width or the paper
  block's heads / head size / ff width), for each d0 and D;
- ``blocks``: d0 like-with-like: a product of identical token blocks (and a rotated, coupled
  variant), exact frozen encoder, n = infinity;
- ``t0``: the early-stopping time T0 at fixed n;
- ``dcheck``: D at fixed d0 with a frozen exact encoder (an implementation check);
- ``encoder``: a learned W_B from a random init, its errors against steps per D (the library's own
  ``gmm`` ground truth with ``data.n = 0``, exactly what ``latentdit train`` runs);
  ``encoder_noisy``: a learned W_B on noisy data x = B h + tau xi against n, next to PCA's.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace

from latentdit.experiments.rates.plan_paper import EstimationSection, FixedLaw, FstarSection, paper_points


@dataclass(frozen=True)
class Budget:
    """Training and evaluation sizes shared by every task of a plan (steps are a cap: early stopping)."""

    max_steps: int = 6000
    batch_size: int = 256
    hidden: int = 64
    depth: int = 2
    heads: int = 4
    lr: float = 2e-3
    warmup: int = 100
    ema_decay: float = 0.995
    T: float = 10.0
    val_every: int = 200
    patience: int = 5
    val_min_delta: float = 0.0005  # an evaluation must improve by 0.05% to reset the patience count
    val_points: int = 4096
    eval_samples: int = 2000
    sample_steps: int = 25
    score_times: int = 16
    score_points: int = 1000
    tv_points: int = 0
    checkpoint_every: int = 1000
    # the DSM noise of the frozen-encoder sections (train.noise; learned-encoder sections draw ambient
    # noise): latent draws do not depend on D, so the runs of one seed at different D are paired
    noise: str = "latent"


@dataclass(frozen=True)
class SampleSection:
    """Excess risk and score error against n (Thm 3.2): nested subsets of one draw, plus n = inf."""

    d0_values: tuple[int, ...] = (4,)
    D: int = 32
    n_values: tuple[int, ...] = (64, 256, 1024, 4096, 16384)
    T0: float = 1e-3
    memorisation_quantile: float = 0.1
    plateau_decays: int = 0  # LR reductions on a plateau before stopping (train.plateau_decays); 0: stop
    budget: Budget | None = None  # this section's own sizes (None: the plan's)
    seeds: tuple[int, ...] | None = None  # this section's own seeds (None: the plan's)


@dataclass(frozen=True)
class ApproxSection:
    """score_uniform against capacity at n = inf (Thm 3.1), for each d0 and D and block kind."""

    d0_values: tuple[int, ...] = (4, 16, 64)
    D_values: tuple[int, ...] = (32, 2048)
    depths: tuple[int, ...] = (1, 2, 4, 8)
    widths: tuple[int, ...] = (32, 128)  # DiT block widths: with depths 1..8 about 2 decades of parameters
    blocks: tuple[str, ...] = ("dit", "paper")
    paper: tuple[int, int, int] = (2, 1, 4)  # paper block (r heads, head size m, ff width l) at depth 1
    T0: float = 1e-3
    budget: Budget | None = None  # this section's own sizes (None: the plan's)
    seeds: tuple[int, ...] | None = None  # this section's own seeds (None: the plan's)
    # seeds of the D values after the first, each paired with the first D's run of the same seed
    # (same latent law and latent draws); None: the section's seeds
    paired_seeds: tuple[int, ...] | None = None


@dataclass(frozen=True)
class BlocksSection:
    """max_t sigma(t) err(t) against d0 = L k for L identical token blocks of size k."""

    blocks: tuple[int, ...] = (1, 2, 4, 8, 32)  # d0 = 4 ... 128: 1.5 decades, 5 points
    block_dim: int = 4
    D: int = 256
    coupled: tuple[bool, ...] = (False, True)
    T0: float = 1e-3
    budget: Budget | None = None  # this section's own sizes (None: the plan's)
    seeds: tuple[int, ...] | None = None  # this section's own seeds (None: the plan's)


@dataclass(frozen=True)
class T0Section:
    """score_integral and W2 to the clean latent law against the early-stopping time T0."""

    T0_values: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
    d0: int = 4
    D: int = 32
    n: int = 1024
    budget: Budget | None = None  # this section's own sizes (None: the plan's)
    seeds: tuple[int, ...] | None = None  # this section's own seeds (None: the plan's)


@dataclass(frozen=True)
class DCheckSection:
    """D at fixed d0 with W_B = B frozen: the training problem is the same in law for every D."""

    D_values: tuple[int, ...] = (32, 128, 512, 2048)
    d0: int = 4
    T0: float = 1e-3
    budget: Budget | None = None  # this section's own sizes (None: the plan's)
    seeds: tuple[int, ...] | None = None  # this section's own seeds (None: the plan's)


@dataclass(frozen=True)
class EncoderSection:
    """A learned W_B from a random Stiefel init: subspace and score error against steps per D (the
    Trainer's periodic evaluation, n = inf), and on noisy data x = B h + tau xi against n next to PCA's."""

    D_values: tuple[int, ...] = (32, 128, 512, 2048)
    d0: int = 4
    eval_every: int = 500
    noisy_D: int = 128
    tau: float = 0.1
    n_values: tuple[int, ...] = (64, 256, 1024, 4096, 16384)
    T0: float = 1e-3
    budget: Budget | None = None  # this section's own sizes (None: the plan's)
    seeds: tuple[int, ...] | None = None  # this section's own seeds (None: the plan's)


@dataclass(frozen=True)
class Plan:
    name: str
    seeds: tuple[int, ...]
    components: int = 8
    budget: Budget = field(default_factory=Budget)
    sample: SampleSection | None = field(default_factory=SampleSection)
    approx: ApproxSection | None = field(default_factory=ApproxSection)
    blocks: BlocksSection | None = field(default_factory=BlocksSection)
    t0: T0Section | None = field(default_factory=T0Section)
    dcheck: DCheckSection | None = field(default_factory=DCheckSection)
    encoder: EncoderSection | None = field(default_factory=EncoderSection)
    fstar: FstarSection | None = field(default_factory=FstarSection)
    estimation: EstimationSection | None = field(default_factory=EstimationSection)


# the wall time each mode must fit on 2 cores (the report compares the measured wall with it)
WALL_TARGET_SECONDS = {"full": 14400, "quick": 900}

SECTIONS = ("sample", "approx", "blocks", "t0", "dcheck", "encoder", "encoder_noisy", "fstar", "estimation")


# the quick plan's fstar and estimation budget (each at most 400 steps; fstar also 800 at twice the budget)
_QUICK_PAPER = Budget(max_steps=400, batch_size=128, hidden=32, depth=1, heads=2, lr=3e-3, warmup=50, ema_decay=0.99,
                      val_every=50, patience=2, val_min_delta=0.001, val_points=1024, checkpoint_every=200)


def paper_sections(mode: str, train: Budget | None = None) -> dict:
    """The ``fstar`` and ``estimation`` sections of :func:`plan_for`'s ``mode`` (``train``: the full plan's budget).

    Full: sized from probes of each section's largest and smallest task (CPU time per step, one
    thread, a loaded machine: fstar d0 = 64 / width 64 58 ms, d0 = 4 / width 8 7 ms; estimation
    D = 2048 / d0 = 8 25 ms, D = 32 / d0 = 2 4 ms; an estimation task's evaluation with its controls
    and references 6-40 s). fstar: 12 points x 3 seeds, each at most 3,000 + 6,000 steps, <= 4,400 CPU
    s; estimation: 66 tasks x 3 seeds at <= 2,000 steps, ~50 s each, ~9,900 CPU s. Together ~2 h on 2
    cores; upper estimates. One full-budget fstar task (d0 = 4, width 16, seed 0; constant learning
    rate, a plateau = 4 checks improving the held-out loss by < 1%) took 69 CPU s: both runs reached
    their caps with no LR reduction (the loss still fell by > 1% per 100 steps), eps_hat 0.0197 at
    3,000 steps and 0.0143 at 6,000 (F = 0: 0.211). At this budget the fstar curves are likely to
    be reported as not converged; a 4x larger step cap would cost ~4x the fstar CPU time.
    Quick, measured (one thread per task, a loaded machine): fstar tasks 6-9 CPU s (both budgets),
    estimation tasks 3-7 CPU s, 280 CPU s for the 52 tasks: ~2.5 min on 2 cores beside the 571 s
    wall of the other sections (docs/rates-quick/timing.json).
    The fixed-law replicate (:class:`FixedLaw`), estimated from those costs: full, 15 tasks at D = 32,
    d0 = 4 (5 n x 3 replicates), each at most 2,000 steps of ~5-10 ms plus a 6-20 s evaluation, <= 40
    CPU s: <= 600 CPU s, ~5 min on 2 cores (6 min at the 50 s mean of all estimation tasks); quick, 4
    tasks like the quick D = 32 / d0 = 4 held-out tasks (2.7-3.2 CPU s): ~12 CPU s.

    Version 4, sized from the task seconds of the v3 full run (docs/rates/v3/rows.csv, 2 workers on 2
    idle cores): sections sample to encoder_noisy 7,370 s, fstar 6,115 s, estimation 7,705 s (213
    tasks at a mean 1,853 steps, 36 s each). Of v3's 213 estimation runs 115 reached the 2,000-step
    cap, 74 of them after both LR decays (one patience window from the stop), 33 after one, 8 after
    none: a cap of 8,000 steps leaves room for two more decays. The runs that stopped took 1,300-2,000
    steps; at a mean of ~2,600 steps a task costs ~50 s. The in-class ERM runs at d0 = 4 only (30
    tasks; v3 ran them at every d0): 153 estimation tasks, ~7,700 s. fstar adds d0 = 2 (5 widths,
    ~50 s each: ~750 s). Together ~21,900 task-s: ~3.0 h on 2 workers, below the 4 h target, with the
    capped tail of the estimation runs as the margin.
    """
    if mode == "full":
        # a check that improves the held-out loss by less than 1% is a miss: a plateau is a slow crawl too
        return {"fstar": FstarSection(budget=replace(train, max_steps=3000, val_every=100, patience=4, val_points=2048,
                                                     val_min_delta=0.01, checkpoint_every=1000), seeds=(0, 1, 2)),
                "estimation": EstimationSection(budget=replace(train, max_steps=8000, val_every=100, patience=4,
                                                               val_min_delta=0.01, checkpoint_every=1000),
                                                erm_d0_values=(4,), seeds=(0, 1, 2), fixed_law=FixedLaw())}
    if mode == "quick":
        return {"fstar": FstarSection(d0_values=(4, 16), widths=(8, 16, 32), depth=1, base_width=8, plateau_decays=1,
                                      budget=_QUICK_PAPER, seeds=(0, 1)),
                "estimation": EstimationSection(D_values=(32, 512), d0_values=(2, 4), n_values=(64, 512),
                                                plateau_decays=1, budget=_QUICK_PAPER, seeds=(0, 1),
                                                fixed_law=FixedLaw(replicates=(10, 11), n_values=(64, 512)))}
    return {"fstar": FstarSection(d0_values=(4,), D=8, widths=(8,), depth=1, base_width=8, plateau_decays=1),
            "estimation": EstimationSection(D_values=(8, 16), d0_values=(2,), n_values=(16,), plateau_decays=1,
                                            fixed_law=FixedLaw(replicates=(10, 11), D=8, d0=2, n_values=(16,)))}

def plan_for(mode: str) -> Plan:
    """``full`` (the reference run, 5 seeds), ``quick`` (every section, small) or ``micro`` (tests)."""
    if mode == "full":  # <= 4 h on 2 idle cores, 2 workers (estimate: paper_sections)
        train = Budget(max_steps=4000, patience=4)
        short = replace(train, max_steps=1500, val_every=150, patience=3, val_points=2048, checkpoint_every=500)
        # Sized from the measured task costs: 10 seeds for the n sweep, 3 for the capacity and d0
        # sweeps, 2 for the T0 sweep, the learned encoder and the D check; the capacity sweep at d0 in
        # {4, 16}, where both D = 32 and D = 2048 exist, with D = 2048 at seed 0 only: with latent
        # noise that run is paired with the D = 32 run of the same seed (same latent law and draws), so
        # one seed compares the two D without seed noise, at a third of the D = 2048 cost (those tasks
        # took 50-90 CPU seconds each, 1.2-1.6x their D = 32 twins). The n sweep reaches down to n = 8:
        # from n = 1024 on, the excess is within the seed-to-seed optimisation noise of the n = inf runs,
        # so 1.5 decades of a measurable excess need n <= 256 / 10^1.5. At 5 seeds the n = 256 excess
        # stood at 3.1 and then 2.1 standard errors in two runs (docs/rates at a0baa81 and before it), on
        # the edge of the fit; the 5 added seeds took 1,199 s of wall (docs/rates/v1/timing.json), within the 2 h.
        three, two = (0, 1, 2), (0, 1)
        return Plan("full", seeds=(0, 1, 2, 3, 4), budget=train,
                    sample=SampleSection(n_values=(8, 16, 32, 64, 128, 256, 1024, 4096, 16384),
                                        budget=replace(train, max_steps=6000),  # a cap: all stop by patience
                                        seeds=tuple(range(10))),
                    approx=ApproxSection(d0_values=(4, 16), widths=(32,), budget=short, seeds=three,
                                         paired_seeds=(0,)),
                    blocks=BlocksSection(budget=short, seeds=three),
                    t0=T0Section(seeds=two),
                    dcheck=DCheckSection(budget=short, seeds=two),
                    encoder=EncoderSection(D_values=(32, 256, 2048), seeds=two),
                    **paper_sections("full", train))
    if mode == "quick":
        return Plan("quick", seeds=(0, 1, 2), components=4,
                    budget=Budget(max_steps=1000, batch_size=128, hidden=32, depth=2, heads=2, lr=3e-3, warmup=50,
                                  ema_decay=0.99, val_every=100, patience=3, val_min_delta=0.001, val_points=2048,
                                  eval_samples=600,
                                  sample_steps=15, score_points=400, checkpoint_every=500),
                    sample=SampleSection(n_values=(64, 256, 1024, 4096)),
                    approx=ApproxSection(d0_values=(4,), D_values=(32, 128), depths=(1, 4), widths=(16, 32)),
                    blocks=BlocksSection(blocks=(1, 4), D=64, coupled=(False, True)),
                    t0=T0Section(T0_values=(1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1), n=512),
                    dcheck=DCheckSection(D_values=(32, 512)),
                    encoder=EncoderSection(D_values=(32, 512), eval_every=200, noisy_D=64, n_values=(64, 256, 1024,
                                                                                                     4096)),
                    **paper_sections("quick"))
    if mode == "micro":
        return Plan("micro", seeds=(0, 1), components=2,
                    budget=Budget(max_steps=12, batch_size=16, hidden=8, depth=1, heads=1, lr=1e-3, warmup=1,
                                  ema_decay=0.5, val_every=4, patience=2, val_points=64, eval_samples=64,
                                  sample_steps=3, score_points=32, checkpoint_every=6),
                    sample=SampleSection(D=8, n_values=(16, 64)),
                    approx=ApproxSection(d0_values=(4,), D_values=(8, 16), depths=(1, 2), widths=(8,)),
                    blocks=BlocksSection(blocks=(1, 2), block_dim=2, D=8, coupled=(False, True)),
                    t0=T0Section(T0_values=(1e-3, 1e-1), D=8, n=64),
                    dcheck=DCheckSection(D_values=(8, 16)),
                    encoder=EncoderSection(D_values=(8, 16), eval_every=6, noisy_D=8, n_values=(16, 64)),
                    **paper_sections("micro"))
    raise ValueError(f"unknown mode {mode!r}; choose full, quick or micro")


PLAN_FIELDS = {"sample": "sample", "approx": "approx", "blocks": "blocks", "t0": "t0", "dcheck": "dcheck",
               "encoder": "encoder", "encoder_noisy": "encoder", "fstar": "fstar", "estimation": "estimation"}


def only_sections(plan: Plan, names: list[str]) -> Plan:
    """``plan`` with only the plan fields behind the section ``names`` (``encoder`` and
    ``encoder_noisy`` share one field); a ValueError names an unknown section."""
    bad = [n for n in names if n not in PLAN_FIELDS]
    if bad:
        raise ValueError(f"unknown section(s) {bad}; choose from {list(PLAN_FIELDS)}")
    keep = {PLAN_FIELDS[n] for n in names}
    return replace(plan, **{f: None for f in set(PLAN_FIELDS.values()) - keep})


def points(plan: Plan) -> list[dict]:
    """Every point of every section of ``plan`` (without seed and budget)."""
    out: list[dict] = []
    s = plan.sample
    if s is not None:
        for d0 in s.d0_values:
            for n in (*s.n_values, 0):  # 0: n = infinity (fresh draws)
                out.append({"section": "sample", "D": s.D, "d0": d0, "n": n, "T0": s.T0, "n_max": max(s.n_values),
                            "quantile": s.memorisation_quantile,
                            **({"plateau_decays": s.plateau_decays} if s.plateau_decays else {})})
    a = plan.approx
    if a is not None:
        for blk in a.blocks:
            for d0 in a.d0_values:
                for D in a.D_values:
                    if d0 > D:
                        continue
                    for K in a.depths:
                        for w in (a.widths if blk == "dit" else (0,)):
                            p = {"section": "approx", "block": blk, "D": D, "d0": d0, "n": 0, "T0": a.T0, "depth": K}
                            if blk == "dit":
                                p["width"] = w
                            else:  # capacity of T^{r,m,l} grows with K, r, m and l together
                                r, m, ell = a.paper
                                p.update(paper_heads=r * K, paper_head_dim=m * K, paper_ff=ell * K)
                            if D != a.D_values[0] and a.paired_seeds is not None:
                                p["seeds"] = list(a.paired_seeds)
                            out.append(p)
    b = plan.blocks
    if b is not None:
        for c in b.coupled:
            for L in b.blocks:
                out.append({"section": "blocks", "D": b.D, "d0": L * b.block_dim, "blocks": L,
                            "block_dim": b.block_dim, "coupled": c, "n": 0, "T0": b.T0})
    t = plan.t0
    if t is not None:
        for T0 in t.T0_values:
            out.append({"section": "t0", "D": t.D, "d0": t.d0, "n": t.n, "T0": T0, "n_max": t.n})
    d = plan.dcheck
    if d is not None:
        for D in d.D_values:
            out.append({"section": "dcheck", "D": D, "d0": d.d0, "n": 0, "T0": d.T0, "exact_encoder": True})
    e = plan.encoder
    if e is not None:
        for D in e.D_values:
            out.append({"section": "encoder", "D": D, "d0": e.d0, "n": 0, "T0": e.T0, "eval_every": e.eval_every})
        for n in e.n_values:
            out.append({"section": "encoder_noisy", "D": e.noisy_D, "d0": e.d0, "n": n, "T0": e.T0, "tau": e.tau,
                        "n_max": max(e.n_values)})
    return out + paper_points(plan)


def section_budget(plan: Plan, section: str) -> Budget:
    """The budget the tasks of ``section`` train with: the section's own, else the plan's. The
    evaluation sizes (``eval_samples``, ``score_points``, ``score_times``) stay the plan's, so
    that the floors of every section are computed at one sample size."""
    own = getattr(getattr(plan, PLAN_FIELDS[section]), "budget", None)
    if own is None:
        return plan.budget
    return replace(own, eval_samples=plan.budget.eval_samples, score_points=plan.budget.score_points,
                   score_times=plan.budget.score_times)


def section_seeds(plan: Plan, section: str) -> tuple[int, ...]:
    """The seeds the tasks of ``section`` run with: the section's own, else the plan's."""
    own = getattr(getattr(plan, PLAN_FIELDS[section]), "seeds", None)
    return tuple(own) if own is not None else tuple(plan.seeds)


def config_key(params: dict) -> str:
    return json.dumps(params, sort_keys=True, separators=(",", ":"))


def tasks(plan: Plan) -> list[dict]:
    """Unique tasks of all sections (one per point and seed of its section, :func:`section_seeds`),
    each with its section's budget (:func:`section_budget`) and the plan's components."""
    seen, out = set(), []
    for p in points(plan):
        b = asdict(section_budget(plan, p["section"]))
        p = dict(p)
        for s in p.pop("seeds", None) or section_seeds(plan, p["section"]):
            c = {**p, "seed": s, "components": plan.components, "budget": b}
            k = config_key(c)
            if k not in seen:
                seen.add(k)
                out.append(c)
    return out


configurations = tasks  # the earlier name
