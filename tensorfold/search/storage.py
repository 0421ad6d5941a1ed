"""Where a study lives: in memory, an SQLite file, a journal file shared by local workers, or any
SQLAlchemy database (PostgreSQL) shared by workers on many machines.

    None / ""                 in memory, this process only
    sqlite:///search.db       embedded file
    journal:search.log        Optuna's journal file (append-only, file-locked: safe for workers on one machine or NFS)
    postgresql://u:p@host/db  any SQLAlchemy URL (PostgreSQL needs psycopg: pip install 'tensorfold[postgres]')
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from pathlib import Path

import optuna
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

from tensorfold import signals
from tensorfold.errors import TensorfoldError
from tensorfold.graph.io import first_line

# a failed trial's reason goes into the report (and its traceback would drown a Ctrl-C's one line)
optuna.logging.set_verbosity(optuna.logging.ERROR)


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def storage_file(url: str | None) -> Path | None:
    """The local file a storage URL writes to (sqlite:///FILE, journal:FILE), if any."""
    if url and url.startswith("journal:"):
        return Path(url[len("journal:") :]).expanduser()
    if url and url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        return Path(url[len("sqlite:///") :]).expanduser()
    return None


def check_journal(path: Path, url: str) -> None:
    """Read a journal back whole before anything is appended to it: a record cut short (a worker
    killed while writing, a full disk) or a foreign file is refused by line, and how to repair it is
    said; appending after a torn line would make the study unreadable for good."""
    if not path.is_file():
        return
    data = path.read_bytes()
    lines = data.split(b"\n")
    offset = 0
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or "op_code" not in record:
                    raise ValueError("not a journal record")
            except ValueError:
                if number == len(lines) and line.startswith(b'{"op_code"'):  # no newline after it: cut short
                    raise TensorfoldError(
                        f"--storage {url}: line {number} is cut short (a worker stopped while "
                        f"writing it); repair with `truncate -s {offset} {path}` (drops that "
                        "line only) and run again"
                    ) from None
                raise TensorfoldError(
                    f"--storage {url}: line {number} is not an Optuna journal record; a corrupt "
                    "or foreign file, give another one"
                ) from None
        offset += len(line) + 1


def check_writable(path: Path, url: str) -> None:
    """A storage file the search can write to (a read-only mount refuses even root), before any work."""
    from tensorfold.outputs import check_output_dir

    try:
        if path.exists():
            with open(path, "ab"):
                pass
        else:
            check_output_dir(path.parent, f"--storage {url}:", create=False)
    except OSError as exc:
        raise TensorfoldError(f"--storage {url}: cannot write {path} ({exc.strerror})") from None


class _Journal(JournalFileBackend):
    """Optuna's journal file, appended under its lock as before; an append that fails (a full disk)
    is cut back to where it began, so the journal never holds a torn record."""

    def __init__(self, path: str):
        self._guard = JournalFileOpenLock(path)
        super().__init__(path, lock_obj=self._guard)
        self._journal_path = path
        self.failure: OSError | None = None

    def append_logs(self, logs) -> None:
        text = "\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n"
        # Ctrl-C or SIGTERM wait until the lock is released: raised between taking the lock and the
        # `try`, they would leave the lock file behind and the write of the failed trial would wait on it
        with signals.held():
            self._append(text)

    def _append(self, text: str) -> None:
        self._guard.acquire()
        try:
            size = os.path.getsize(self._journal_path) if os.path.exists(self._journal_path) else 0
            try:
                with open(self._journal_path, "ab") as f:
                    f.write(text.encode("utf-8"))
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.truncate(self._journal_path, size)
                exc.filename = exc.filename or self._journal_path
                self.failure = exc  # optuna turns it into "AssertionError: Should not reach."
                raise
        finally:
            self._guard.release()


def open_storage(url: str | None):
    if not url:
        return optuna.storages.InMemoryStorage()
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalStorage

        path = Path(url[len("journal:") :]).expanduser()
        if not path.name or not path.parent.is_dir():
            raise TensorfoldError(f"--storage {url}: folder {path.parent} does not exist")
        check_journal(path, url)
        check_writable(path, url)
        try:
            backend = _Journal(str(path))
            storage = JournalStorage(backend)
            storage.tensorfold_backend = backend
            return storage
        except ValueError as exc:  # JSONDecodeError: a torn or foreign file
            raise TensorfoldError(
                f"--storage {url}: not an Optuna journal ({first_line(exc)}); a corrupt or "
                "foreign file, give another one"
            ) from None
    if "://" not in url:
        raise TensorfoldError(
            f"--storage {redact(url)} is not a storage URL (use sqlite:///FILE, journal:FILE or "
            f"a database URL such as postgresql://user@host/db)"
        )
    if url.startswith("sqlite:///"):
        folder = Path(url[len("sqlite:///") :]).expanduser().parent
        if not folder.is_dir():
            raise TensorfoldError(f"--storage {url}: folder {folder} does not exist")
        if url != "sqlite:///:memory:":
            check_writable(Path(url[len("sqlite:///") :]).expanduser(), url)
    import sqlalchemy.exc

    last = None
    # workers starting together race to create the schema; the loser retries and finds it made
    for attempt in range(4):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True}, heartbeat_interval=None)
        except ImportError as exc:  # optuna wraps the driver's ModuleNotFoundError
            missing = getattr(exc.__cause__, "name", None) or getattr(exc, "name", None) or "its driver"
            hint = " (pip install 'tensorfold[postgres]')" if "psycopg" in str(missing) else ""
            raise TensorfoldError(f"--storage {redact(url)}: the database driver is missing: {missing}{hint}") from None
        except (sqlalchemy.exc.NoSuchModuleError, sqlalchemy.exc.ArgumentError) as exc:
            raise TensorfoldError(
                f"--storage {redact(url)} is not a database URL SQLAlchemy knows: {first_line(exc)}"
            ) from None
        except sqlalchemy.exc.OperationalError as exc:
            raise TensorfoldError(f"cannot reach --storage {redact(url)}: {first_line(exc)}") from None
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as exc:
            last = exc
            time.sleep(0.5 * (attempt + 1))
        except sqlalchemy.exc.DatabaseError as exc:  # e.g. an SQLite file that is not a database
            raise TensorfoldError(f"--storage {redact(url)}: not a usable database ({first_line(exc)})") from None
    raise TensorfoldError(f"--storage {redact(url)}: could not set up the study tables: {first_line(last)}")


def write_failure(storage) -> OSError | None:
    """The error a journal write met (a full disk), which optuna reports as an assertion of its own."""
    backend = getattr(storage, "tensorfold_backend", None)
    return getattr(backend, "failure", None)


def open_study(storage, name: str, directions: list[str], meta: dict, sampler):
    """Create the study, or join it if it exists; a study made for other objectives, another model or
    another search space is refused rather than mixed."""
    try:
        study = optuna.create_study(
            storage=storage, study_name=name, directions=directions, sampler=sampler, load_if_exists=True
        )
    except ValueError as exc:  # a torn or foreign journal file (JSONDecodeError), directions that differ
        raise TensorfoldError(
            f"cannot open study '{name}' in its storage: {first_line(exc)} (a corrupt or foreign storage file?)"
        ) from None
    except Exception as exc:
        import sqlalchemy.exc

        if isinstance(exc, sqlalchemy.exc.DatabaseError):
            raise TensorfoldError(
                f"cannot open study '{name}': the database is not usable ({first_line(exc)})"
            ) from None
        raise
    have = study.user_attrs.get("tensorfold")
    if have is None:
        study.set_user_attr("tensorfold", meta)
        return study
    if have.get("objectives") != meta["objectives"]:
        raise TensorfoldError(
            f"study '{name}' was created with objectives {','.join(have.get('objectives', []))}; "
            f"this run asks for {','.join(meta['objectives'])} (use another --study)"
        )
    for key, what in (
        ("model", "another model"),
        ("space", "another search space (--methods/--space)"),
        ("constraints", "other constraints (--max-error/--target-latency)"),
        ("evaluation", "another evaluation (latency target, data or recovery steps)"),
    ):
        if have.get(key) != meta.get(key):
            raise TensorfoldError(
                f"study '{name}' was created for {what}: {have.get(key)} vs {meta.get(key)} (use another --study)"
            )
    return study
