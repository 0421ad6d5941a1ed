"""Progress on stderr: a live tqdm bar on a terminal, and off a terminal (a CI job's log, a file)
one plain line a LOG_INTERVAL while work runs, once it has run that long.

Off a terminal a bar used to be turned off, so a long `optimize --int8` in a CI job printed nothing
until it ended, and CI services stop a job that is silent for about 10 minutes. The lines
share one clock across the bars of a command (a run of several 40-second stages is not silent for
two minutes), and a bar that does not move for a LOG_INTERVAL (one int8 candidate's calibration)
still gets its line, from a heartbeat thread. Work shorter than a LOG_INTERVAL prints nothing.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Iterable
from typing import IO, Any

from tqdm import tqdm

LOG_INTERVAL = 60.0  # seconds between lines off a terminal, and before the first one

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_lock = threading.RLock()
_open: list[_LogBar] = []  # the bars writing lines, outermost first
_clock: dict[str, float | None] = {"last": None}  # when the last line was written (or the command began)
_heartbeat: list[threading.Thread] = []


def start_clock() -> None:
    """A command begins: its first line comes a LOG_INTERVAL from now (the CLI calls this)."""
    with _lock:
        _clock["last"] = time.monotonic()


def _emit(stream: IO[str], text: str) -> None:
    """One line if the last one is a LOG_INTERVAL old."""
    with _lock:  # a bar sets the clock when it opens
        now = time.monotonic()
        last = _clock["last"]
        if last is not None and now - last >= LOG_INTERVAL:
            _clock["last"] = now
            stream.write(f"progress: {text}\n")
            stream.flush()


class _Lines:
    """A file for tqdm that turns its carriage-return redraws into whole lines, at most one a
    LOG_INTERVAL for all bars together: what a log file can hold."""

    def __init__(self, stream: IO[str]):
        self.stream = stream

    def write(self, text: str) -> None:
        parts = [_ANSI.sub("", p).strip() for p in re.split(r"[\r\n]", text)]
        parts = [p for p in parts if p]
        if parts:
            _emit(self.stream, parts[-1])

    def flush(self) -> None:
        self.stream.flush()


class _LogBar(tqdm):
    """A bar off a terminal: known to the heartbeat while open."""

    def __init__(self, *args: Any, **kwargs: Any):
        self.log: IO[str] = kwargs["file"].stream
        super().__init__(*args, **kwargs)
        with _lock:
            if _clock["last"] is None:
                _clock["last"] = time.monotonic()
            _open.append(self)
        _ensure_heartbeat()

    def close(self) -> None:
        with _lock:
            if self in _open:
                _open.remove(self)
        super().close()


def _beat() -> None:
    """Every few seconds: where no line came for a LOG_INTERVAL, the innermost open bar's state."""
    while True:
        time.sleep(min(5.0, LOG_INTERVAL / 4))
        with _lock:
            bar = _open[-1] if _open else None
            if bar is None or bar.disable:
                continue
            try:
                text = _ANSI.sub("", str(bar)).strip()
            except Exception:  # noqa: BLE001 - a bar closing under us: the next beat tries again
                continue
            if text:
                _emit(bar.log, text)


def _ensure_heartbeat() -> None:
    with _lock:
        if not any(t.is_alive() for t in _heartbeat):
            thread = threading.Thread(target=_beat, name="tensorfold-progress", daemon=True)
            thread.start()
            _heartbeat[:] = [thread]


def bar(iterable: Iterable[Any] | None = None, *, show: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar for `show`ing work to the user: live on a terminal, a line a minute otherwise."""
    stream = sys.stderr
    if show and not stream.isatty():
        kwargs.update(file=_Lines(stream), mininterval=min(5.0, LOG_INTERVAL / 4), ascii=True, ncols=100)
        return _LogBar(iterable, **kwargs)
    return tqdm(iterable, disable=not show, **kwargs)
