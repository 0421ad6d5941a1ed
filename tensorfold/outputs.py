"""Everything tensorfold writes goes through here: checked against every input, written atomically.

The rules (docs/security.md):
- An output is never one of the paths the user gave as input (model, teacher, peers, data,
  inputs, calibration, config, storage): `guard_inputs` registers them for the length of a
  command, and every write below refuses a target that is one of them or lies inside an input
  folder. Identity is by `os.path.samefile` after links are resolved, so a symlink or a second
  hard link to an input is caught too.
- An existing output must be a regular file: renaming over /dev/null, a FIFO or a socket would
  replace the node (as root) instead of writing to it.
- A write goes to a hidden temp file in the target's folder, then `os.replace`: a reader sees
  the old file or the new one, never half of one. The temp file is removed on any exception,
  KeyboardInterrupt and SIGTERM included (the CLI turns SIGTERM into `errors.Terminated`).
- A new file gets the mode a plain `open()` would give it (0666 minus the umask), not
  mkstemp's 0600.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import functools
import inspect
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tensorfold.errors import TensorfoldError

_INPUTS: contextvars.ContextVar[tuple[Path, ...]] = contextvars.ContextVar("tensorfold_inputs", default=())


@contextlib.contextmanager
def guard_inputs(*paths) -> Iterator[None]:
    """While the block runs, no write may land on any of `paths` (files or folders; None ignored)."""
    given = tuple(Path(p) for p in paths if p is not None and str(p) != "" and Path(p).exists())
    given += tuple(data for p in given for data in _external_data_files(p))
    token = _INPUTS.set(_INPUTS.get() + given)
    try:
        yield
    finally:
        _INPUTS.reset(token)


def guarded(*names: str):
    """Decorator: the named arguments (paths, or lists of paths) are inputs for the call's length."""

    def wrap(fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def inner(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            given = []
            for name in names:
                value = bound.arguments.get(name)
                given.extend(value if isinstance(value, (list, tuple)) else [value])
            with guard_inputs(*(v for v in given if isinstance(v, (str, os.PathLike)))):
                return fn(*args, **kwargs)

        return inner

    return wrap


def _external_data_files(path: Path) -> list[Path]:
    """The weight files an ONNX model points at (they are inputs as much as the model is)."""
    # only a small file can be a header pointing at external weights: a large one holds its
    # weights inline, and parsing it here would read the whole model once more
    if not path.is_file() or path.suffix != ".onnx" or path.stat().st_size > 64 * 2**20:
        return []
    try:
        import onnx

        header = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - an unreadable model is reported by whoever loads it
        return []
    names = {entry.value for t in header.graph.initializer for entry in t.external_data if entry.key == "location"}
    return [path.parent / n for n in names if (path.parent / n).is_file()]


def input_conflict(path: str | os.PathLike) -> Path | None:
    """The registered input that writing `path` would overwrite or write into, if any. A path
    inside an input folder is refused whether it exists yet or not (one rule, run after run)."""
    path = Path(path)
    resolved = path.resolve()
    for given in _INPUTS.get():
        if given.is_dir():
            if resolved.is_relative_to(given.resolve()):
                return given
            continue
        try:
            if path.exists() and os.path.samefile(given, path):
                return given
        except OSError:
            continue
    return None


def check_output(path: str | os.PathLike, option: str = "-o") -> Path:
    """Everything that can be known about an output file before any work: refuse now, not after it."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise TensorfoldError(f"{option} {path} is a folder; give a file name")
    refuse_target(path, f"{option} ")
    if not folder.is_dir():
        # the nearest existing part of the path says which mistake it is (a file named as a folder)
        existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if existing is not None and not existing.is_dir():
            raise TensorfoldError(f"{option} {path}: {existing} is a file, not a folder")
        raise TensorfoldError(f"{option} {path}: folder {folder} does not exist")
    _probe_writable(folder, f"{option} {path}")
    return path


def _probe_writable(folder: Path, what: str) -> None:
    """Create and remove a temp file: the only test that also holds for root, read-only mounts
    and pseudo file systems (/proc, /sys), where os.access says yes."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".tensorfold-probe.", dir=folder)
    except OSError as exc:
        # /proc answers a new file with ENOENT, which reads as if the folder were missing
        why = "files cannot be created there" if exc.errno == errno.ENOENT else exc.strerror
        raise TensorfoldError(f"{what}: folder {folder} is not writable ({why})") from None
    os.close(fd)
    os.unlink(probe)


def check_output_dir(path: str | os.PathLike, option: str = "--output-dir", create: bool = True) -> Path:
    """An output folder: refused when it is a file, an input folder or not writable; created
    (with its parents) unless `create` is False."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise TensorfoldError(f"{option} {path} exists and is not a folder")
    conflict = input_conflict(path)
    if conflict is not None:
        raise TensorfoldError(
            f"{option} {path} is or lies inside an input ({conflict}); tensorfold never writes into its inputs"
        )
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise TensorfoldError(f"{option} {path}: {existing} is not a folder")
    _probe_writable(existing, f"{option} {path}")
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TensorfoldError(f"{option} {path}: cannot create the folder: {exc.strerror}") from None
    return path


def refuse_special(path: Path) -> None:
    """An existing output must be a regular file (not a folder, device, FIFO or socket)."""
    path = Path(path)
    if path.exists() and not path.is_file():
        kind = "a folder" if path.is_dir() else "not a regular file (a device, FIFO or socket)"
        raise TensorfoldError(f"{path} is {kind}; give a regular file name")


def refuse_target(path: Path, label: str = "") -> None:
    """An existing non-regular file, or an input: never written (`label` prefixes the message)."""
    refuse_special(path)
    conflict = input_conflict(path)
    if conflict is not None:
        where = "lies inside the input folder" if conflict.is_dir() else "is an input"
        raise TensorfoldError(f"{label}{path} {where} ({conflict}); tensorfold never overwrites its inputs")


def new_file_mode() -> int:
    """0666 minus the process umask: what open() would create."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def temp_beside(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A unique hidden temp file in `path`'s folder, removed unless the caller renamed it away."""
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=folder)
    except OSError as exc:
        raise TensorfoldError(f"cannot write {path}: {exc.strerror} in folder {folder}") from None
    os.close(fd)
    _LIVE.add(Path(tmp))
    try:
        yield Path(tmp)
    finally:
        _LIVE.discard(Path(tmp))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temp path to write; on success it replaces `path` (with new_file_mode()), on any
    failure or interrupt it is removed and `path` is untouched."""
    path = Path(path)
    refuse_target(path)
    with temp_beside(path, suffix) as tmp:
        yield tmp
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def json_safe(obj):
    """Plain JSON values: NaN and infinities -> None (bare NaN is not JSON), numpy scalars and
    arrays -> Python numbers and lists, paths and anything else -> str."""
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if obj is None or isinstance(obj, (str, bool)):
        return obj
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    return str(obj)


def json_text(obj) -> str:
    """Indented JSON of `obj` through json_safe: never a bare NaN."""
    return json.dumps(json_safe(obj), indent=2, allow_nan=False)


def write_json_atomic(path: str | os.PathLike, obj) -> Path:
    return write_text_atomic(path, json_text(obj))


# --- folders a command writes several files into -------------------------------------------------

MANIFEST = ".tensorfold.json"  # in an output folder: the names tensorfold wrote there


class OutputFolder:
    """A folder a command writes several files into (search results, pipeline stages, bench rows,
    recovery checkpoints), under the names (globs) the command declares.

    `check()`, before any work: the folder is refused when it is a file, an input or inside one, or
    not writable, and when it holds, under a name the command writes, an input or a file tensorfold
    did not write there. What it wrote is listed in the folder's manifest (MANIFEST), so a user's own
    `point-9.onnx`, `front.json` or `last.pt` is never replaced or deleted, and a symlinked folder
    is judged by what it holds, wherever it points.

    Unstaged, every `file()` is written atomically where it belongs as the work goes (checkpoints,
    bench rows: progress is kept). Staged (`staged=True`: results written at the end), files go to a
    hidden folder inside and `commit()` moves them into place together, so a failure half-way (a full
    disk) leaves the folder as it was. `failed()` removes what this run created, and the folder when
    this run made it.
    """

    def __init__(self, path: str | os.PathLike, option: str, names: tuple[str, ...], staged: bool = False):
        self.path, self.option, self.names, self.staged = Path(path), option, tuple(names), staged
        self.made = False
        self._created: list[str] = []  # names new in this run (removed by failed())
        self._stage: Path | None = None
        self._made_manifest = False
        self._recorded: set[str] = set()  # names this object has put in the manifest

    def __repr__(self) -> str:
        return f"OutputFolder({str(self.path)!r})"

    def _matches(self, name: str) -> bool:
        import fnmatch

        return any(fnmatch.fnmatchcase(name, g) for g in self.names)

    def owned(self) -> set[str]:
        """The names the manifest says tensorfold wrote here (empty for a foreign or missing manifest)."""
        try:
            data = json.loads((self.path / MANIFEST).read_text())
        except (OSError, ValueError):
            return set()
        files = data.get("files") if isinstance(data, dict) and data.get("written_by") == "tensorfold" else None
        return {f for f in files if isinstance(f, str)} if isinstance(files, list) else set()

    def check(self) -> OutputFolder:
        check_output_dir(self.path, self.option, create=False)
        if not self.path.is_dir():
            return self
        owned = self.owned()
        for entry in sorted(self.path.iterdir()):
            if not self._matches(entry.name):
                continue
            conflict = input_conflict(entry)
            if conflict is not None:
                raise TensorfoldError(
                    f"{self.option} {self.path} holds an input, {entry}, under a name tensorfold "
                    "writes there; give another folder"
                )
            if entry.name not in owned:
                # a folder from a tensorfold before the manifest reads as foreign too: say so
                older = (
                    "" if (self.path / MANIFEST).exists() else f" (no {MANIFEST} there: not written by this version)"
                )
                raise TensorfoldError(
                    f"{self.option} {self.path} holds {entry.name}, which tensorfold did not "
                    f"write there and would replace{older}; move it or give another folder"
                )
        return self

    def open(self) -> OutputFolder:
        """Create the folder (with its parents) if needed; check() first."""
        if not self.path.is_dir():
            try:
                self.path.mkdir(parents=True)
            except FileExistsError:
                pass
            except OSError as exc:
                raise TensorfoldError(f"{self.option} {self.path}: cannot create the folder: {exc.strerror}") from None
            else:
                self.made = True
        return self

    def _record(self, names) -> None:
        if set(names) <= self._recorded:  # a checkpoint saved at every evaluation: no manifest read each time
            return
        self._recorded |= set(names)
        listed = self.owned()
        new = set(names) - listed
        if new:
            self._made_manifest |= not (self.path / MANIFEST).exists()
            self._write_manifest(listed | new)

    def _write_manifest(self, names) -> None:
        write_json_atomic(self.path / MANIFEST, {"written_by": "tensorfold", "files": sorted(names)})

    def file(self, name: str) -> Path:
        """The path to write `name` to (recorded in the manifest first: a crash after the write still
        leaves a file tensorfold knows as its own)."""
        if not self._matches(name):
            raise ValueError(f"{name} is not among the names declared for {self.path}")
        self.open()
        target = self.path / name
        if target.is_dir() and not target.is_symlink():  # a declared sub-folder (checkpoints, a stage's)
            conflict = input_conflict(target)
            if conflict is not None:
                raise TensorfoldError(f"{self.option} {target} is or holds an input ({conflict})")
        else:
            refuse_target(target, f"{self.option} ")
        if self.staged:
            if self._stage is None:
                self._stage = Path(tempfile.mkdtemp(prefix=".tensorfold-staging.", suffix=".tmp", dir=self.path))
                _LIVE.add(self._stage)
            return self._stage / name
        if not target.exists() and not target.is_symlink():
            self._created.append(name)
        self._record([name])
        return target

    def commit(self, stale: tuple[str, ...] = ()) -> None:
        """Staged files into place; then an earlier run's files matching `stale` (globs) that this run
        did not write again are removed (they would read as this run's), only ones the manifest lists."""
        import fnmatch

        names = sorted(p.name for p in self._stage.iterdir()) if self._stage is not None else []
        for name in names:
            if not self._matches(name):
                raise ValueError(f"{name} is not among the names declared for {self.path}")
            target = self.path / name
            if (self._stage / name).is_dir() and target.is_dir() and not target.is_symlink():
                if (conflict := input_conflict(target)) is not None:  # a declared sub-folder: replaced whole
                    raise TensorfoldError(f"{self.option} {target} is or holds an input ({conflict})")
            else:
                refuse_target(target, f"{self.option} ")
        self._record(names)
        for name in names:
            target = self.path / name
            if not target.exists():
                self._created.append(name)
            if (self._stage / name).is_dir():
                _remove(target)  # an earlier run's sub-folder (checked as ours): replaced whole
            else:
                os.chmod(self._stage / name, new_file_mode())
            os.replace(self._stage / name, target)
        self._drop_stage()
        gone = [n for n in self.owned() if n not in names and any(fnmatch.fnmatchcase(n, g) for g in stale)]
        for name in gone:
            _remove(self.path / name)
        if gone:
            self._write_manifest(self.owned() - set(gone))

    def _drop_stage(self) -> None:
        import shutil

        if self._stage is not None:
            shutil.rmtree(self._stage, ignore_errors=True)
            _LIVE.discard(self._stage)
            self._stage = None

    def keep(self) -> None:
        """What this run wrote stays even if it fails from here on (a checkpoint the error names, to
        resume from)."""
        self._created = []
        self.made = False

    def failed(self) -> None:
        """After a failure: the staged files and the files this run created go, and the folder when this
        run made it; what was there before stays."""
        self._drop_stage()
        for name in self._created:
            _remove(self.path / name)
        if self._created and self.path.is_dir():
            left = self.owned() - set(self._created)
            with contextlib.suppress(OSError, TensorfoldError):
                if left or not self._made_manifest:
                    self._write_manifest(left)
                else:
                    (self.path / MANIFEST).unlink()
        self._created = []
        self._recorded.clear()
        if self.made and self.path.is_dir():
            with contextlib.suppress(OSError):
                self.path.rmdir()  # only when nothing else is in it

    @contextlib.contextmanager
    def writing(self) -> Iterator[OutputFolder]:
        """failed() on an error; an interrupt (Ctrl-C, SIGTERM) keeps what was written, to resume from,
        unless the folder is staged (nothing is in place before commit(): there is nothing to resume)."""
        try:
            yield self
        except Exception:
            self.failed()
            raise
        except BaseException:
            if self.staged:
                self.failed()
            raise
        finally:
            self._drop_stage()


def _remove(target: Path) -> None:
    """A file (or a link) or a whole folder this tool wrote; gone already is fine."""
    import shutil

    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            target.unlink()


_LIVE: set[Path] = set()  # temp files and staging folders now being written (see remove_live)


def remove_live() -> None:
    """Remove every temp file and staging folder still being written: for a process about to exit
    without unwinding (a signal that a long native call kept Python from seeing)."""
    import shutil

    for path in list(_LIVE):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()
    _LIVE.clear()
