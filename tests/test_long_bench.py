"""``latentdit bench dit``: its fitting helpers against closed forms and a seconds-long run."""

from __future__ import annotations

import json

import pytest

from latentdit.bench.dit import _extrapolate, fit_exponent, main


def test_fit_exponent_recovers_a_power_law():
    Ls = [64, 256, 1024, 4096]
    assert fit_exponent(Ls, [3e-7 * L ** 1.5 for L in Ls]) == pytest.approx(1.5, rel=1e-12)


def test_extrapolation_is_exact_for_a_power_law():
    law = lambda L: 4e-8 * L ** 1.74  # noqa: E731
    rows = [{"L": L, "median_s": {"exact_fwd": law(L)}} for L in (1024, 4096, 16384)]
    assert _extrapolate(rows, "exact_fwd", 65536) == pytest.approx(law(65536), rel=1e-9)


def test_extrapolation_underestimates_a_linear_plus_quadratic_law():
    """Exact attention's time a L + b L^2 steepens with L, so the power law fitted below L_max
    gives less than the true time above it (a conservative speed-up), by a bounded factor."""
    law = lambda L: 2e-4 * L + 5e-9 * L * L  # noqa: E731
    rows = [{"L": L, "median_s": {"exact_fwd": law(L)}} for L in (1024, 4096, 16384)]
    got, true = _extrapolate(rows, "exact_fwd", 65536), law(65536)
    assert 0.5 * true < got < true


@pytest.mark.slow
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
    assert last["exact_extrapolation"]["from_lengths"] == [16, 32]
    assert last["planned_poly"] == {"poly": 1} and last["certificate"]["certified"]
    assert out.with_suffix(".png").stat().st_size > 0


@pytest.mark.slow
def test_exact_once_times_exact_above_the_max_length(tmp_path):
    """--exact-once: above --exact-max-len exact is timed (once per operation), not extrapolated,
    and the exponent of exact training uses that length too."""
    out = tmp_path / "dit.json"
    assert main(["--quick", "--lengths", "16", "32", "48", "--exact-max-len", "32", "--repeats", "1",
                 "--exact-once", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    last = r["lengths"][-1]
    assert last["exact_measured_once"] and not last.get("extrapolated", False)
    assert last["median_s"]["exact_fwd"] > 0 and last["times_s"]["exact_train"] == [last["median_s"]["exact_train"]]
    assert "exact_extrapolated_s" not in last and r["speedup_train_48"] > 0
