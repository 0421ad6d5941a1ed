"""Where tensorfold keeps what it learns about a machine and what it fetches (caches)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$TENSORFOLD_CACHE`` or ``~/.cache/tensorfold``."""
    return Path(os.environ.get("TENSORFOLD_CACHE") or Path.home() / ".cache" / "tensorfold")
