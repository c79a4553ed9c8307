"""Every bad input a user can give gets one line naming the problem and the fix, exit status 2, no
traceback, and nothing written (issue 7). Each case runs the CLI entry point in this process and
compares the working directory before and after."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from latentdit.cli import main
from latentdit.config import load_config
from latentdit.errors import CheckpointError, ConfigError, DataError
from latentdit.train import list_checkpoints, train

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.toml")
QUICK = ["--set", "train.steps=4", "--set", "train.checkpoint_every=2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    train(load_config(TINY, ["train.steps=4", "train.checkpoint_every=2", "train.log_every=2"]), run, progress=False)
    return run


def files(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def train_args(*sets: str, out: str = "out") -> list[str]:
    return ["train", "--config", TINY, "--out", out, "--quiet", *QUICK, *[x for s in sets for x in ("--set", s)]]


# ------------------------------------------------------------------ inputs written by each case


def _npy(arr):
    def make(d: Path):
        np.save(d / "x.npy", arr)
        return train_args("data.source=npy", "data.path=x.npy", "encoder.latent_dim=1", "model.patch=1")
    return make


def _csv(text):
    def make(d: Path):
        (d / "x.csv").write_text(text)
        return train_args("data.source=csv", "data.path=x.csv", "encoder.latent_dim=1", "model.patch=1")
    return make


def _images(files_: dict):
    def make(d: Path):
        (d / "imgs").mkdir()
        for name, data in files_.items():
            (d / "imgs" / name).write_bytes(data)
        return train_args("data.source=images", "data.path=imgs", "encoder.latent_dim=4")
    return make


def _png_bytes() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _ragged_npy(d: Path):
    arr = np.empty(2, dtype=object)
    arr[0], arr[1] = [1.0, 2.0], [3.0]
    np.save(d / "x.npy", arr, allow_pickle=True)
    return train_args("data.source=npy", "data.path=x.npy")


def _copy_run(trained):
    def make(d: Path):
        shutil.copytree(trained, d / "run")
    return make


def _truncated_export(trained, mode):
    def make(d: Path):
        shutil.copytree(trained, d / "run")
        w = d / "run" / "model" / "model.safetensors"
        data = w.read_bytes()
        w.write_bytes(data[: len(data) // 2] if mode == "truncated" else data[:8] + bytes(len(data) - 8))
        return ["sample", "--run", "run", "--num", "4", "--out", "x.npy"]
    return make


CASES = {
    # data
    "nan in data": (_npy(np.array([[1.0, np.nan], [2.0, 3.0], [4.0, 5.0]])), r"non-finite values \(NaN/inf\).*remove or impute"),
    "inf in data": (_csv("1,2\n3,inf\n5,6\n"), r"non-finite.*remove or impute"),
    "empty array": (_npy(np.zeros((0, 5))), r"data are empty.*give at least one item"),
    "empty csv": (_csv(""), r"is empty; give at least one row"),
    "ragged csv": (_csv("1,2,3\n4,5\n"), r"line 2 has 2 fields, expected 3; make all rows the same length"),
    "ragged npy": (_ragged_npy, r"x\.npy holds an object \(ragged\) array; save rectangular numeric arrays"),
    "1-d array": (_npy(np.zeros(5)), r"shape \(5,\) not understood; use \(N, D\)"),
    "5 channels": (_npy(np.zeros((4, 3, 3, 5))), r"not understood; use .*C = 1 or 3"),
    "non-image file in folder": (_images({"a.png": _png_bytes(), "notes.txt": b"hello"}), r"notes\.txt is not a PNG/JPEG image; remove it"),
    "unreadable image": (_images({"a.png": _png_bytes(), "b.png": b"\x89PNG\r\n\x1a\nbroken"}), r"cannot read image .*b\.png.*remove or replace"),
    "empty image folder": (_images({}), r"no image files.*add PNG or JPEG"),
    "missing data path": (lambda d: train_args("data.source=npy", "data.path=nope.npy"), r"does not exist; check the path"),
    # dimensions
    "d0 > D (config)": (lambda d: train_args("encoder.latent_dim=64"), r"encoder\.latent_dim=64 is larger than data\.ambient_dim=32; lower"),
    "d0 > D (real data)": (_csv("1,2\n3,4\n5,6\n7,8\n"), None),  # replaced below: needs latent_dim 4
    "d0 > n": (lambda d: train_args("data.n=3", "train.batch_size=3"), r"larger than the number of samples n=3; lower it"),
    "d0 not splittable": (lambda d: train_args("encoder.latent_dim=7"), r"d0=7 fits neither .*choose model\.patch dividing 7"),
    "d0 not a square for 2d": (lambda d: train_args("encoder.latent_dim=6", "model.patching=2d"), r"d0=6 is not a square.*patching='1d'"),
    # diffusion times and steps
    "T0 = 0": (lambda d: train_args("diffusion.T0=0"), r"diffusion\.T0=0\.0 must be > 0"),
    "T0 < 0": (lambda d: train_args("diffusion.T0=-1"), r"diffusion\.T0=-1\.0 must be > 0"),
    "T0 >= T": (lambda d: train_args("diffusion.T0=10"), r"T0=10\.0 must be smaller than diffusion\.T=10\.0"),
    "train steps 0": (lambda d: train_args("train.steps=0"), r"train\.steps=0 must be > 0"),
    "sample steps 0": (lambda d: ["sample", "--run", "run", "--steps", "0", "--out", "x.npy"], r"--steps 0 must be > 0"),
    "evaluate steps -1": (lambda d: ["evaluate", "--run", "run", "--steps", "-1", "--out", "m.json"], r"must be > 0"),
    # names
    "unknown sampler (config)": (lambda d: train_args("sample.sampler=dpm"), r"sample\.sampler='dpm' is not one of .*did you mean 'dpm2m'"),
    "unknown sampler (sample)": (lambda d: ["sample", "--run", "run", "--sampler", "eular", "--out", "x.npy"], r"unknown sampler 'eular'; choose one of"),
    "unknown sampler (evaluate)": (lambda d: ["evaluate", "--run", "run", "--sampler", "foo", "--out", "m.json"], r"unknown sampler 'foo'"),
    "unknown attention": (lambda d: train_args("model.attention=flash"), r"model\.attention='flash' is not one of \['exact', 'poly', 'auto', 'relu_linear'\]"),
    "unknown config key (--set)": (lambda d: train_args("optim.lrr=0.1"), r"unknown config key 'optim\.lrr'; did you mean 'optim\.lr'\?"),
    "unknown config key (file)": (lambda d: (d / "c.toml").write_text("[model]\ndepht = 2\n") and ["train", "--config", "c.toml", "--out", "out"], r"unknown config key 'model\.depht'; did you mean 'model\.depth'\?"),
    "bad value type": (lambda d: train_args("model.depth=two"), r"model\.depth: expected an integer, got 'two'"),
    "missing config file": (lambda d: ["train", "--config", "nope.toml", "--out", "out"], r"config file 'nope\.toml' does not exist"),
    "invalid toml": (lambda d: (d / "c.toml").write_text("[model\n") and ["train", "--config", "c.toml", "--out", "out"], r"is not valid toml"),
    # checkpoints, exports, run directories
    "truncated safetensors": ("truncated", r"model\.safetensors' is truncated or corrupt.*re-export"),
    "corrupt safetensors": ("corrupt", r"model\.safetensors' is truncated or corrupt.*re-export"),
    "missing run (sample)": (lambda d: ["sample", "--run", "nope", "--out", "x.npy"], r"'nope' is not a directory; pass a run directory"),
    "missing run (evaluate)": (lambda d: ["evaluate", "--run", "nope", "--out", "m.json"], r"run directory 'nope' does not exist; check the path or train"),
    "run without export": (lambda d: (d / "empty_run").mkdir() or ["sample", "--run", "empty_run", "--out", "x.npy"], r"holds no export.*train first"),
    "out is a file": (lambda d: (d / "out").write_text("x") and train_args(), r"--out 'out' exists and is a file; choose a new directory"),
    "out is not a run directory": (lambda d: ((d / "out").mkdir(), (d / "out" / "f.txt").write_text("x")) and train_args(), r"--out 'out' exists and is not a run directory.*choose a new or empty directory"),
    "incompatible checkpoint": ("incompatible", r"trained with a different \[model\] config; use a new --out directory"),
    "sample output suffix": (lambda d: ["sample", "--run", "run", "--out", "x.txt"], r"must end in \.npy or \.npz"),
}
CASES["d0 > D (real data)"] = (
    lambda d: (d / "x.csv").write_text("1,2\n3,4\n5,6\n7,8\n") and train_args("data.source=csv", "data.path=x.csv"),
    r"encoder\.latent_dim=4 is larger than the data dimension D=2; lower it")


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_one_line_exit_2_nothing_written(name, trained, tmp_path, monkeypatch, capsys):
    make, pattern = CASES[name]
    monkeypatch.chdir(tmp_path)
    if isinstance(make, str):  # cases on a copy of the trained run
        if make == "incompatible":
            shutil.copytree(trained, tmp_path / "run")
            argv = train_args("model.hidden=32", out="run")
        else:
            argv = _truncated_export(trained, make)(tmp_path)
    else:
        if any(w in name for w in ("sample", "evaluate")) and "missing" not in name:
            shutil.copytree(trained, tmp_path / "run")
        argv = make(tmp_path)
    capsys.readouterr()
    before = files(tmp_path)
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, (argv, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    import re

    assert re.search(pattern, lines[0]), lines[0]
    assert files(tmp_path) == before  # nothing written, nothing changed


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError):
        main(["--debug", *train_args("diffusion.T0=0")])


def test_nan_loss_stops_training_keeping_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--config", TINY, "--out", "run", "--quiet", "--set", "optim.lr=1e30", "--set", "optim.grad_clip=0",
            "--set", "optim.warmup_steps=0", "--set", "train.checkpoint_every=1"]
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    msg = err[0]
    ckpts = list_checkpoints(tmp_path / "run")
    assert ckpts, "the last good checkpoint is kept"
    good = int(ckpts[-1].stem.split("_")[1])
    assert f"at step {good + 1}" in msg and ("became inf" in msg or "became nan" in msg), msg
    assert f"run/checkpoints/{ckpts[-1].name}" in msg and "lower optim.lr" in msg
    state = torch.load(ckpts[-1], weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (tmp_path / "run" / "model").exists()


def test_python_entry_points_raise_typed_errors(trained, tmp_path):
    from latentdit.data.real import from_array, load_data
    from latentdit.pipeline import from_pretrained
    from latentdit.sampling import sample

    with pytest.raises(CheckpointError, match="does not exist|not a directory"):
        from_pretrained(tmp_path / "nope")
    shutil.copytree(trained, tmp_path / "run")
    (tmp_path / "run" / "model" / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        from_pretrained(tmp_path / "run")
    with pytest.raises(ConfigError, match="steps=0 must be > 0"):
        sample(lambda x, t: -x, (2, 3), steps=0)
    with pytest.raises(ConfigError, match="unknown sampler"):
        sample(lambda x, t: -x, (2, 3), sampler="rk4")
    with pytest.raises(ConfigError, match="0 < T0 < T"):
        sample(lambda x, t: -x, (2, 3), T0=0.0)
    with pytest.raises(DataError, match="non-finite"):
        from_array(np.array([[np.inf, 1.0]]))
    with pytest.raises(DataError, match="does not exist"):
        load_data("npy", str(tmp_path / "none.npy"))


def test_tensorboard_without_the_package_is_a_clear_error(tmp_path, monkeypatch, capsys):
    import importlib.util

    if importlib.util.find_spec("tensorboard") is not None:
        pytest.skip("tensorboard is installed")
    monkeypatch.chdir(tmp_path)
    rc = main(train_args("train.tensorboard=true"))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "pip install tensorboard" in err[0]
    assert not (tmp_path / "out").exists()
