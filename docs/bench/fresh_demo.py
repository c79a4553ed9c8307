"""Times README.md's main command on a fresh clone: a new virtual environment, the installs, and
``latentdit demo`` with an empty feature cache, as a first-time user runs it.

    python docs/bench/fresh_demo.py --out docs/bench/fresh_demo.json

The command is read from README.md (the first line of its first ``bash`` block), so the figure is
the one the README promises. The clone is of this repository's HEAD into a temporary folder;
``LATENTDIT_CACHE`` points at an empty folder there. The JSON holds the wall time, the demo's own
metrics.json (with its provenance) and this script's provenance (load before and after).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def readme_main_command(readme: Path = ROOT / "README.md") -> str:
    """The first command line of README's first ``bash`` block (comments dropped)."""
    block = re.search(r"```bash\n(.*?)```", readme.read_text(), re.S)
    if block is None:
        raise SystemExit(f"no ```bash block in {readme}")
    lines = [ln for ln in block.group(1).splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return lines[0]


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from latentdit.io import atomic_write_json
    from latentdit.provenance import provenance_end, provenance_start

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--keep", action="store_true", help="keep the temporary clone")
    args = ap.parse_args()
    prov = provenance_start(["python", *sys.argv])
    command = readme_main_command()
    tmp = Path(tempfile.mkdtemp(prefix="latentdit-fresh-"))
    try:
        subprocess.run(["git", "clone", "-q", str(ROOT), str(tmp / "repo")], check=True)
        env = {**os.environ, "LATENTDIT_CACHE": str(tmp / "cache"), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        env.pop("VIRTUAL_ENV", None)
        env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if "venv" not in p)
        t0 = time.time()
        r = subprocess.run(["bash", "-c", command + " --quiet"], cwd=tmp / "repo", env=env)
        wall = time.time() - t0
        if r.returncode != 0:
            raise SystemExit(f"the README command failed with status {r.returncode}")
        metrics = json.loads((tmp / "repo" / "runs" / "demo" / "metrics.json").read_text())
        report = {"readme_command": command + " --quiet", "wall_seconds": wall,
                  "install_and_run": "fresh clone, fresh venv, empty LATENTDIT_CACHE", "demo_metrics": metrics}
        report["provenance"] = provenance_end(prov)
        report["provenance"]["threads"] = metrics["provenance"]["threads"]  # the demo's torch threads
        atomic_write_json(args.out, report)
        print(f"README main command: {wall:.0f} s wall ({wall / 60:.1f} min); FID {metrics.get('fid')}")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
