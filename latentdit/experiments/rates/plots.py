"""One PNG per entry of the rates report (:func:`plot_entry`).

Panels, left to right, each only when the entry has it:

1. the measured quantity ``points`` (mean and standard error per x; an excess when the entry
   measures one), with the predicted exponent and the fitted per-seed slope drawn over the fitted
   x range only (``fit_range``);
2. raw quantities (``raw``: e.g. the score integral at each n, its n = inf value, the reference
   estimators), never on the axes of an excess, with the power-plus-floor fit ``power_fit`` over
   its fitted range;
3. the per-t score-error profiles (``profiles``).

Every curve of a panel has its own colour (a qualitative palette of 20, then a sequential one).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from latentdit.io import save_figure


def colours(k: int) -> list:
    """``k`` distinct colours: tab20 (distinct hues) up to 20, else evenly spaced viridis."""
    import matplotlib

    if k <= 10:
        return [matplotlib.colormaps["tab10"](i) for i in range(k)]
    if k <= 20:
        return [matplotlib.colormaps["tab20"](i) for i in range(k)]
    return [matplotlib.colormaps["viridis"](i / max(k - 1, 1)) for i in range(k)]


def positive(xs, ys, es=None):
    """The points with positive finite x and y (log axes), as float arrays (``es`` alongside)."""
    keep = [i for i, (x, y) in enumerate(zip(xs, ys))
            if x is not None and y is not None and x > 0 and y > 0 and math.isfinite(y)]
    pick = lambda a: np.array([a[i] for i in keep], float) if a is not None else None  # noqa: E731
    return pick(xs), pick(ys), pick([0.0 if v is None else v for v in es]) if es is not None else None


def _guides(ax, e: dict, xs, ys) -> None:
    """Predicted and fitted slopes through the fitted points' geometric centre, over their range."""
    lo, hi = (e.get("fit_range") or [None, None])[:2]
    sel = [(x, y) for x, y in zip(xs, ys) if lo is not None and lo <= x <= hi]
    if len(sel) < 2:
        return
    fx, fy = np.array(sel).T
    gx, gy = math.exp(np.mean(np.log(fx))), math.exp(np.mean(np.log(fy)))
    grid = np.geomspace(fx.min(), fx.max(), 50)
    for slope, style, label in ((e.get("predicted"), "k--", "predicted slope"), (e.get("slope"), "k:", "fitted slope")):
        if slope is not None and math.isfinite(slope):
            ax.plot(grid, gy * (grid / gx) ** slope, style, lw=1, label=f"{label} {slope:+.3g} (fitted range)")


def _curves(ax, curves: dict, start: int = 0, total: int | None = None) -> None:
    cs = colours(total or len(curves))
    for i, (label, curve) in enumerate(curves.items()):
        rx, ry, _ = positive([c[0] for c in curve], [c[1] for c in curve])
        if rx is not None and len(rx):
            ax.plot(rx, ry, "s-.", color=cs[start + i], ms=3, label=label)


def _loglog(ax, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6)


def _raw_panel(ax, e: dict) -> None:
    raw = e.get("raw") or {}
    _curves(ax, raw)
    f = e.get("power_fit") or {}
    if f.get("p") is not None and math.isfinite(f.get("p", math.nan)) and f.get("x_range"):
        g = np.geomspace(*f["x_range"], 60)
        ax.plot(g, f["a"] + f["b"] * g ** (-f["p"]), "k-", lw=1,
                label=f"a + b x^-p, p = {f['p']:.3g} [{f['p_ci'][0]:.3g}, {f['p_ci'][1]:.3g}]")
        ax.axhline(f["a"], color="0.5", lw=0.6, ls=":")
    _loglog(ax, e.get("x", "x"), e.get("raw_y", "raw quantity"), "raw quantities (same seeds)")


def plot_entry(key: str, e: dict, path: Path) -> bool:
    """Draw ``e`` to ``path`` (panels of the module docstring); False if nothing positive to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = e.get("points") or []
    xs, ys, se = positive([p[0] for p in pts], [p[1] for p in pts], [p[2] if len(p) > 2 else 0.0 for p in pts])
    if xs is None or not len(xs):
        return False
    panels = ["main"] + (["raw"] if e.get("raw") else []) + (["profiles"] if e.get("profiles") else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
    ax = axes[0][0]
    lo_err = np.minimum(se, ys * 0.999)  # keep the lower bar above zero on a log axis
    refs = e.get("reference") or {}
    cs = colours(1 + len(refs))
    ax.errorbar(xs, ys, yerr=[lo_err, se], fmt="o-", color=cs[0], capsize=3, label="measured (mean, SE)")
    _curves(ax, refs, start=1, total=1 + len(refs))
    _guides(ax, e, xs, ys)
    _loglog(ax, e.get("x", "x"), e.get("y", "y"), e.get("title", key))
    if "raw" in panels:
        _raw_panel(axes[0][panels.index("raw")], e)
    if "profiles" in panels:
        pa = axes[0][panels.index("profiles")]
        prof = {k: [[t, m] for t, m in zip(p.get("t", []), p.get("mse", []))] for k, p in e["profiles"].items()}
        _curves(pa, prof)
        _loglog(pa, "t", "E||s - grad log p_t||^2", "per-t score error")
    save_figure(fig, path, dpi=110)
    return True
