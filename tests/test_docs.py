"""README and docs/: short enough to read, every relative link resolves, every `latentdit.` name exists, and CI
runs README's test command."""

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_every_relative_link_resolves():
    broken = []
    for page in _pages():
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # links in code blocks are examples
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = target.split("#", 1)[0]
            if not (page.parent / path).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken


def test_readme_is_short_and_ci_runs_its_test_command():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    block = re.search(r"```bash\n(.*?)```", readme, flags=re.S).group(1)  # the first bash block: the two commands
    commands = [line for line in block.splitlines() if line and not line.startswith("#")]
    assert len(commands) == 2 and commands[0].endswith("latentdit demo --out runs/demo")
    test_command = commands[1].split(" && ")[-1]
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert test_command == "python -m pytest -q" and ci == 'python -m pytest -q "$@"', (test_command, ci)


DOTTED = re.compile(r"latentdit(?:\.[A-Za-z_]\w*)+")


def _resolve(name: str) -> bool:
    """Import the longest module prefix of ``name`` and look the rest up as attributes."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def test_every_dotted_latentdit_name_exists():
    missing = sorted({f"{page.relative_to(ROOT)}: {name}" for page in _pages()
                      for name in DOTTED.findall(page.read_text()) if not _resolve(name)})
    assert not missing, missing
