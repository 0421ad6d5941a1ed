"""Messages to the user on stderr that are not errors: one `warning:` line each."""

from __future__ import annotations

import sys


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)
