"""Progress off a terminal: whole lines at most once an interval, nothing for short work."""

from __future__ import annotations

import io
import time

from tensorfold import progress


class _Log(io.StringIO):
    def isatty(self) -> bool:
        return False


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_whole_lines_at_most_once_an_interval(monkeypatch):
    log = _Log()
    monkeypatch.setattr("sys.stderr", log)
    monkeypatch.setattr(progress, "LOG_INTERVAL", 0.2)
    bar = progress.bar(total=30, desc="int8", unit="model")
    for _ in range(30):
        time.sleep(0.02)
        bar.update()
        bar.set_postfix_str("scoring")  # a refresh outside tqdm's own interval: still rate-limited
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and "\x1b" not in log.getvalue()
    assert 1 <= len(lines) <= 4, lines  # 0.6 s of work at one line per 0.2 s, the first after 0.2 s
    assert all(line.startswith("progress: int8:") and "/30" in line for line in lines)


def test_short_work_in_a_log_prints_nothing(monkeypatch):
    log = _Log()
    monkeypatch.setattr("sys.stderr", log)
    for _ in progress.bar(range(100), desc="calibration statistics", leave=False):
        pass
    assert log.getvalue() == ""


def test_hidden_bar_prints_nothing_anywhere(monkeypatch):
    for stream in (_Log(), _Terminal()):
        monkeypatch.setattr("sys.stderr", stream)
        monkeypatch.setattr(progress, "LOG_INTERVAL", 0.0)
        for _ in progress.bar(range(5), show=False, desc="x"):
            time.sleep(0.01)
        assert stream.getvalue() == ""


def test_a_terminal_gets_the_live_bar(monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    bar = progress.bar(total=3, desc="train", unit="step")
    assert not isinstance(bar.fp, progress._Lines)
    bar.update(3)
    bar.close()
    assert "train" in terminal.getvalue()
