"""Exports written before the export format carried a version still load, and give the denoiser
and score outputs recorded when they were written (tests/data/export_v0/make_reference.py)."""

import json
import sys
from pathlib import Path

import pytest
import torch

from latentdit.pipeline import LatentDiTPipeline

DATA = Path(__file__).parent / "data" / "export_v0"
sys.path.insert(0, str(DATA))
from make_reference import inputs  # noqa: E402

REF = json.loads((DATA / "reference.json").read_text())


@pytest.mark.parametrize("name", ["tiny", "digits"])
def test_old_export_reproduces_recorded_outputs(name):
    model = LatentDiTPipeline.from_pretrained(DATA / name).model
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
    pipe = LatentDiTPipeline.from_pretrained(EXPORTS[name])
    model, ref = pipe.model, REF12[name]
    x, t, y = inputs(model.ambient_dim, model.num_classes)
    labels = torch.arange(4) % model.num_classes if model.num_classes > 0 else None
    with torch.no_grad():
        torch.testing.assert_close(model.denoise(x, t, y), torch.tensor(ref["x0_hat"]), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model(x, t, y), torch.tensor(ref["score"]), rtol=1e-4, atol=1e-4)
        got = pipe(4, labels=labels, sampler="ddim", steps=4, seed=0, output_type="vectors")
    torch.testing.assert_close(got, torch.tensor(ref["samples"]), rtol=1e-4, atol=1e-5)


def test_config_json_holds_the_network_arguments_the_data_record_and_the_version(tmp_path):
    """Format 3: ``LatentScoreNet(**config["model"])`` rebuilds the network; sampling.json holds the
    sampling defaults; a newer format is refused with the fix."""
    from dataclasses import asdict

    from latentdit.data.normalise import Normalisation
    from latentdit.errors import CheckpointError
    from latentdit.export import FORMAT_VERSION
    from latentdit.models.score import LatentScoreNet
    from latentdit.pipeline import DataRecord, SamplingDefaults
    from latentdit.version import __version__

    model = LatentScoreNet(8, 4, hidden=16, depth=1, heads=2, num_classes=3).eval()
    data = DataRecord(Normalisation("minmax", torch.tensor(0.5), torch.tensor(0.5)), (2, 4), (0.0, 1.0), None)
    LatentDiTPipeline(model, 0.01, 5.0, data, SamplingDefaults(steps=7)).save_pretrained(tmp_path, training={"step": 3})
    head = json.loads((tmp_path / "config.json").read_text())
    assert head["format"] == FORMAT_VERSION == 3 and head["version"] == __version__
    assert set(head) == {"format", "library", "version", "model", "diffusion", "data"}
    assert head["model"] == asdict(model.config) and head["diffusion"] == {"T0": 0.01, "T": 5.0}
    assert LatentScoreNet(**head["model"]).config == model.config
    assert json.loads((tmp_path / "sampling.json").read_text())["steps"] == 7
    pipe = LatentDiTPipeline.from_pretrained(tmp_path)
    assert pipe.data == data and pipe.defaults == SamplingDefaults(steps=7) and (pipe.T0, pipe.T) == (0.01, 5.0)
    head["format"] = FORMAT_VERSION + 1
    (tmp_path / "config.json").write_text(json.dumps(head))
    with pytest.raises(CheckpointError, match="export format 4"):
        LatentDiTPipeline.from_pretrained(tmp_path)


@pytest.mark.parametrize("name", ["gmm_v1", "digits_v2"])
def test_sampling_never_reads_training_json(name, tmp_path):
    """An export whose training.json is gone (and one re-saved as format 3 without it) samples the
    recorded values: loading and sampling need nothing of the training recipe."""
    import shutil

    shutil.copytree(EXPORTS[name], tmp_path / "old")
    (tmp_path / "old" / "training.json").unlink()
    pipe = LatentDiTPipeline.from_pretrained(tmp_path / "old")
    pipe.save_pretrained(tmp_path / "new")
    assert not (tmp_path / "new" / "training.json").exists()
    labels = torch.arange(4) % pipe.model.num_classes if pipe.model.num_classes > 0 else None
    for p in (pipe, LatentDiTPipeline.from_pretrained(tmp_path / "new")):
        got = p(4, labels=labels, sampler="ddim", steps=4, seed=0, output_type="vectors")
        torch.testing.assert_close(got, torch.tensor(REF12[name]["samples"]), rtol=1e-4, atol=1e-5)
