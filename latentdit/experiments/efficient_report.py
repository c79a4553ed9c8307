"""What :mod:`latentdit.experiments.efficient` writes: raw rows, loss curves and the merged summary.

``docs/efficient/summary.json`` holds the headline figures of issue-level experiments that run
separately (the ground-truth part, keys ``gt_*``, ``poly_exact_ratio_1024``,
``operator_swap_change``; the video part, keys ``video_*``). :func:`write_summary` merges one
part's keys into the file without touching the other part's: the file's ``provenance`` is that of
the latest writer, and ``provenance_by_part`` keeps every part's own record.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from latentdit.io import atomic_write_json, atomic_write_text, save_figure

ROW_FIELDS = ("model", "tokens", "evaluated_with", "steps", "train_seconds", "t", "mse", "mse_se", "mse_init",
              "mse_over_init", "true_sq_norm", "rel_error")


def loss_curve(run: Path) -> dict:
    """Steps, losses and cumulative training seconds logged in ``run/metrics.jsonl``.

    A run's log lines carry its training clock (:class:`latentdit.train.checkpoint.TrainClock`),
    summed over resumed segments; logs whose time falls back (written before the clock, or resumed
    from a checkpoint that did not record it) are chained segment by segment, so ``seconds`` is the
    training time over all of them, up to the last log line of an interrupted segment."""
    steps, loss, secs = [], [], []
    offset = last = 0.0
    path = run / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        rec = json.loads(line)
        t = rec.get("time", rec.get("train_seconds"))
        if t is None:
            continue
        if t < last:  # a new session
            offset += last
        last = t
        if "loss" in rec:
            steps.append(rec["step"])
            loss.append(rec["loss"])
            secs.append(offset + t)
    return {"step": steps, "loss": loss, "time": secs, "seconds": offset + last}


def plot_loss_curves(out: Path, runs: list[tuple[int, Path]]) -> Path | None:
    """Training loss against step, one panel per length, the runs of that length overlaid
    (``loss_curves.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted({L for L, _ in runs})
    if not lengths:
        return None
    fig, axes = plt.subplots(1, len(lengths), figsize=(5 * len(lengths), 3.6), squeeze=False)
    for ax, L in zip(axes[0], lengths):
        for _, run in [r for r in runs if r[0] == L]:
            c = loss_curve(run)
            if c["step"]:
                ax.plot(c["step"], c["loss"], label=f"{run.name} ({c['seconds']:.0f} s)", lw=1)
        ax.set(title=f"L = {L:,} tokens", xlabel="step", ylabel="training loss (EDM weighting)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out / "loss_curves.png")


def write_rows(out: Path, records: list[dict], provenance: dict) -> None:
    """``rows.csv``: one row per (model, operator, t); ``models.json``: one record per (model, operator)
    with the scalar metrics and the profile (under ``models``), and ``provenance``."""
    init = {r["tokens"]: r["score_profile"]["mse"] for r in records if r["model"] == "f0"}
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=ROW_FIELDS)
    w.writeheader()
    for r in records:
        p = r["score_profile"]
        for i, t in enumerate(p["t"]):
            w.writerow({"model": r["model"], "tokens": r["tokens"], "evaluated_with": r["evaluated_with"],
                        "steps": r.get("steps"), "train_seconds": r.get("train_seconds"), "t": t,
                        "mse": p["mse"][i], "mse_se": p["mse_se"][i], "mse_init": init[r["tokens"]][i],
                        "mse_over_init": r["mse_over_init"][i], "true_sq_norm": p["true_sq_norm"][i],
                        "rel_error": r["score_rel_error_by_t"][i]})
    atomic_write_text(out / "rows.csv", buf.getvalue())
    atomic_write_json(out / "models.json", {"models": records, "provenance": provenance})


def _find(records: list[dict], model: str, tokens: int, evaluated_with: str | None = None) -> dict | None:
    for r in records:
        if r["model"] == model and r["tokens"] == tokens and r["evaluated_with"] == (evaluated_with or model):
            return r
    return None


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _get(r: dict | None, key: str) -> float | None:
    return None if r is None else r.get(key)


def summary_values(records: list[dict], long_tokens: int, short_tokens: int) -> dict:
    """The ground-truth part's headline keys (None where the plan has no such model)."""
    poly, none = _find(records, "poly", long_tokens), _find(records, "none", long_tokens)
    f0 = _find(records, "f0", long_tokens, "none (F = 0)")
    swaps = {}
    for model, other in (("poly", "exact"), ("exact", "poly")):
        for L in (short_tokens, long_tokens):
            own, swapped = _find(records, model, L), _find(records, model, L, other)
            if own is not None and swapped is not None:
                swaps[f"{model}_L{L}_as_{other}"] = abs(swapped["score_integral"] / own["score_integral"] - 1)
    relu, relu_x = _find(records, "relu_linear", long_tokens), _find(records, "relu_linear", long_tokens, "exact")
    return {
        "gt_tokens": long_tokens,
        "gt_score_ratio_vs_no_attention": _ratio(_get(poly, "score_integral"), _get(none, "score_integral")),
        "gt_score_ratio_vs_f0": _ratio(_get(poly, "score_integral"), _get(f0, "score_integral")),
        # a ratio of excesses over the floor means something only when the baseline's is positive
        "gt_w2_excess_ratio_vs_no_attention": (_ratio(_get(poly, "w2_excess"), _get(none, "w2_excess"))
                                               if (_get(none, "w2_excess") or 0) > 0 else None),
        "gt_train_seconds": _get(poly, "train_seconds"),
        "gt_beats_init_every_t": _get(poly, "beats_init_every_t"),
        "poly_exact_ratio_1024": _ratio(_get(_find(records, "poly", short_tokens), "score_integral"),
                                        _get(_find(records, "exact", short_tokens), "score_integral")),
        "operator_swap_change": max(swaps.values()) if swaps else None,
        "operator_swap_changes": swaps,
        "gt_relu_linear_swap_change": (abs(relu_x["score_integral"] / relu["score_integral"] - 1)
                                       if relu is not None and relu_x is not None else None),
    }


BUDGET_KEYS = ("gt_plan", "gt_tokens", "gt_score_ratio_vs_no_attention", "gt_score_ratio_vs_f0",
               "gt_w2_excess_ratio_vs_no_attention", "gt_train_seconds", "gt_beats_init_every_t")


def budget_values(records: list[dict], values: dict, tokens: int) -> dict:
    """The budget plan's summary (docs/efficient/budget_plan.md): the headline keys of
    :func:`summary_values` and the W2 excess at every sampling seed for poly, none and the exact-score
    control, with the poly / none ratio per seed and its mean and standard error."""
    import numpy as np

    poly, none, f0 = (_find(records, "poly", tokens), _find(records, "none", tokens),
                      _find(records, "f0", tokens, "none (F = 0)"))
    by_seed = {"poly": _get(poly, "w2_excess_by_seed") or {}, "none": _get(none, "w2_excess_by_seed") or {},
               "exact_score": _get(f0, "exact_score_w2_excess_by_seed") or {}}
    ratios = {s: by_seed["poly"][s] / by_seed["none"][s] for s in by_seed["poly"]
              if by_seed["none"].get(s, 0) > 0}
    r = np.array(list(ratios.values()), dtype=float)
    return {**values, "gt_plan": "budget", "w2_excess_by_seed": by_seed, "w2_excess_ratio_by_seed": ratios,
            "w2_excess_ratio_mean": float(r.mean()) if r.size else None,
            "w2_excess_ratio_se": float(r.std(ddof=1) / np.sqrt(r.size)) if r.size > 1 else None}


def write_summary(path: Path, part: str, values: dict, provenance: dict) -> Path:
    """Merge ``values`` into the summary JSON at ``path`` (created if absent), with ``provenance`` as
    the file's latest record and under ``provenance_by_part[part]``; other parts' keys are kept."""
    path = Path(path)
    current = json.loads(path.read_text()) if path.exists() else {}
    by_part = dict(current.get("provenance_by_part", {}))
    by_part[part] = provenance
    current.update(values)
    current.update(provenance=provenance, provenance_by_part=by_part)
    return atomic_write_json(path, current)
