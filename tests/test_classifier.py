"""The evaluation classifier: trains to high held-out accuracy on real digits, deterministically."""

from __future__ import annotations

import pytest
import torch

from latentdit.data.real import from_array, load_data
from latentdit.errors import DataError
from latentdit.metrics.classifier import classifier_accuracy, classify, train_classifier


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


@pytest.mark.slow
def test_cnn_on_digits(digits):
    model, acc = train_classifier(digits, epochs=4, seed=0)
    assert acc > 0.9
    pred = classify(model, digits.x[:100])
    assert pred.shape == (100,) and pred.dtype == torch.int64
    assert classifier_accuracy(model, digits.x, digits.labels) > 0.9
    _, acc_again = train_classifier(digits, epochs=4, seed=0)
    assert acc_again == acc  # fixed seed, same split and initialisation


@pytest.mark.slow
def test_mlp_on_vectors(digits):
    vectors = from_array(digits.norm.invert(digits.x), digits.labels)  # no image shape -> MLP
    assert vectors.image_shape is None
    model, acc = train_classifier(vectors, epochs=4, seed=1)
    assert acc > 0.9


def test_unlabelled_data_is_rejected():
    with pytest.raises(DataError, match="no class labels"):
        train_classifier(from_array(torch.rand(10, 3)))
