"""``latentdit bench dit``: its fitting helpers against closed forms and a seconds-long run."""

from __future__ import annotations

import json

import pytest

from latentdit.bench.dit import _extrapolate, fit_exponent, main


def test_fit_exponent_recovers_a_power_law():
    Ls = [64, 256, 1024, 4096]
    assert fit_exponent(Ls, [3e-7 * L ** 1.5 for L in Ls]) == pytest.approx(1.5, rel=1e-12)


def test_extrapolation_is_exact_for_a_linear_plus_quadratic_law():
    law = lambda L: 2e-4 * L + 5e-9 * L * L  # noqa: E731
    rows = [{"L": L, "median_s": {"exact_fwd": law(L)}} for L in (1024, 4096)]
    assert _extrapolate(rows, "exact_fwd", 16384) == pytest.approx(law(16384), rel=1e-9)


def test_quick_run_writes_the_report(tmp_path, capsys):
    """Three tiny lengths, exact measured on the first two and extrapolated on the third: the JSON
    has the headline keys, the load averages and the command; poly's output error against exact
    with the same weights is far below the certified 1e-3 (the attention branch is a part of it)."""
    out = tmp_path / "dit.json"
    assert main(["--quick", "--lengths", "16", "32", "48", "--exact-max-len", "32", "--repeats", "1",
                 "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    for key in ("speedup_forward_32", "speedup_train_32", "exponent_poly_train", "rel_error_forward_32"):
        assert key in r
    for key in ("loadavg_before", "loadavg_after", "command", "threads", "git_commit"):
        assert r["provenance"][key] is not None, key
    assert 0 < r["rel_error_forward_32"] < 1e-3
    last = r["lengths"][-1]
    assert last["extrapolated"] and "exact_fwd" not in last["median_s"]
    assert last["planned_poly"] == {"poly": 1} and last["certificate"]["certified"]
    assert out.with_suffix(".png").stat().st_size > 0
