"""The user's arrays from NumPy files: one .npz of named arrays, or a folder of .npy/.npz files.

A folder is what pipelines often dump: one .npy per sample (a single-input model), or .npz files
of arrays named after the model's inputs, each holding one sample or a batch. It reads as one .npz
would: each name's arrays joined along the first axis, the files in path order. Nothing is
unpickled (`allow_pickle=False`: object arrays are refused), and no link out of the folder is
followed.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from tensorfold.errors import TensorfoldError

ARRAY_SUFFIXES = (".npy", ".npz")
NPY_NAME = "x"  # a .npy file's one array: the name a single-input model's samples take

_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _numpy_file(path: Path) -> bool:
    """Whether the file starts as an .npz (a zip) or an .npy does."""
    try:
        with path.open("rb") as f:
            head = f.read(6)
    except OSError:
        return False
    return head.startswith(b"PK") or head == b"\x93NUMPY"


def read_numpy_file(path: Path, option: str, single: str = "x=array", npy: bool = False) -> dict[str, np.ndarray]:
    """Every array of an .npz (and with `npy`, the one array of an .npy, as NPY_NAME), read whole
    and checked: never unpickled, a truncated or foreign file is one line, and floats beyond
    float32's range (what the models take) are refused here rather than turning into Inf later."""
    try:
        data = np.load(path, allow_pickle=False)
        if isinstance(data, np.ndarray):
            if not npy:
                raise TensorfoldError(
                    f"{option} {path}: a single array (.npy), not an .npz of named arrays; "
                    f"save it with np.savez(path, {single})"
                )
            arrays = {NPY_NAME: data}
        else:
            with data:
                arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "allow_pickle" in why:  # numpy reads what is neither .npz nor .npy as a pickle
            why = (
                "it holds object arrays, which would have to be unpickled; save plain numeric arrays"
                if _numpy_file(path)
                else "it is not a NumPy file; save the samples with np.savez"
            )
        raise TensorfoldError(f"{option} {path}: cannot read as {'.npy/' if npy else ''}.npz ({why})") from None
    for name, arr in arrays.items():
        if arr.dtype.kind == "f" and arr.dtype.itemsize > 4 and arr.size:
            finite = arr[np.isfinite(arr)]
            if finite.size and float(np.abs(finite).max()) > _FLOAT32_MAX:
                raise TensorfoldError(
                    f"{option} {path}: array {name} holds values beyond float32's range "
                    f"(up to {float(np.abs(finite).max()):.3g}); the model computes in float32"
                )
    return arrays


def array_files(root: Path) -> list[Path]:
    """The .npy/.npz files of a folder and its subfolders, in path order; [] when it holds none."""
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in ARRAY_SUFFIXES and p.is_file())
    inside = root.resolve()
    for p in files:
        # as ONNX external data and image folders: a link out of the folder is refused
        if not p.resolve().is_relative_to(inside):
            raise TensorfoldError(
                f"{root}: {p.relative_to(root)} links to {p.resolve()}, outside the folder; copy the file in instead"
            )
    return files


def read_array_folder(root: Path, option: str, ranks: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
    """A folder of .npy or .npz files as one .npz: each array name's samples from every file joined
    along the first axis. `ranks` (the model's inputs' ranks, where known) tell one sample from a
    batch: an array one axis short of its input's rank is one sample. Arrays of other names (labels
    `y`) hold one sample where they are 0-d. Every file must hold the same names."""
    files = array_files(root)
    if not files:
        raise TensorfoldError(f"{option} {root}: no .npy or .npz files in it or in its subfolders")
    kinds = {p.suffix.lower() for p in files}
    if len(kinds) > 1:
        raise TensorfoldError(
            f"{option} {root}: holds both .npy and .npz files; keep one kind (.npz files name their arrays)"
        )
    ranks = dict(ranks or {})
    if kinds == {".npy"} and NPY_NAME not in ranks:
        if len(ranks) > 1:
            raise TensorfoldError(
                f"{option} {root}: a .npy file holds one array, and the model takes {len(ranks)} inputs "
                f"({', '.join(ranks)}); save one .npz per sample (or batch) with an array per input"
            )
        ranks = {NPY_NAME: ranks.popitem()[1]} if ranks else {}
    parts: dict[str, list[np.ndarray]] = {}
    first: dict[str, tuple[Path, tuple[int, ...]]] = {}
    names: set[str] | None = None
    for path in files:
        arrays = read_numpy_file(path, option, npy=True)
        if names is None:
            names = set(arrays)
        elif set(arrays) != names:
            raise TensorfoldError(
                f"{option} {path}: holds arrays {sorted(arrays)}, {files[0].name} holds {sorted(names)}: "
                "every file of the folder must hold the same names"
            )
        for name, arr in arrays.items():
            rank = ranks.get(name)
            one = arr.ndim == 0 if rank is None else arr.ndim == rank - 1
            if rank is not None and not one and arr.ndim != rank:
                raise TensorfoldError(
                    f"{option} {path}: array {name} has shape {list(arr.shape)}; the model's input takes "
                    f"{rank} axes (a batch) or {rank - 1} (one sample)"
                )
            sample = arr[None] if one else arr
            shape = sample.shape[1:]
            if name in first and first[name][1] != shape:
                where, seen = first[name]
                raise TensorfoldError(
                    f"{option} {root}: array {name} holds samples of {list(shape)} in {path.relative_to(root)} "
                    f"and of {list(seen)} in {where.relative_to(root)}; samples must share a shape to be "
                    "stacked (pad sequences to one length, resize images)"
                )
            first.setdefault(name, (path, shape))
            parts.setdefault(name, []).append(sample)
    return {name: np.concatenate(arrays) for name, arrays in parts.items()}
