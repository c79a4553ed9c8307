"""The plan sections that measure the theorems with the paper's own estimators (run by :mod:`~.paper_tasks`).

- ``fstar`` (:class:`FstarSection`): Thm 3.1 as stated;
- ``estimation`` (:class:`EstimationSection`): Thm 3.2 and Cor. 3.2.1 with a learned W_B; each seed
  draws its own law (``law = "random"``), and its :class:`FixedLaw` replicate trains on one law
  again and again (``law = "fixed"``).

Their points join those of :func:`latentdit.experiments.rates.plan.points`; sizes per mode are in
:func:`latentdit.experiments.rates.plan.plan_for`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from latentdit.experiments.rates.plan import Budget


@dataclass(frozen=True)
class FstarSection:
    """Thm 3.1 as stated: the network regressed on the closed-form f* (no label noise), W_B = B, n = inf,
    to a plateau (reduce-on-plateau) and again at twice the budget; eps_hat against capacity per d0 and,
    along the diagonal width = d0_width(d0), against d0 (:mod:`~.paper_tasks`)."""

    d0_values: tuple[int, ...] = (2, 4, 16, 64)  # 1.5 decades, 4 points (the verdict's minimum)
    D: int = 128
    widths: tuple[int, ...] = (8, 16, 32, 64)  # DiT widths at fixed depth: ~1.8 decades of parameters
    depth: int = 2
    base_width: int = 16  # the d0 curve: width base_width sqrt(d0 / base_d0), parameters ~ d0
    base_d0: int = 4
    width_multiple: int = 4  # d0_width rounds to a multiple of this (the heads of the budget)
    T0: float = 1e-3
    plateau_decays: int = 2
    schedule: str = "constant"  # the LR after warmup: constant (reduce-on-plateau only) | cosine over the cap
    budget: Budget | None = None
    seeds: tuple[int, ...] | None = None

    def d0_width(self, d0: int) -> int:
        """The width of the d0 curve at ``d0`` (capacity growing linearly with d0, like the token count),
        rounded to a multiple of ``width_multiple``: 12, 16, 32, 64 at d0 = 2, 4, 16, 64."""
        m = self.width_multiple
        return max(m, m * int(round(self.base_width * (d0 / self.base_d0) ** 0.5 / m)))

    def widths_at(self, d0: int) -> tuple[int, ...]:
        """The capacity sweep at ``d0``: ``widths`` with the d0 curve's width added."""
        return tuple(sorted({*self.widths, self.d0_width(d0)}))


@dataclass(frozen=True)
class FixedLaw:
    """One law replicated: the law of ``law_seed`` at (``D``, ``d0``), trained with the held-out
    selection and the unweighted loss once per replicate seed; a replicate seed sets the data draw,
    the held-out split, the network initialisation and the SGD noise, not the law. The replicate seeds
    are disjoint from the section's seeds, so no replicate shares a random stream with a random-law
    run. Their spread at each n is the estimation noise of one problem; the section's seed spread
    adds the variety of the problems (:mod:`~.fixed_law`)."""

    law_seed: int = 0
    replicates: tuple[int, ...] = (10, 11, 12)
    D: int = 32
    d0: int = 4
    n_values: tuple[int, ...] = (16, 64, 256, 1024, 4096)


@dataclass(frozen=True)
class EstimationSection:
    """Thm 3.2 / Cor. 3.2.1 with the paper's estimator: learned W_B (random init, trained jointly), the
    unweighted loss, checkpoints chosen on a held-out fifth of the n points (``heldout``) or none: run
    to a plateau of the empirical risk (``erm``); n = 0 is the population run. References and
    distribution recovery per row (:mod:`~.paper_tasks`). ``fixed_law``: the replicate of one law
    (None: none)."""

    D_values: tuple[int, ...] = (32, 2048)
    d0_values: tuple[int, ...] = (2, 4, 8)
    n_values: tuple[int, ...] = (16, 64, 256, 1024, 4096)
    stops: tuple[str, ...] = ("heldout", "erm")
    erm_d0_values: tuple[int, ...] | None = None  # the d0 with an ``erm`` run (None: every d0)
    weightings: tuple[str, ...] = ("none",)
    heldout_fraction: float = 0.2
    T0: float = 1e-3
    plateau_decays: int = 2
    memorisation_quantile: float = 0.1
    budget: Budget | None = None
    seeds: tuple[int, ...] | None = None
    fixed_law: FixedLaw | None = None


def paper_points(plan) -> list[dict]:
    """The points of the sections ``fstar`` and ``estimation`` (the fixed-law points with their
    replicate seeds as ``seeds`` and ``law = "fixed"``, ``law_seed``: keys no random-law task has)."""
    out: list[dict] = []
    f = plan.fstar
    if f is not None:
        for d0 in f.d0_values:
            for w in f.widths_at(d0):
                out.append({"section": "fstar", "D": f.D, "d0": d0, "n": 0, "T0": f.T0, "depth": f.depth, "width": w,
                            "exact_encoder": True, "plateau_decays": f.plateau_decays,
                            **({"schedule": f.schedule} if f.schedule != "constant" else {})})
    e = plan.estimation
    if e is not None:
        for wt in e.weightings:
            for d0 in e.d0_values:
                for D in e.D_values:
                    stops = [s for s in e.stops if s != "erm" or e.erm_d0_values is None or d0 in e.erm_d0_values]
                    runs = [(n, s) for n in e.n_values for s in stops] + [(0, "population")]
                    for n, stop in runs:
                        out.append({"section": "estimation", "D": D, "d0": d0, "n": n, "T0": e.T0, "stop": stop,
                                    "weighting": wt, "n_max": max(e.n_values), "heldout_fraction": e.heldout_fraction,
                                    "plateau_decays": e.plateau_decays, "quantile": e.memorisation_quantile})
        f = e.fixed_law
        for n in (f.n_values if f is not None else ()):
            out.append({"section": "estimation", "D": f.D, "d0": f.d0, "n": n, "T0": e.T0, "stop": "heldout",
                        "weighting": "none", "n_max": max(f.n_values), "heldout_fraction": e.heldout_fraction,
                        "plateau_decays": e.plateau_decays, "quantile": e.memorisation_quantile, "law": "fixed",
                        "law_seed": f.law_seed, "seeds": list(f.replicates)})
    return out
