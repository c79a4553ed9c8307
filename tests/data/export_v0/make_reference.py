"""Records the reference outputs stored beside the two exports in this folder.

The exports were written by `latentdit train` (configs/tiny.toml for 10 steps; and the same on
`digits`, class-conditional, d0 = 16, diagonal preconditioning) before the export format carried a
version. This script, run with the code of that time, evaluated each model on fixed inputs and
wrote reference.json; tests/test_export_compat.py checks that today's loader reproduces the values.

    python tests/data/export_v0/make_reference.py
"""

import json
from pathlib import Path

import torch

HERE = Path(__file__).parent


def inputs(D: int, num_classes: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, D, generator=g)
    t = torch.tensor([1e-3, 0.01, 0.1, 0.5, 2.0, 9.0])
    y = torch.arange(6) % num_classes if num_classes > 0 else None
    return x, t, y


def main() -> None:
    from latentdit.pipeline import from_pretrained  # the loader of that time

    ref = {}
    for name in ("tiny", "digits"):
        model, cfg, meta = from_pretrained(HERE / name)
        x, t, y = inputs(model.ambient_dim, model.num_classes)
        with torch.no_grad():
            ref[name] = {"x0_hat": model.denoise(x, t, y).tolist(), "score": model(x, t, y).tolist()}
            if y is not None:  # the null class, the unconditional model
                null = torch.full_like(y, model.num_classes)
                ref[name]["x0_hat_null"] = model.denoise(x, t, null).tolist()
    (HERE / "reference.json").write_text(json.dumps(ref) + "\n")


if __name__ == "__main__":
    main()
