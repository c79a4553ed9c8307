"""A small classifier trained on real labelled data, to score class-conditional samples.

A compact CNN for image data (two 3x3 conv blocks with max-pooling, then a linear head) and an
MLP otherwise. Both take normalised rows (N, D), the units of :class:`LoadedData.x` and of the
diffusion model's samples. Training holds out a random ``test_fraction`` of the data (seeded)
and reports accuracy on it; the accuracy of generated samples against their conditioning labels
(:func:`classifier_accuracy`) is then comparable with that figure.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import nn

from latentdit.errors import DataError



class LabelledData(Protocol):
    """What a classifier trains on (e.g. :class:`latentdit.data.real.LoadedData`): normalised rows
    ``x`` (N, D), ``labels`` (N,) or None, and the set's name, size, class count and image shape."""

    x: torch.Tensor
    labels: torch.Tensor | None
    num_classes: int
    dim: int
    image_shape: tuple[int, ...] | None
    name: str

    def __len__(self) -> int: ...

class Classifier(nn.Module):
    """Maps normalised rows (N, D) to class logits (N, K); reshapes to images for the CNN."""

    def __init__(self, dim: int, num_classes: int, image_shape: tuple[int, ...] | None,
                 width: int = 32, hidden: int = 128) -> None:
        super().__init__()
        self.dim, self.num_classes = dim, num_classes
        self.image_shape = tuple(image_shape) if image_shape else None
        if self.image_shape is None:
            self.net = nn.Sequential(
                nn.Linear(dim, 4 * hidden), nn.ReLU(),
                nn.Linear(4 * hidden, 2 * hidden), nn.ReLU(),
                nn.Linear(2 * hidden, num_classes),
            )
        else:
            c = self.image_shape[2] if len(self.image_shape) == 3 else 1
            h, w = self.image_shape[:2]
            self.net = nn.Sequential(
                nn.Conv2d(c, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
                nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
                nn.Flatten(),
                nn.Linear(2 * width * math.ceil(math.ceil(h / 2) / 2) * math.ceil(math.ceil(w / 2) / 2), hidden),
                nn.ReLU(),
                nn.Linear(hidden, num_classes),
            )

    def _as_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.image_shape is None:
            return x  # (N, D)
        if len(self.image_shape) == 2:
            return x.reshape(-1, 1, *self.image_shape)  # (N, 1, H, W)
        return x.reshape(-1, *self.image_shape).permute(0, 3, 1, 2)  # (N, C, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, D) normalised -> logits (N, K)."""
        return self.net(self._as_input(x))


def train_classifier(data: LabelledData, *, epochs: int = 8, batch_size: int = 64, lr: float = 2e-3,
                     test_fraction: float = 0.2, seed: int = 0, verbose: bool = False) -> tuple[Classifier, float]:
    """Train on a seeded random (1 - test_fraction) split of ``data``; return (model, test accuracy).

    Adam with a cosine learning-rate decay over ``epochs``. The model is returned in eval mode.
    """
    if data.labels is None or data.num_classes < 2:
        raise DataError(f"data set {data.name!r} has no class labels (or one class); "
                        "a classifier needs labelled data with at least two classes")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n = len(data)
    n_test = max(1, round(test_fraction * n))
    if n - n_test < 1:
        raise DataError(f"data set {data.name!r} has {n} items, too few to hold out a test set")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    test_idx, train_idx = perm[:n_test], perm[n_test:]
    x_train, y_train = data.x[train_idx], data.labels[train_idx]
    with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching global state
        torch.manual_seed(seed)
        model = Classifier(data.dim, data.num_classes, data.image_shape)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = math.ceil(len(train_idx) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(train_idx), generator=g)
        total = 0.0
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if verbose:
            print(f"classifier epoch {epoch + 1}/{epochs}: train loss {total / len(order):.4f}")
    model.eval()
    accuracy = classifier_accuracy(model, data.x[test_idx], data.labels[test_idx])
    return model, accuracy


@torch.no_grad()
def classify(model: Classifier, x_normalised: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Predicted labels (N,) int64 for normalised rows (N, D)."""
    was_training = model.training
    model.eval()
    out = [model(x_normalised[i:i + batch_size].float()).argmax(1) for i in range(0, len(x_normalised), batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64)


def classifier_accuracy(model: Classifier, x_normalised: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows (N, D) whose predicted class equals ``labels`` (N,)."""
    if len(x_normalised) != len(labels) or len(labels) == 0:
        raise ValueError(f"need matching, non-empty inputs; got {len(x_normalised)} rows and {len(labels)} labels")
    return (classify(model, x_normalised) == labels.to(torch.int64)).float().mean().item()
