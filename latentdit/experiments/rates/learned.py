"""Report entries of the version-2 sections, built from whatever rows exist (none: no entry; the
headline keys of :mod:`~latentdit.experiments.rates.headline` then say "absent"):

- ``learned`` (Thm 3.2 with the paper's estimator, a learned W_B): per D and d0,
  ``estimation_learned_D{D}_d0_{d0}``: the score-error integral against n with the model-based fit
  y = a + b n^-p (predicted p >= 1/3), the plateau ERM and the reference scores (memoriser, kernel
  density, EM mixture) on the raw axes; ``distribution_recovery_D{D}_d0_{d0}``: the latent W2
  excess against n (predicted p >= 1/6, the sqrt(xi) of Cor. 3.2.1 (ii)), with TV excess,
  memorisation fraction, subspace error and the exact-score sampler as columns;
- ``fstar`` (Thm 3.1, regression on f*): ``approximation_fstar``, eps_hat sqrt(d0) against d0 at
  growing capacity (slope <= 1/2), and per d0 ``fstar_capacity_d0_{d0}``, eps_hat against
  parameters next to the F = 0 network (a check: the classes are nested).

Field names: :data:`latentdit.experiments.rates.preregistration.ROW_FIELDS`.
"""

from __future__ import annotations

import math

from latentdit.experiments.rates.claims import _curve, _entry, power_entry
from latentdit.experiments.rates.headline import curve_converged, learned_rows, scale

REFERENCES = {"erm_score_integral": "memoriser (closed-form ERM)", "kde_score_integral": "kernel density score",
              "em_score_integral": "EM-fitted mixture score"}
RECOVERY_COLUMNS = ("tv_excess", "memorisation_fraction", "subspace_error", "exact_w2_excess")


def _means(rs: list[dict], key: str) -> list[list[float]]:
    return [[x, m] for x, m, _ in _curve([(r["seed"], r["n"], r.get(key)) for r in rs])]


def _twins(rows: list[dict], D: int, d0: int) -> list[dict]:
    return [r for r in rows if r.get("section") == "learned" and scale(r) == 2 and r.get("D") == D
            and r.get("d0") == d0 and r.get("selection", "holdout") == "holdout"]


def _learned(rows: list[dict], out: dict) -> None:
    hold, plateau = learned_rows(rows, "holdout"), learned_rows(rows, "plateau")
    for D in sorted({r["D"] for r in hold}):
        for d0 in sorted({r["d0"] for r in hold if r["D"] == D}):
            rs = [r for r in hold if (r["D"], r["d0"]) == (D, d0) and r["n"] > 0]
            pl = [r for r in plateau if (r["D"], r["d0"]) == (D, d0) and r["n"] > 0]
            conv = curve_converged(rs, _twins(rows, D, d0), lambda r: r["n"], lambda r: r.get("score_integral"))
            tr = [(r["seed"], r["n"], r["score_integral"]) for r in rs]
            raw = {"held-out selection": _means(rs, "score_integral"), "plateau ERM (in-class)": _means(pl, "score_integral")}
            raw.update({label: _means(rs, k) for k, label in REFERENCES.items() if any(k in r for r in rs)})
            e = _entry("claim", f"Estimation with a learned W_B (D = {D}, d0 = {d0})", "Thm 3.2",
                       "(1/T) int E||s - grad log p_t||^2 dt of the paper's estimator decays at least like n^(-1/3) "
                       "above a floor", "learned", "n", "score_integral", tr, -1 / 3, converged=conv)
            out[f"estimation_learned_D{D}_d0_{d0}"] = power_entry(e, tr, 1 / 3, raw, "score_integral")
            w = [(r["seed"], r["n"], r.get("w2_excess")) for r in rs if r.get("w2_excess") is not None]
            if not w:
                continue
            e = _entry("claim", f"Distribution recovery against n (D = {D}, d0 = {d0})", "Cor. 3.2.1 (ii)",
                       "latent W2 of generated samples over its true-vs-true floor falls with n (read against the "
                       "n^(-1/6) of the TV bound)", "learned", "n", "w2_excess", w, -1 / 6, converged=conv)
            e = power_entry(e, w, 1 / 6, {"W2 excess": _means(rs, "w2_excess"),
                                          "exact-score sampler W2 excess": _means(rs, "exact_w2_excess")},
                            "W2 excess")
            e["columns"] = {k: _means(rs, k) for k in RECOVERY_COLUMNS}
            out[f"distribution_recovery_D{D}_d0_{d0}"] = e


def _fstar(rows: list[dict], out: dict) -> None:
    fs = [r for r in rows if r.get("section") == "fstar" and r.get("score_uniform") is not None]
    base = [r for r in fs if scale(r) == 1]
    grow = [r for r in base if r.get("capacity_rule") == "grow" and not r.get("zero_network")]
    if grow:
        zero = [r for r in base if r.get("zero_network")]
        out["approximation_fstar"] = _entry(
            "claim", "Approximation at growing capacity against d0 (regression on f*)", "Thm 3.1",
            "max_t sigma(t) ||s - grad log p_t|| = eps_hat sqrt(d0) grows at most like sqrt(d0)", "fstar", "d0",
            "eps_hat sqrt(d0)", [(r["seed"], r["d0"], r["score_uniform"] * math.sqrt(r["d0"])) for r in grow], 0.5,
            converged=curve_converged(grow, [r for r in fs if scale(r) == 2 and r.get("capacity_rule") == "grow"],
                                      lambda r: r["d0"], lambda r: r["score_uniform"]),
            reference={"F = 0 network": [[x, m] for x, m, _ in _curve(
                [(r["seed"], r["d0"], r["score_uniform"] * math.sqrt(r["d0"])) for r in zero])]})
    fixed = [r for r in base if r.get("capacity_rule", "fixed") == "fixed" and not r.get("zero_network")]
    for d0 in sorted({r["d0"] for r in fixed}):
        rs = [r for r in fixed if r["d0"] == d0]
        zero = [r["score_uniform"] for r in base if r.get("zero_network") and r["d0"] == d0]
        xs = sorted({r["params"] for r in rs})
        ref = {"F = 0 network": [[x, sum(zero) / len(zero)] for x in xs]} if zero else {}
        out[f"fstar_capacity_d0_{d0}"] = _entry(
            "check", f"Regression on f*: eps_hat against capacity (d0 = {d0})", "Thm 3.1",
            "eps_hat does not grow with capacity", "fstar", "parameters", "eps_hat",
            [(r["seed"], r["params"], r["score_uniform"]) for r in rs], 0.0,
            converged=curve_converged(rs, [r for r in fs if scale(r) == 2 and r["d0"] == d0 and
                                           r.get("capacity_rule", "fixed") == "fixed"],
                                      lambda r: r["params"], lambda r: r["score_uniform"]), reference=ref)


def learned_entries(rows: list[dict]) -> dict:
    """The entries of the module docstring present in ``rows``."""
    out: dict = {}
    _learned(rows, out)
    _fstar(rows, out)
    return out
