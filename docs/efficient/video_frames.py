"""A figure of sampled clips: one row per clip, every k-th frame, the conditioned class on the left.

    python docs/efficient/video_frames.py RUN_OUT/samples.npz --out docs/efficient/video_v3/R1_frames.png

RUN_OUT is the ``--out`` of ``python -m latentdit.experiments.video`` (its ``samples.npz`` holds the
clips ``x`` in [0, 1] and their ``labels``). Rows are the first clip of each of ``--rows`` classes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("npz", type=Path, help="samples.npz of a video run")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rows", type=int, default=6, help="clips (one per class, classes in order)")
    ap.add_argument("--cols", type=int, default=9, help="frames per clip, evenly spaced from the first to the last")
    a = ap.parse_args(argv)
    if not a.npz.is_file():
        raise SystemExit(f"{a.npz}: no such file (the samples.npz of a video run)")
    d = np.load(a.npz)
    x, y = d["x"], d["labels"]
    first = [int(np.flatnonzero(y == c)[0]) for c in sorted(set(y.tolist()))][: a.rows]
    frames = np.linspace(0, x.shape[1] - 1, a.cols).round().astype(int)
    fig, axes = plt.subplots(len(first), len(frames), figsize=(1.1 * len(frames), 1.15 * len(first)), squeeze=False)
    for i, c in enumerate(first):
        for j, f in enumerate(frames):
            ax = axes[i][j]
            ax.imshow(np.clip(x[c, f], 0, 1), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(f"frame {f}", fontsize=8)
            if j == 0:
                ax.set_ylabel(f"class {int(y[c])}", fontsize=8)
    fig.tight_layout()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out, dpi=100)
    print(a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
