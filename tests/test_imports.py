"""Every module imports on its own in a fresh interpreter (so none relies on an import cycle being
resolved in a lucky order), and no module dodges a cycle with an import inside a function body."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "latentdit"
# modules whose function-level imports keep the command line's start-up fast
LAZY_OK = {"latentdit.cli", "latentdit.experiments.rates.run", "latentdit.bench.model"}


def _modules() -> list[str]:
    out = []
    for p in sorted(PKG.rglob("*.py")):
        parts = p.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__main__":  # runs the command when imported
            continue
        out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


@pytest.mark.slow
def test_every_module_imports_alone():
    code = ("import importlib, sys\n"
            "for m in sys.argv[1:]:\n"
            "    for k in [k for k in sys.modules if k.startswith('latentdit')]: del sys.modules[k]\n"
            "    importlib.import_module(m)\n")
    r = subprocess.run([sys.executable, "-c", code, *_modules()], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.parametrize("module", [m for m in _modules() if m not in LAZY_OK])
def test_no_function_level_latentdit_imports(module):
    path = ROOT / (module.replace(".", "/") + ("/__init__.py" if (ROOT / module.replace(".", "/")).is_dir() else ".py"))
    tree = ast.parse(path.read_text())
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("latentdit"):
                    pytest.fail(f"{module}.{fn.name} imports {node.module} inside the function")
