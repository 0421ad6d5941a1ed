"""Real files as a content-type classifier's inputs: magika's byte features of files this system
ships (the Python standard library, /usr/share, /usr/lib), read as magika 1.0.3 reads a file.

magika's standard_v3_3 model takes the first and last 1024 bytes of a file (within its first and
last 4096-byte blocks, whitespace stripped at the start and at the end), padded with token 256:
an int32 (N, 2048) array. The files are drawn across kinds (by extension, a few of each) with a
seeded order, so the calibration and test draws hold different files of the same mix."""

from __future__ import annotations

import json
import os
import sysconfig
from functools import cache
from pathlib import Path

import numpy as np

from tensorfold.bench.real_models import MAGIKA, fetch_wheel_model

ROOTS = (sysconfig.get_paths()["stdlib"], "/usr/share", "/usr/lib")
PER_KIND = 2000  # files kept per extension while walking (the walk is sorted: reruns see the same)


@cache
def system_files() -> tuple[Path, ...]:
    """Readable regular files of ROOTS, up to PER_KIND per extension, in a seeded order mixing kinds."""
    by_kind: dict[str, list[Path]] = {}
    for root in ROOTS:
        for folder, dirs, names in os.walk(root):
            dirs.sort()
            for name in sorted(names):
                path = Path(folder, name)
                kind = path.suffix.lower()
                kept = by_kind.setdefault(kind, [])
                if len(kept) >= PER_KIND:
                    continue
                try:
                    if path.is_symlink() or not path.is_file() or path.stat().st_size < 16:
                        continue
                except OSError:
                    continue
                kept.append(path)
    rng = np.random.default_rng(0)
    drawn: list[Path] = []
    for kind in sorted(by_kind):
        files = by_kind[kind]
        drawn += [files[i] for i in rng.permutation(len(files))[:12]]  # a dozen of each kind at most
    return tuple(drawn[i] for i in rng.permutation(len(drawn)))


def magika_features(path: Path, config: dict) -> list[int]:
    """One file's model input, as magika 1.0.3's Python client builds it (beg and end bytes only)."""
    begin, end, block, pad = config["beg_size"], config["end_size"], config["block_size"], config["padding_token"]
    size = path.stat().st_size
    n = min(block, size)
    with path.open("rb") as f:
        head = f.read(n).lstrip()
        f.seek(size - n)
        tail = f.read(n).rstrip()
    first = list(head[:begin]) + [pad] * max(0, begin - len(head))
    last = list(tail[-end:]) if tail else []
    return first + [pad] * (end - len(last)) + last


def magika_inputs(n: int, seed: int) -> np.ndarray:
    """(n, 2048) int32 features of `n` system files; seeds 1 and 2 draw disjoint files."""
    config = json.loads(fetch_wheel_model(MAGIKA, "config").read_text())
    files = system_files()
    start = (seed - 1) * n
    chosen = files[start : start + n]
    if len(chosen) < n:
        raise ValueError(f"only {len(files)} system files found; {n} from position {start} asked")
    return np.asarray([magika_features(p, config) for p in chosen], dtype=np.int32)
