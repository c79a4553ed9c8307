"""The progress convention: a tqdm bar on a terminal, periodic plain lines otherwise."""

import io

from latentdit.progress import NoProgress, PlainProgress, fmt_seconds, progress_bar


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_off_a_terminal_lines_are_plain_and_periodic():
    out = io.StringIO()  # isatty() is False, as for a log file or a pipe
    bar = progress_bar(total=10, desc="train", unit="step", file=out, every=0.0)
    assert isinstance(bar, PlainProgress)
    for _ in range(3):
        bar.update(1)
    bar.set_postfix(loss="0.1234")
    bar.update(1)
    bar.close()
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("train: 1/10 (10%) step")
    assert lines[-1].startswith("train: 4/10 (40%) step loss=0.1234")


def test_plain_lines_wait_for_the_interval_and_close_with_the_final_count():
    out, clock = io.StringIO(), Clock()
    bar = PlainProgress(total=100, desc="autoencoder", file=out, every=30.0, clock=clock)
    for _ in range(50):  # 29 s: nothing yet
        clock.t += 29.0 / 50
        bar.update(1)
    assert out.getvalue() == ""
    clock.t = 30.0
    bar.update(1)  # 51 steps in 30 s: 49 to go at 1.7/s
    assert out.getvalue() == "autoencoder: 51/100 (51%) it, 30s elapsed, eta 29s\n"
    for _ in range(49):
        bar.update(1)
    bar.close()
    bar.close()  # closing twice writes once
    assert out.getvalue().splitlines()[-1] == "autoencoder: 100/100 (100%) it, 30s elapsed"
    assert len(out.getvalue().splitlines()) == 2


def test_a_short_stage_is_silent_off_a_terminal():
    out = io.StringIO()
    assert list(progress_bar(range(5), desc="heun", file=out)) == [0, 1, 2, 3, 4]
    assert out.getvalue() == ""


def test_iteration_counts_the_items_of_a_sized_iterable():
    out, clock = io.StringIO(), Clock()
    bar = PlainProgress(range(4), desc="inception features", unit="batch", file=out, every=1.0, clock=clock)
    for i in bar:
        clock.t = i + 1.0
    assert bar.total == 4 and bar.n == 4
    assert out.getvalue().splitlines()[0].startswith("inception features: 1/4 (25%) batch")


def test_a_terminal_gets_a_tqdm_bar_and_disabled_gets_nothing():
    from tqdm.auto import tqdm

    tty = FakeTTY()
    bar = progress_bar(total=3, desc="tasks", file=tty)
    assert isinstance(bar, tqdm)
    bar.update(3)
    bar.close()
    assert "\r" in tty.getvalue()
    assert isinstance(progress_bar(total=3, desc="tasks", file=tty, plain=True), PlainProgress)
    out = io.StringIO()
    off = progress_bar(range(3), desc="x", enabled=False, file=out)
    assert isinstance(off, NoProgress) and list(off) == [0, 1, 2]
    off.update(1), off.set_postfix(a=1), off.close()
    assert out.getvalue() == ""


def test_the_closing_line_carries_values_set_after_the_last_line(monkeypatch):
    monkeypatch.setenv("LATENTDIT_PROGRESS_EVERY", "0")  # a line at every update
    out = io.StringIO()
    bar = progress_bar(total=2, desc="train", unit="step", file=out)
    bar.update(2)
    bar.set_postfix(loss="0.5")
    bar.close()
    assert out.getvalue().splitlines()[-1].startswith("train: 2/2 (100%) step loss=0.5, ")
    monkeypatch.setenv("LATENTDIT_PROGRESS_EVERY", "nonsense")
    assert progress_bar(total=1, file=io.StringIO()).every == 30.0


def test_fmt_seconds():
    assert [fmt_seconds(s) for s in (0, 59.4, 75, 3700)] == ["0s", "59s", "1m15s", "1h01m"]
