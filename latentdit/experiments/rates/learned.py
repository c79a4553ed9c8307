"""Report entries of the version-2 sections, built from whatever rows exist (none: no entry; the
headline keys of :mod:`~latentdit.experiments.rates.headline` then say "absent"):

- ``estimation`` (Thm 3.2 with the paper's estimator, a learned W_B): per D and d0,
  ``estimation_learned_D{D}_d0_{d0}``: the score-error integral against n with the model-based fit
  y = a + b n^-p (predicted p >= 1/3) for the held-out checkpoint selection, the in-class ERM run to
  a plateau and the reference scores (memoriser, kernel density, EM mixture) on the raw axes;
  ``distribution_recovery_D{D}_d0_{d0}``: the latent W2 excess against n (predicted p >= 1/6, the
  sqrt(xi) of Cor. 3.2.1 (ii), read on W2), with the classifier TV bound, the memorisation fraction,
  the subspace error and the exact-score sampler's values as columns; next to the first, where the
  section has a fixed-law replicate there, ``estimation_fixed_law_D{D}_d0_{d0}``
  (:mod:`~latentdit.experiments.rates.fixed_law`);
- ``fstar`` (Thm 3.1, regression on f*): ``approximation_fstar``, eps_hat sqrt(d0) against d0 on the
  d0 curve (slope <= 1/2), and per d0 ``fstar_capacity_d0_{d0}``, eps_hat against parameters next
  to the F = 0 network with the Def. 3.2 norms as columns (a check: the classes are nested).
  Convergence: the twice-the-budget run of each row (``eps_hat_2x``) against one seed SE.

Field names: :data:`latentdit.experiments.rates.preregistration.ROW_FIELDS`.
"""

from __future__ import annotations

import math

from latentdit.experiments.rates.entries import _curve, _entry, power_entry
from latentdit.experiments.rates.fixed_law import fixed_law_entry
from latentdit.experiments.rates.headline import (curve_converged, doubled_twins, eps_hat, fstar_curve, learned_rows,
                                                  scale)

REFERENCES = {"erm_score_integral": "memoriser (closed-form ERM)", "kde_score_integral": "kernel density score",
              "em_score_integral": "EM-fitted mixture score"}
RECOVERY_COLUMNS = ("tv_classifier", "tv_classifier_floor", "tv_classifier_control", "memorisation_fraction",
                    "memorisation_fraction_control", "subspace_error", "control_dpm2m_w2_excess")


def _means(rs: list[dict], key: str) -> list[list[float]]:
    return [[x, m] for x, m, _ in _curve([(r["seed"], r["n"], r.get(key)) for r in rs])]


def _twins(rows: list[dict], D: int, d0: int) -> list[dict]:
    return [r for r in rows if r.get("section") == "estimation" and scale(r) == 2 and r.get("D") == D
            and r.get("d0") == d0 and r.get("stop", "heldout") == "heldout" and r.get("law", "random") == "random"]


def _learned(rows: list[dict], out: dict) -> None:
    hold, plateau = learned_rows(rows, "heldout"), learned_rows(rows, "erm")
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
                       "above a floor", "estimation", "n", "score_integral", tr, -1 / 3, converged=conv)
            out[f"estimation_learned_D{D}_d0_{d0}"] = power_entry(e, tr, 1 / 3, raw, "score_integral")
            _fixed(rows, D, d0, out)  # the replicates of one law, next to the random-law curve
            w = [(r["seed"], r["n"], r.get("w2_excess")) for r in rs if r.get("w2_excess") is not None]
            if not w:
                continue
            e = _entry("claim", f"Distribution recovery against n (D = {D}, d0 = {d0})", "Cor. 3.2.1 (ii)",
                       "latent W2 of generated samples over its true-vs-true floor falls with n (read against the "
                       "n^(-1/6) of the TV bound)", "estimation", "n", "w2_excess", w, -1 / 6, converged=conv)
            e = power_entry(e, w, 1 / 6, {"W2 excess": _means(rs, "w2_excess"),
                                          "exact-score sampler W2 excess": _means(rs, "control_dpm2m_w2_excess")},
                            "W2 excess")
            e["columns"] = {k: _means(rs, k) for k in RECOVERY_COLUMNS}
            out[f"distribution_recovery_D{D}_d0_{d0}"] = e
    for D, d0 in sorted({(r["D"], r["d0"]) for r in learned_rows(rows, law="fixed")}):
        _fixed(rows, D, d0, out)  # a fixed law without random-law rows at its D and d0


def _fixed(rows: list[dict], D: int, d0: int, out: dict) -> None:
    key = f"estimation_fixed_law_D{D}_d0_{d0}"
    e = None if key in out else fixed_law_entry(rows, D, d0)
    if e is not None:
        out[key] = e


def _fstar(rows: list[dict], plan, out: dict) -> None:
    base = [r for r in rows if r.get("section") == "fstar" and scale(r) == 1
            and r.get("eps_hat", r.get("score_uniform")) is not None]
    grow = fstar_curve(rows, plan)
    if grow:
        tr = [(r["seed"], r["d0"], eps_hat(r) * math.sqrt(r["d0"])) for r in grow]
        zero = [(r["seed"], r["d0"], r["eps_hat_F0"] * math.sqrt(r["d0"])) for r in grow if r.get("eps_hat_F0")]
        out["approximation_fstar"] = _entry(
            "claim", "Approximation at growing capacity against d0 (regression on f*)", "Thm 3.1",
            "max_t sigma(t) ||s - grad log p_t|| = eps_hat sqrt(d0) grows at most like sqrt(d0)", "fstar", "d0",
            "eps_hat sqrt(d0)", tr, 0.5,
            converged=curve_converged(grow, doubled_twins(grow), lambda r: r["d0"], eps_hat),
            reference={"F = 0 network": [[x, m] for x, m, _ in _curve(zero)]} if zero else {})
    for d0 in sorted({r["d0"] for r in base}):
        rs = [r for r in base if r["d0"] == d0]
        zero = [(r["seed"], r["params"], r["eps_hat_F0"]) for r in rs if r.get("eps_hat_F0") is not None]
        e = _entry(
            "check", f"Regression on f*: eps_hat against capacity (d0 = {d0})", "Thm 3.1",
            "eps_hat does not grow with capacity", "fstar", "parameters", "eps_hat",
            [(r["seed"], r["params"], eps_hat(r)) for r in rs], 0.0,
            converged=curve_converged(rs, doubled_twins(rs), lambda r: r["params"], eps_hat),
            reference={"F = 0 network": [[x, m] for x, m, _ in _curve(zero)]} if zero else {})
        norms = sorted({k for r in rs for k in r if k.startswith("norm_")})
        e["columns"] = {k: [[x, m] for x, m, _ in _curve([(r["seed"], r["params"], r.get(k)) for r in rs])]
                        for k in norms}
        out[f"fstar_capacity_d0_{d0}"] = e


def learned_entries(rows: list[dict], plan=None) -> dict:
    """The entries of the module docstring present in ``rows`` (``plan``: for the d0 curve of fstar)."""
    out: dict = {}
    _learned(rows, out)
    _fstar(rows, plan, out)
    return out
