"""The sampling pipeline (data space, clipping), label dropout, and the OU schedule's two forms."""

import math
from dataclasses import asdict

import pytest
import torch

from latentdit.config import ModelConfig
from latentdit.data.normalise import Normalisation
from latentdit.diffusion import OU
from latentdit.models.guidance import drop_labels, null_labels
from latentdit.models.score import LatentScoreNet
from latentdit.pipeline import DataRecord, LatentDiTPipeline, SamplingDefaults


def test_ou_float_and_tensor_forms_match_the_closed_forms():
    for t in (1e-4, 0.3, 2.0, 10.0):
        assert OU.beta(t) == pytest.approx(math.exp(-t / 2), rel=1e-14)
        assert OU.sigma(t) == pytest.approx(1 - math.exp(-t), rel=1e-12)
        lam = math.log(math.exp(-t / 2) / math.sqrt(1 - math.exp(-t)))
        assert OU.log_snr(t) == pytest.approx(lam, rel=1e-10, abs=1e-12)
        assert OU.t_from_log_snr(lam) == pytest.approx(t, rel=1e-9)
        tt = torch.tensor([t], dtype=torch.float64)
        for f in (OU.beta, OU.sigma, OU.log_snr):
            assert float(f(tt)) == pytest.approx(f(t), rel=1e-12)
    assert OU.t_from_log_snr(-30.0) == pytest.approx(60.0, rel=1e-12)  # large t: no overflow


def test_drop_labels_and_null_class():
    y = torch.tensor([0, 1, 2, 1])
    out = drop_labels(y, torch.tensor([False, True, False, True]), 3)
    assert out.tolist() == [0, 3, 2, 3] and y.tolist() == [0, 1, 2, 1]
    assert null_labels(2, 5).tolist() == [5, 5]
    with pytest.raises(ValueError, match="num_classes"):
        null_labels(2, 0)
    with pytest.raises(ValueError, match="drop_mask"):
        drop_labels(y, torch.tensor([True]), 3)


def _pipe(pixel_range):
    torch.manual_seed(0)
    model = LatentScoreNet(8, 4, **asdict(ModelConfig(hidden=16, depth=1, heads=2))).eval()
    norm = Normalisation("minmax", torch.tensor(0.5), torch.tensor(0.5))
    return LatentDiTPipeline(model, data=DataRecord(norm, pixel_range=pixel_range),
                             defaults=SamplingDefaults(sampler="ddim", steps=4))


def test_pipeline_returns_data_space_and_clips_images_unless_asked():
    pipe = _pipe((0.0, 1.0))
    z = pipe.sample_model_space(300, seed=3)
    raw = pipe(300, seed=3, clip=False)
    torch.testing.assert_close(raw, z * 0.5 + 0.5)  # the normalisation undone: x = 0.5 z + 0.5
    assert raw.min() < 0 or raw.max() > 1  # an untrained model leaves the pixel range
    clipped = pipe(300, seed=3)
    assert clipped.min() >= 0 and clipped.max() <= 1
    torch.testing.assert_close(clipped, raw.clamp(0, 1))
    vectors = _pipe(None)
    torch.testing.assert_close(vectors(300, seed=3), raw)  # no pixel range: nothing clipped


def test_pipeline_argument_errors_name_the_argument():
    pipe = _pipe(None)
    with pytest.raises(ValueError, match="num=0"):
        pipe(0)
    with pytest.raises(ValueError, match="name='nope'"):
        pipe(4, sampler="nope")
    with pytest.raises(ValueError, match="labels"):
        pipe(4, labels=torch.tensor([0, 1, 0, 1]))  # not a class-conditional model
