"""Runs ``latentdit train`` as the CLI does, with test hooks that kill or pause the process.

    python tests/train_driver.py --out RUN [--config FILE] [--set KEY=VALUE ...]
        [--kill-after-step N | --kill-mid-checkpoint N] [--kill-rank R] [--first-attempt-only]
        [--pause-after-step N --pause-until PATH]

``--kill-after-step N`` sends SIGKILL to this process right after optimiser step N;
``--kill-mid-checkpoint N`` half-way through writing the checkpoint of step N (a torn temporary file
is left). ``--kill-rank`` limits the kill to one torchrun rank, ``--first-attempt-only`` to the first
attempt of a torchrun job (TORCHELASTIC_RESTART_COUNT == 0). ``--pause-after-step N`` writes
``PATH.paused`` after step N and waits until PATH exists (a run that is known to be in progress).
Not a test module: the tests start it in a subprocess (or under torchrun).
"""

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from latentdit.config import Config, apply_overrides, load_config  # noqa: E402
from latentdit.train import TrainCallbacks, train  # noqa: E402


def _die(*_):
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--config", type=Path)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--kill-after-step", type=int)
    p.add_argument("--kill-mid-checkpoint", type=int)
    p.add_argument("--kill-rank", type=int)
    p.add_argument("--first-attempt-only", action="store_true")
    p.add_argument("--pause-after-step", type=int)
    p.add_argument("--pause-until", type=Path)
    a = p.parse_args()

    if a.config is None and (a.out / "config.json").is_file():  # resume as it was, like the CLI
        cfg = Config.from_saved(json.loads((a.out / "config.json").read_text()))
        cfg = Config.from_dict(apply_overrides(cfg.to_dict(), a.overrides)) if a.overrides else cfg
    else:
        cfg = load_config(a.config, a.overrides)

    armed = (a.kill_rank is None or int(os.environ.get("RANK", "0")) == a.kill_rank) and not (
        a.first_attempt_only and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0)

    def on_step(step: int) -> None:
        if armed and step == a.kill_after_step:
            _die()
        if step == a.pause_after_step:
            Path(str(a.pause_until) + ".paused").touch()
            while not a.pause_until.exists():
                time.sleep(0.05)

    def on_checkpoint_write(step: int, tmp: Path) -> None:
        if armed and step == a.kill_mid_checkpoint:
            _die()

    train(cfg, a.out, progress=False, callbacks=TrainCallbacks(on_step=on_step, on_checkpoint_write=on_checkpoint_write))
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"run written to {a.out}")


if __name__ == "__main__":
    main()
