"""The rows file of ``latentdit rates``: exact round trips, and the report rebuilt from it alone,
byte for byte (``latentdit rates --report-only``)."""

from __future__ import annotations

import math
import shutil

import pytest

from latentdit.experiments.rates import main, plan_for
from latentdit.experiments.rates.attention_phase import to_rows
from latentdit.experiments.rates.report import build_report
from latentdit.experiments.rates.rows import (plan_from_rows, plan_row, read_rows, rows_text, with_defaults,
                                              write_rows)
from tests.test_rates import synthetic_rows


def test_cells_read_back_exactly(tmp_path):
    rows = [{"section": "sample", "a": 1 / 3, "b": 1e-300, "c": float("nan"), "d": -math.inf, "s1": "1", "s2": "true",
             "s3": "", "s4": "null", "s5": "dit", "l": [0.1, [2, 3]], "m": {"k": [1.5, None]}, "t": True, "z": None},
           {"section": "t0", "only_here": 7}]
    path = write_rows(tmp_path / "rows.csv", rows)
    back = read_rows(path)
    assert math.isnan(back[0].pop("c")) and math.isnan(rows[0].pop("c"))
    assert sorted(back, key=str) == sorted(rows, key=str)  # types too: "1" stays a string, 1/3 its repr digits
    assert "only_here" not in back[0] and "a" not in back[1]  # an empty cell is an absent field
    assert rows_text(read_rows(path)) == path.read_text()


def _attention_rows() -> list[dict]:
    att = {"phase": [{"L": 256, "m": 3, "eps": 1 / 256, "B": 0.5, "B_over_sqrt_log_L": 0.2, "R": 0.75,
                      "affordable_degree": 10, "affordable_rank": 286, "error_bound": 1e-9, "meets_target": True}],
           "break_even": [{"L": 256, "m": 3, "eps": 1 / 256, "sqrt_log_L": 2.35, "B_star": 1.49, "R_star": 6.6,
                           "degree": 11, "rank": 364, "predicted_speedup": 1.19, "B_star_over_sqrt_log_L": 0.63,
                           "c_star": 1.19, "limit": "cost"}],
           "measured": [{"L": 256, "m": 3, "B": 0.47, "B_over_sqrt_log_L": 0.2, "degree": 3, "error_bound": 1e-3,
                         "guaranteed": 1e-3, "measured": 2e-5}],
           "exponents": [{"L": 256, "m": 3, "c": c, "R": c * math.log(256), "degree": g, "rank": math.comb(3 + g, g),
                          "rank_exponent": math.log(math.comb(3 + g, g)) / math.log(256), "capped": None}
                         for c, g in ((0.1, 3), (0.4, 6), (0.8, 9))]}
    return to_rows(att)


def test_plan_line_rebuilds_the_plan():
    for mode in ("full", "quick", "micro"):
        p = plan_for(mode)
        assert plan_from_rows([with_defaults(plan_row(p), mode)]) == p
    with pytest.raises(ValueError, match="records 0 plans"):
        plan_from_rows([])


@pytest.mark.slow
def test_report_only_rebuilds_the_report_byte_for_byte(tmp_path):
    """Rows of the quick plan (known power laws), a failed task and the attention tables: the
    report built with the rows, and the one --report-only builds in another folder from the file
    alone, are the same bytes; neither names a folder of this machine."""
    plan = plan_for("quick")
    timing = {"wall_seconds": 950.0, "tasks_ran": 108, "wall_is_lower_bound": False, "sessions": [
        {"wall_seconds": 700.0, "tasks_ran": 80, "ended": 1.7e9}, {"wall_seconds": 250.0, "tasks_ran": 28}]}
    line = plan_row(plan, {"command": "latentdit rates", "git_commit": "abc"}, timing)
    assert "ended" not in str(line["timing"])  # durations only, no timestamps
    rows = [with_defaults(r, plan.name) for r in [line, *synthetic_rows(plan), *_attention_rows()]]
    rows.append(with_defaults({"section": "t0", "seed": 9, "T0": 0.5, "status": "failed", "error": "ValueError: x"},
                              plan.name))
    a, b = tmp_path / "a", tmp_path / "b"
    write_rows(a / "rows.csv", rows)
    s = build_report(a, read_rows(a / "rows.csv"))
    b.mkdir()
    shutil.copy(a / "rows.csv", b / "rows.csv")
    (b / "report.md").write_text("![old](old_entry.png)\n")  # an earlier report's plot of an entry now gone
    (b / "old_entry.png").write_bytes(b"png")
    (b / "mine.png").write_bytes(b"png")  # not linked by the earlier report: left alone
    assert main(["--out", str(b), "--report-only"]) == 0
    assert not (b / "old_entry.png").exists() and (b / "mine.png").exists()
    for name in ("report.md", "summary.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
        assert str(tmp_path) not in (a / name).read_text()
    text = (a / "report.md").read_text()
    assert s["meta"]["failed"] == 1 and "ValueError: x" in text and s["provenance"]["git_commit"] == "abc"
    assert "950 s against the `quick` plan's target of 900 s: over by 50 s" in text
    assert "Split into 2 driver session(s) on one store: 700 s, 80 tasks; 250 s, 28 tasks." in text
    assert "## Diagnostics (describe training, not the paper)" in text and "| 256 | 3 | 1.49 |" in text
    assert (a / "attention_phase.png").stat().st_size > 1000
    from latentdit.errors import ConfigError

    with pytest.raises(ConfigError, match="no rows file"):
        main(["--out", str(tmp_path / "empty"), "--report-only"])


def test_stop_reason_from_the_training_record():
    from latentdit.experiments.rates.rows import stop_reason

    assert stop_reason({"converged": True}) == "patience"
    assert stop_reason({"converged": True, "plateau_decays": 2}) == "plateau"
    assert stop_reason({"converged": False, "plateau_decays": 2}) == "step cap"
    assert stop_reason({"section": "attention"}) is None and stop_reason({"stop_reason": "x"}) == "x"
