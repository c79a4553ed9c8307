"""Pipeline outputs a person looks at: images (N, C, H, W) or flat rows, and PNG grids a row per class."""

from pathlib import Path

import numpy as np
import pytest
import torch

from latentdit.cli import main
from latentdit.errors import DataError
from latentdit.models.score import LatentScoreNet
from latentdit.output import grid_indices, save_sample_grid, to_output
from latentdit.pipeline import DataRecord, LatentDiTPipeline
from latentdit.sampling import SamplingDefaults

DIGITS = Path(__file__).parent / "data" / "export_v0" / "digits"  # a class-conditional 8 x 8 digits export
TINY = Path(__file__).parent / "data" / "export_v0" / "tiny"  # vectors


def test_rows_become_channel_first_images_index_by_index():
    x = torch.arange(2 * 18, dtype=torch.float32).reshape(2, 18)  # two (H, W, C) = (2, 3, 3) images, flattened
    img = to_output(x, (2, 3, 3))
    assert img.shape == (2, 3, 2, 3)
    for n, c, h, w in [(0, 0, 0, 0), (0, 2, 1, 2), (1, 1, 0, 2), (1, 0, 1, 1)]:
        assert img[n, c, h, w] == x[n, (h * 3 + w) * 3 + c]
    gray = to_output(x[:, :12], (3, 4))  # (H, W): one channel, row-major
    assert gray.shape == (2, 1, 3, 4) and gray[1, 0, 2, 1] == x[1, 2 * 4 + 1]
    assert to_output(x, (2, 3, 3), "vectors") is x
    assert to_output(x, None) is x  # vectors are the only output of non-image data


def test_output_type_errors():
    x = torch.zeros(2, 6)
    with pytest.raises(DataError, match="needs image data"):
        to_output(x, None, "images")
    with pytest.raises(ValueError, match="output_type='pixels'"):
        to_output(x, (2, 3), "pixels")
    with pytest.raises(DataError, match="dimension 6"):
        to_output(x, (4, 4))


def test_pipeline_of_image_data_returns_images_unless_asked_for_vectors():
    torch.manual_seed(0)
    model = LatentScoreNet(8, 4, hidden=16, depth=1, heads=2).eval()
    pipe = LatentDiTPipeline(model, data=DataRecord(image_shape=(2, 4), pixel_range=(0.0, 1.0)),
                             defaults=SamplingDefaults(sampler="ddim", steps=3))
    img = pipe(5, seed=3)
    rows = pipe(5, seed=3, output_type="vectors")
    assert img.shape == (5, 1, 2, 4) and rows.shape == (5, 8)
    torch.testing.assert_close(img, rows.reshape(5, 1, 2, 4))


def test_grid_indices_give_a_row_per_class():
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])  # class 2 has two samples: rows of two
    idx, per = grid_indices(labels, 8)
    assert per == 2 and idx.tolist() == [0, 3, 1, 4, 2, 5]
    idx, per = grid_indices(None, 150)
    assert per == 10 and idx.tolist() == list(range(100))


def test_png_grid_puts_each_class_on_its_own_row(tmp_path):
    from PIL import Image

    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    x = labels[:, None].float().expand(6, 64)  # class 0 all black, class 1 all white, 8 x 8 images
    path = save_sample_grid(x, tmp_path / "g.png", image_shape=(8, 8), pixel_range=(0.0, 1.0), labels=labels)
    a = np.asarray(Image.open(path))
    tile = 8 * 3  # 8 x 8 digits enlarged 3 x, 2-pixel white padding
    assert a.shape == (2 * (tile + 2) + 2, 3 * (tile + 2) + 2)
    for col in range(3):
        x0 = 2 + col * (tile + 2)
        assert (a[2:2 + tile, x0:x0 + tile] == 0).all()  # row 0: class 0
        assert (a[4 + tile:4 + 2 * tile, x0:x0 + tile] == 255).all()  # row 1: class 1
    with pytest.raises(DataError, match="vectors of dimension 64"):
        save_sample_grid(x, tmp_path / "v.png", image_shape=None)


@pytest.mark.slow
def test_cli_sample_writes_a_png_grid_for_images_and_refuses_one_for_vectors(tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "grid.png"
    assert main(["sample", "--run", str(DIGITS), "--num", "30", "--steps", "2", "--out", str(out)]) == 0
    w, h = Image.open(out).size
    assert h > w  # 10 classes x 3 samples: ten rows of three
    capsys.readouterr()
    assert main(["sample", "--run", str(TINY), "--num", "4", "--steps", "2", "--out", str(tmp_path / "v.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs image data" in err[0] and ".npy" in err[0], err
    assert not (tmp_path / "v.png").exists()
