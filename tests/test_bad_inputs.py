"""Every bad input a user can give gets one line naming the problem and the fix, exit status 2, no
traceback, and nothing written (issue 7). Each case runs the CLI entry point in this process and
compares the working directory before and after."""

import json
import os
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
    "d0 > D (real data)": (lambda d: (d / "x.csv").write_text("1,2\n3,4\n5,6\n7,8\n") and train_args("data.source=csv", "data.path=x.csv"),
                           r"encoder\.latent_dim=4 is larger than the data dimension D=2; lower it"),
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
    "sampler demo num -5": (lambda d: ["bench", "sampler", "--export", "run", "--demo-num", "-5", "--out", "s.json"],
                            r"the demo needs 2 <= --demo-num <= 100000 .*got -5"),
    "sampler demo nfe 10^6": (lambda d: ["bench", "sampler", "--export", "run", "--demo-nfe", "1000000", "--out", "s.json"],
                              r"every --demo-nfe in \[2, 1000\]"),
    # names
    "unknown sampler (config)": (lambda d: train_args("sample.sampler=dpm2"), r"sample\.sampler='dpm2' is not one of .*did you mean 'dpm2m'"),
    "unknown sampler (sample)": (lambda d: ["sample", "--run", "run", "--sampler", "eular", "--out", "x.npy"], r"--sampler 'eular' is not one of \['em'"),
    "evaluate guidance (ground truth)": (lambda d: ["evaluate", "--run", "run", "--guidance", "1.5", "--out", "m.json"], r"guidance applies to class-conditional real-data runs"),
    "unknown sampler (evaluate)": (lambda d: ["evaluate", "--run", "run", "--sampler", "foo", "--out", "m.json"], r"--sampler 'foo' is not one of"),
    "unknown attention": (lambda d: train_args("model.attention=flash"), r"model\.attention='flash' is not one of \['exact', 'poly', 'auto', 'relu_linear', 'none'\]"),
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
    "sample output suffix": (lambda d: ["sample", "--run", "run", "--out", "x.txt"], r"must end in \.npy, \.npz or \.png"),
}


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
    from latentdit.pipeline import LatentDiTPipeline
    from latentdit.sampling import sample

    with pytest.raises(CheckpointError, match="does not exist|not a directory"):
        LatentDiTPipeline.from_pretrained(tmp_path / "nope")
    shutil.copytree(trained, tmp_path / "run")
    (tmp_path / "run" / "model" / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        LatentDiTPipeline.from_pretrained(tmp_path / "run")
    # library functions raise ValueError naming their own arguments
    with pytest.raises(ValueError, match="steps=0 must be a positive integer"):
        sample(lambda x, t: -x, (2, 3), steps=0)
    with pytest.raises(ValueError, match="name='rk4' is not one of"):
        sample(lambda x, t: -x, (2, 3), sampler="rk4")
    with pytest.raises(ValueError, match="0 < T0 < T"):
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


# ------------------------------------------------------------------ output paths that cannot be written


def tree(root: Path) -> dict:
    """Every path under ``root`` (folders too) with the bytes of the files."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


# command -> (argv with the output path as OUT, whether it writes a folder)
WRITERS = {
    "train": (lambda out: train_args(out=out), True),
    "sample": (lambda out: ["sample", "--run", "run", "--num", "4", "--steps", "2", "--out", out], False),
    "evaluate": (lambda out: ["evaluate", "--run", "run", "--num", "8", "--steps", "2", "--out", out], False),
    "demo": (lambda out: ["demo", "--out", out, "--quick", "--no-fid"], True),
    "rates": (lambda out: ["rates", "--out", out, "--quick", "--no-estimate"], True),
    "bench model": (lambda out: ["bench", "model", "--out", out, "--quick"], False),
    "bench sampler": (lambda out: ["bench", "sampler", "--out", out, "--quick"], False),
    "bench attention": (lambda out: ["bench", "attention", "--quick", f"--out={out}"], False),
}
# kind of unusable path -> (path relative to the test folder or absolute, expected message)
BAD_PATHS = {
    "parent is a file": ("afile/sub/out", r"cannot be created: '.*afile' is a file, not a directory"),
    "under /proc": ("/proc/latentdit-no-such/out", r"cannot be written: '/proc': No such file or directory"),
    "under /sys": ("/sys/latentdit-no-such/out", r"cannot be written: '/sys': (Permission denied|Read-only)"),
}


@pytest.mark.parametrize("kind", list(BAD_PATHS))
@pytest.mark.parametrize("command", list(WRITERS))
def test_unusable_output_path_one_line_exit_2_nothing_written(command, kind, trained, tmp_path, monkeypatch, capsys):
    """The check runs before any work: the command fails at once, creates no folder and no file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    if command in ("sample", "evaluate"):
        shutil.copytree(trained, tmp_path / "run")
    make, _ = WRITERS[command]
    path, pattern = BAD_PATHS[kind]
    import re

    before = tree(tmp_path)
    rc = main(make(path + (".npy" if command == "sample" else ".json" if command != "train" else "")))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: --out "), err
    assert re.search(pattern, err[0]), err[0]
    assert tree(tmp_path) == before
    assert not Path(path).exists()


@pytest.mark.parametrize("command", [c for c, (_, is_dir) in WRITERS.items() if not is_dir])
def test_file_output_that_is_a_device_or_a_folder_is_refused(command, trained, tmp_path, monkeypatch, capsys):
    """`--out /dev/full` must not be replaced by a regular file (a rename would do that as root)."""
    monkeypatch.chdir(tmp_path)
    if command in ("sample", "evaluate"):
        shutil.copytree(trained, tmp_path / "run")
    (tmp_path / "adir.npy").mkdir()
    make, _ = WRITERS[command]
    import re

    for out, pattern in (("/dev/full", r"'/dev/full' is not a regular file"), ("adir.npy", r"'adir\.npy' is a directory")):
        before = tree(tmp_path)
        rc = main(make(out))
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and re.search(pattern, err[0]), err
        assert tree(tmp_path) == before
    assert Path("/dev/full").is_char_device()


@pytest.mark.parametrize("command", [c for c, (_, is_dir) in WRITERS.items() if is_dir])
def test_folder_output_that_is_a_file_is_refused(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").write_text("keep me")
    rc = main(WRITERS[command][0]("out"))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--out 'out' exists and is a file; choose a new directory" in err[0], err
    assert (tmp_path / "out").read_text() == "keep me"


def _disk_full(*_a, **_k):
    import errno

    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("argv,out", [
    (["sample", "--run", "run", "--num", "4", "--steps", "2", "--out", "x.npy"], "x.npy"),
    (["sample", "--run", "run", "--num", "4", "--steps", "2", "--out", "sub/x.npz"], "sub/x.npz"),
    (["evaluate", "--run", "run", "--num", "8", "--steps", "2", "--out", "m.json"], "m.json"),
    (["bench", "sampler", "--quick", "--threads", "1", "--out", "b/s.json"], "b/s.json"),
])
def test_disk_full_while_writing_one_line_exit_2_no_partial_file(argv, out, trained, tmp_path, monkeypatch, capsys):
    """ENOSPC as the file system reports it when the data reach the disk (at fsync): the command names
    the output, exits 2, and neither the output nor its temporary file is left behind."""
    import latentdit.io

    monkeypatch.chdir(tmp_path)
    shutil.copytree(trained, tmp_path / "run")
    before = files(tmp_path)
    monkeypatch.setattr(latentdit.io.os, "fsync", _disk_full)
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert f"cannot write '{out}': No space left on device; free some space" in err[0], err[0]
    assert files(tmp_path) == before


def test_disk_full_before_the_work_starts(tmp_path, monkeypatch, capsys):
    import collections

    import latentdit.io

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(latentdit.io.shutil, "disk_usage", lambda p: collections.namedtuple("u", "total used free")(1, 1, 0))
    rc = main(train_args())
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no space left on the device" in err[0], err
    assert not (tmp_path / "out").exists()


def test_disk_full_during_training_one_line_exit_2(tmp_path, monkeypatch, capsys):
    """Training's own writes (config, checkpoints) report a full disk as one line naming the file."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(os, "fsync", _disk_full)
    rc = main(train_args())
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "No space left on device" in err[0] and "'out" in err[0], err
    assert not (tmp_path / "out" / "config.json").exists() or json.loads((tmp_path / "out" / "config.json").read_text())


def test_disk_full_during_training_leaves_no_temporary_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(os, "fsync", _disk_full)
    assert main(train_args()) == 2
    assert not [p for p in (tmp_path / "out").rglob("*.tmp")]


def test_write_errors_show_the_traceback_with_debug(trained, tmp_path, monkeypatch):
    import latentdit.io

    monkeypatch.chdir(tmp_path)
    shutil.copytree(trained, tmp_path / "run")
    monkeypatch.setattr(latentdit.io.os, "fsync", _disk_full)
    with pytest.raises(OSError, match="No space left"):
        main(["--debug", "sample", "--run", "run", "--num", "4", "--steps", "2", "--out", "x.npy"])
