"""What the machine can do: bounds on the counts a user may ask for (threads, worker processes).

Asking onnxruntime for a million threads hangs while memory grows, and a million DataLoader workers
forks hundreds of processes: a count beyond a small multiple of the cores helps nothing, so it is
refused with one line before any work.
"""

from __future__ import annotations

import os

from tensorfold.errors import TensorfoldError

PER_CORE = 4  # threads or worker processes per core a user may ask for


def cores() -> int:
    """The cores this process may run on (its affinity: a container's share, not the host's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def most() -> int:
    return PER_CORE * cores()


SEED_MAX = 2**32 - 1  # numpy and torch seeds are 32-bit

# warm calls onnxruntime's profiler times for `profile`'s per-op and per-node tables, at most: its
# event file grows with calls x nodes, and the latency table has already timed --runs calls
PROFILED_RUNS = 10


def check_seed(value: int) -> int:
    if not 0 <= value <= SEED_MAX:
        raise TensorfoldError(f"--seed must be between 0 and {SEED_MAX} (got {value})")
    return value


def check_count(value: int, option: str | None = "--threads") -> int:
    """`value` (0: all cores) when the machine can use it; otherwise one line naming the bound
    (`option` None: the CLI names the option itself)."""
    name = f"{option} " if option else ""
    if value < 0:
        raise TensorfoldError(f"{name}must be >= 0 (got {value})")
    if value > most():
        raise TensorfoldError(
            f"{name}{value} is more than this machine can use: at most {most()} "
            f"({PER_CORE} per core, {cores()} cores here)"
        )
    return value
