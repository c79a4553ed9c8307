"""README and docs/: short enough to read, every relative link resolves, and CI runs README's test command."""

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
