"""Exports written before the export format carried a version still load, and give the denoiser
and score outputs recorded when they were written (tests/data/export_v0/make_reference.py)."""

import json
import sys
from pathlib import Path

import pytest
import torch

from latentdit.pipeline import from_pretrained

DATA = Path(__file__).parent / "data" / "export_v0"
sys.path.insert(0, str(DATA))
from make_reference import inputs  # noqa: E402

REF = json.loads((DATA / "reference.json").read_text())


@pytest.mark.parametrize("name", ["tiny", "digits"])
def test_old_export_reproduces_recorded_outputs(name):
    model, cfg, meta = from_pretrained(DATA / name)
    x, t, y = inputs(model.ambient_dim, model.num_classes)
    ref = REF[name]
    with torch.no_grad():
        torch.testing.assert_close(model.denoise(x, t, y), torch.tensor(ref["x0_hat"]), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model(x, t, y), torch.tensor(ref["score"]), rtol=1e-4, atol=1e-4)
        if "x0_hat_null" in ref:
            null = torch.full_like(y, model.num_classes)
            torch.testing.assert_close(model.denoise(x, t, null), torch.tensor(ref["x0_hat_null"]),
                                       rtol=1e-5, atol=1e-6)


V12 = Path(__file__).parent / "data" / "export_v12"
REF12 = json.loads((V12 / "reference.json").read_text())
EXPORTS = {"gmm_v1": V12 / "gmm_v1", "digits_v1": V12 / "digits_v1", "digits_v2": V12 / "digits_v2",
           "v0_tiny": DATA / "tiny", "v0_digits": DATA / "digits"}


@pytest.mark.parametrize("name", list(EXPORTS))
def test_exports_of_every_format_reproduce_recorded_outputs_and_samples(name):
    """Formats 0, 1 and 2 (tests/data/export_v12/make_exports.py): the denoiser, the score and
    data-space samples recorded by the code that wrote them."""
    from latentdit.pipeline import LatentDiTPipeline

    pipe = LatentDiTPipeline.from_pretrained(EXPORTS[name])
    model, ref = pipe.model, REF12[name]
    x, t, y = inputs(model.ambient_dim, model.num_classes)
    labels = torch.arange(4) % model.num_classes if model.num_classes > 0 else None
    with torch.no_grad():
        torch.testing.assert_close(model.denoise(x, t, y), torch.tensor(ref["x0_hat"]), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model(x, t, y), torch.tensor(ref["score"]), rtol=1e-4, atol=1e-4)
        got = pipe(4, labels=labels, sampler="ddim", steps=4, seed=0)
    torch.testing.assert_close(got, torch.tensor(ref["samples"]), rtol=1e-4, atol=1e-5)
