"""Progress off a terminal: whole lines at most once an interval for all bars together, a line from
the heartbeat when a bar does not move, nothing for short work."""

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


def _log(monkeypatch) -> _Log:
    """stderr as a log file (set in the test itself: pytest's capture resets sys.stderr after fixtures)."""
    stream = _Log()
    monkeypatch.setattr("sys.stderr", stream)
    progress.start_clock()
    return stream


def test_a_log_gets_whole_lines_at_most_once_an_interval(monkeypatch):
    log = _log(monkeypatch)
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


def test_stages_shorter_than_the_interval_share_its_clock(monkeypatch):
    log = _log(monkeypatch)
    """magika's --max-output-error 0.02: 112 s of stages, each under a minute, and no line."""
    monkeypatch.setattr(progress, "LOG_INTERVAL", 0.25)
    for stage in ("statistics", "sensitivity", "budget"):
        for _ in progress.bar(range(10), desc=stage, leave=False):
            time.sleep(0.015)  # 0.15 s a stage: none alone reaches the interval
    assert log.getvalue().startswith("progress: ")


def test_a_bar_that_does_not_move_still_gets_its_line(monkeypatch):
    log = _log(monkeypatch)
    """hey_jarvis --int8: one int8 bar, 3 updates in 4.5 minutes, one line."""
    monkeypatch.setattr(progress, "LOG_INTERVAL", 0.2)
    bar = progress.bar(total=3, desc="int8", unit="model")
    time.sleep(0.9)  # no update: only the heartbeat can speak
    bar.close()
    assert "progress: int8:" in log.getvalue() and "0/3" in log.getvalue()


def test_short_work_in_a_log_prints_nothing(monkeypatch):
    log = _log(monkeypatch)
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
    assert not isinstance(bar, progress._LogBar)
    bar.update(3)
    bar.close()
    assert "train" in terminal.getvalue()
