"""What every report shares: the dict form (JSON as it is) with a terminal rendering beside it,
and the number formats the tables use."""

from __future__ import annotations

import sys

from rich.console import Console


class Report(dict):
    """A command's result. The dict is the data (what `--json` prints and Python callers index);
    `render` is the terminal view of the same data, and nothing else."""

    def as_dict(self) -> dict:
        return dict(self)

    def render(self, console: Console) -> None:
        """A report without tables of its own prints its data; each command's report overrides this."""
        from tensorfold.outputs import json_text

        console.print_json(json_text(self.as_dict()))


def make_console() -> Console:
    # piped output (CI logs, files) is read later in full: don't wrap tables at 80 columns
    return Console() if sys.stdout.isatty() else Console(width=200)


def warn(message: str) -> None:
    """A warning goes to stderr, apart from the report on stdout."""
    print(f"warning: {message}", file=sys.stderr)


def ratio(before, after):
    if before is None or after in (None, 0):
        return None
    return round(before / after, 4)


def fmt_ratio(before, after) -> str:
    r = ratio(before, after)
    return "" if r is None else f"{r:.2f}x"


def fmt_count(v) -> str:
    """FLOPs and other large counts: 1.23G, 4.56M, 7.89k."""
    if v is None:
        return "unknown"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.2f}{unit}"
    return str(v)


def fmt_bytes(v: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if v >= scale:
            return f"{v / scale:.2f} {unit}"
    return f"{v} B"
