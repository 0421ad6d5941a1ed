"""What every report shares: typed fields whose order is its JSON form (`as_dict`), a terminal
rendering beside it, and the number formats the tables use."""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from dataclasses import field, fields
from typing import Any, TypeVar

from rich.console import Console

R = TypeVar("R", bound="Report")

# a field for Python callers (and the CLI) that is no key of the JSON
NOT_JSON = {"json": False}


def sometimes() -> Any:
    """A key the command writes only in some runs: left out of the JSON while None."""
    return field(default=None, metadata={"sometimes": True})


class Report(ABC):
    """A command's result. A report is a dataclass: its fields are the data (what Python callers
    read); `as_dict` is the JSON object `--json` prints, `render` the terminal view of the same data."""

    def as_dict(self) -> dict[str, Any]:
        """The fields in their order are the JSON keys (a report whose JSON differs overrides this)."""
        out = {}
        for f in fields(self):  # type: ignore[arg-type]  # every subclass is a dataclass
            value = getattr(self, f.name)
            if f.metadata.get("json") is False or (value is None and f.metadata.get("sometimes")):
                continue
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls: type[R], d: dict[str, Any]) -> R:
        """From the dict the command's core returns (search/, recovery/ lie below report/ and know
        no report types); a key without a field is an error, not dropped."""
        return cls(**d)

    @abstractmethod
    def render(self, console: Console) -> None:
        """The terminal view: every command's report draws its own tables."""


def make_console() -> Console:
    # piped output (CI logs, files) is read later in full: don't wrap tables at 80 columns
    return Console() if sys.stdout.isatty() else Console(width=200)


def warn(message: str) -> None:
    """A warning goes to stderr, apart from the report on stdout."""
    print(f"warning: {message}", file=sys.stderr)


def ratio(before: float | None, after: float | None) -> float | None:
    if before is None or after in (None, 0):
        return None
    return round(before / after, 4)


def fmt_ratio(before: float | None, after: float | None) -> str:
    r = ratio(before, after)
    return "" if r is None else f"{r:.2f}x"


def fmt_count(v: float | None) -> str:
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
