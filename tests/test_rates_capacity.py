"""`latentdit rates`: the capacity sweep's comparison of its D curves (paired by seed)."""

from __future__ import annotations

import math

import pytest

from latentdit.experiments.rates import plan_for


def test_capacity_mismatch_is_paired_by_seed_and_scaled_by_the_seed_noise():
    """The D gap of the capacity curves, compared on the seeds both D have, relative to their mean
    and in standard errors of the reference (first D) curve: D = 32 scores 1, 2, 3 (SE 1/sqrt(3))
    and D = 2048 scores 2, 3, 4: gap 1 = 1/2.5 of the mean and sqrt(3) standard errors. With D = 2048
    run at seed 0 only (score 1.1), the comparison is seed 0's pair: 0.1/1.05 and 0.1 sqrt(3)."""
    from dataclasses import replace

    from latentdit.experiments.rates.claims import _approx

    plan = plan_for("micro")
    plan = replace(plan, approx=replace(plan.approx, blocks=("dit",), d0_values=(4,), D_values=(32, 2048)))

    def rows(vals):
        return [{"section": "approx", "block": "dit", "d0": 4, "D": D, "seed": s, "params": 100, "converged": True,
                 "score_uniform": float(v)} for D, vs in vals for s, v in enumerate(vs)]

    out, top = {}, {}
    _approx(rows(((32, (1, 2, 3)), (2048, (2, 3, 4)))), plan, out, top)
    assert top["capacity_D_mismatch_max"] == pytest.approx(0.4, rel=1e-12)
    assert top["capacity_D_mismatch_se"] == pytest.approx(math.sqrt(3), rel=1e-12)
    assert out["approximation_dit_d0_4"]["reference"] == {"D=2048, seeds [0, 1, 2]": [[100, 3.0]]}
    _approx(rows(((32, (1, 2, 3)), (2048, (1.1,)))), plan, out, top)
    assert top["capacity_D_mismatch_max"] == pytest.approx(0.1 / 1.05, rel=1e-12)
    assert top["capacity_D_mismatch_se"] == pytest.approx(0.1 * math.sqrt(3), rel=1e-9)
    # the reference curves put the paired runs side by side: D = 32 at seed 0 next to D = 2048 at seed 0
    ref = out["approximation_dit_d0_4"]["reference"]
    assert ref == {"D=32, seeds [0]": [[100, 1.0]], "D=2048, seeds [0]": [[100, 1.1]]}
