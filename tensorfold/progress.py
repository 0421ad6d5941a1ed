"""Progress on stderr: a live tqdm bar on a terminal, and off a terminal (a CI job's log, a file)
one plain line every LOG_INTERVAL seconds once the work has run that long.

Off a terminal a bar used to be turned off, so a 14-minute `optimize --int8` in a CI job printed
nothing until it ended, and CI services stop a job that is silent for about 10 minutes. A line a
minute says what is running without filling the log; work shorter than a minute prints nothing.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterable
from typing import IO, Any

from tqdm import tqdm

LOG_INTERVAL = 60.0  # seconds between lines off a terminal, and before the first one

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class _Lines:
    """A file for tqdm that turns its carriage-return redraws into whole lines, at most one each
    LOG_INTERVAL: what a log file can hold."""

    def __init__(self, stream: IO[str], interval: float):
        self.stream = stream
        self.interval = interval
        self.last = time.monotonic()  # the first line comes one interval after the bar starts

    def write(self, text: str) -> None:
        parts = [_ANSI.sub("", p).strip() for p in re.split(r"[\r\n]", text)]
        parts = [p for p in parts if p]
        now = time.monotonic()
        if parts and now - self.last >= self.interval:
            self.last = now
            self.stream.write(f"progress: {parts[-1]}\n")
            self.stream.flush()

    def flush(self) -> None:
        self.stream.flush()


def bar(iterable: Iterable[Any] | None = None, *, show: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar for `show`ing work to the user: live on a terminal, a line a minute otherwise."""
    stream = sys.stderr
    if show and not stream.isatty():
        kwargs.update(
            file=_Lines(stream, LOG_INTERVAL),
            mininterval=LOG_INTERVAL / 4,  # tqdm's own redraws; the file keeps one a LOG_INTERVAL
            delay=LOG_INTERVAL,
            ascii=True,
            ncols=100,
        )
    return tqdm(iterable, disable=not show, **kwargs)
