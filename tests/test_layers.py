"""The package's layers only point down: data -> first stage -> models -> diffusion / sampling ->
pipeline -> train / evaluation -> experiments / bench -> CLI.

Every ``import latentdit.X`` (at module level or inside a function) is checked against the order
below: a module may import its own top-level package and any package of a lower layer, never one of
its own layer or above. Only the command line and the public names (the top) see everything."""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "latentdit"

# lowest first; a layer's packages do not import each other
LAYERS = [
    ("errors", "version"),
    ("io", "hostmem", "device", "schedule", "config_files", "distributed", "timing", "progress", "fits"),
    ("provenance",),
    ("metrics",),  # distances, FID and classifier metrics on tensors
    ("data",),
    ("firststage",),  # the linear W_B and the conv autoencoder
    ("attention",),
    ("models",),  # the score network of eq. (2.5) and its preconditioning
    ("diffusion",),  # forward process and loss
    ("sampling",),
    ("export", "output"),  # the export format; what a pipeline hands back
    ("pipeline",),  # the trained artifact
    ("config",),  # the run configuration
    ("build",),  # data, model and pipeline of a run configuration
    ("train", "evaluation"),
    ("experiments", "bench"),
    ("cli",),
    ("__main__", "__init__"),  # `python -m latentdit` and the public names
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _top(module: str) -> str:
    """The top-level package (or module) of ``latentdit.a.b`` or of a file path under latentdit/."""
    return module.split(".")[1] if module.startswith("latentdit.") else "__init__"


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("latentdit"):
            names = [node.module] if node.module != "latentdit" else [f"latentdit.{a.name}" for a in node.names]
            out += [(node.lineno, n) for n in names]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("latentdit.")]
    return out


def _files() -> list[Path]:
    return sorted(PKG.rglob("*.py"))


def test_every_package_has_a_layer():
    tops = {p.relative_to(PKG).parts[0].removesuffix(".py") for p in _files()}
    assert sorted(tops - set(RANK)) == []


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(PKG)))
def test_imports_point_down(path):
    rel = path.relative_to(PKG)
    here = rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 or rel.name != "__init__.py" else "__init__"
    bad = [f"line {line}: {name} ({_top(name)}, layer {RANK[_top(name)]})"
           for line, name in _imports(path)
           if _top(name) != here and RANK[_top(name)] >= RANK[here]]
    assert not bad, f"{rel} (layer {RANK[here]}: {here}) imports upward or sideways: {bad}"


def test_public_names():
    """``from latentdit import ...`` gives the pipeline, the network, the configuration and a
    callable ``train``, whatever was imported before."""
    import subprocess
    import sys

    code = ("import latentdit.train.loop\n"
            "from latentdit import Config, LatentDiTPipeline, LatentScoreNet, __version__, train\n"
            "from latentdit.train.loop import train as loop_train\n"
            "assert callable(train) and train.__call__ is not None and LatentDiTPipeline.from_pretrained\n"
            "net = LatentScoreNet(8, 4, hidden=16, depth=1, heads=2)\n"
            "assert Config().model.hidden == 128 and net.config.ambient_dim == 8 and __version__\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PKG.parent)
    assert r.returncode == 0, r.stderr
