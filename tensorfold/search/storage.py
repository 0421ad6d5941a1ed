"""Where a study lives: in memory, an SQLite file, a journal file shared by local workers, or any
SQLAlchemy database (PostgreSQL) shared by workers on many machines.

    None / ""                 in memory, this process only
    sqlite:///search.db       embedded file
    journal:search.log        Optuna's journal file (append-only, file-locked: safe for workers on one machine or NFS)
    postgresql://u:p@host/db  any SQLAlchemy URL (PostgreSQL needs psycopg: pip install 'tensorfold[postgres]')
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import optuna

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
        return Path(url[len("journal:"):]).expanduser()
    if url and url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        return Path(url[len("sqlite:///"):]).expanduser()
    return None


def open_storage(url: str | None):
    if not url:
        return optuna.storages.InMemoryStorage()
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(url[len("journal:"):]).expanduser()
        if not path.name or not path.parent.is_dir():
            raise TensorfoldError(f"--storage {url}: folder {path.parent} does not exist")
        try:
            return JournalStorage(JournalFileBackend(str(path)))
        except ValueError as exc:   # JSONDecodeError: a torn or foreign file
            raise TensorfoldError(f"--storage {url}: not an Optuna journal ({first_line(exc)}); a corrupt or "
                                  "foreign file, give another one") from None
    if "://" not in url:
        raise TensorfoldError(f"--storage {redact(url)} is not a storage URL (use sqlite:///FILE, journal:FILE or "
                              f"a database URL such as postgresql://user@host/db)")
    if url.startswith("sqlite:///"):
        folder = Path(url[len("sqlite:///"):]).expanduser().parent
        if not folder.is_dir():
            raise TensorfoldError(f"--storage {url}: folder {folder} does not exist")
    import sqlalchemy.exc

    last = None
    # workers starting together race to create the schema; the loser retries and finds it made
    for attempt in range(4):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True}, heartbeat_interval=None)
        except ImportError as exc:   # optuna wraps the driver's ModuleNotFoundError
            missing = getattr(exc.__cause__, "name", None) or getattr(exc, "name", None) or "its driver"
            hint = " (pip install 'tensorfold[postgres]')" if "psycopg" in str(missing) else ""
            raise TensorfoldError(f"--storage {redact(url)}: the database driver is missing: {missing}{hint}") from None
        except (sqlalchemy.exc.NoSuchModuleError, sqlalchemy.exc.ArgumentError) as exc:
            raise TensorfoldError(f"--storage {redact(url)} is not a database URL SQLAlchemy knows: "
                                  f"{first_line(exc)}") from None
        except sqlalchemy.exc.OperationalError as exc:
            raise TensorfoldError(f"cannot reach --storage {redact(url)}: {first_line(exc)}") from None
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as exc:
            last = exc
            time.sleep(0.5 * (attempt + 1))
        except sqlalchemy.exc.DatabaseError as exc:   # e.g. an SQLite file that is not a database
            raise TensorfoldError(f"--storage {redact(url)}: not a usable database ({first_line(exc)})") from None
    raise TensorfoldError(f"--storage {redact(url)}: could not set up the study tables: {first_line(last)}")



def open_study(storage, name: str, directions: list[str], meta: dict, sampler):
    """Create the study, or join it if it exists; a study made for other objectives, another model or
    another search space is refused rather than mixed."""
    try:
        study = optuna.create_study(storage=storage, study_name=name, directions=directions, sampler=sampler,
                                    load_if_exists=True)
    except ValueError as exc:   # a torn or foreign journal file (JSONDecodeError), directions that differ
        raise TensorfoldError(f"cannot open study '{name}' in its storage: {first_line(exc)} (a corrupt or "
                              "foreign storage file?)") from None
    except Exception as exc:
        import sqlalchemy.exc

        if isinstance(exc, sqlalchemy.exc.DatabaseError):
            raise TensorfoldError(f"cannot open study '{name}': the database is not usable "
                                  f"({first_line(exc)})") from None
        raise
    have = study.user_attrs.get("tensorfold")
    if have is None:
        study.set_user_attr("tensorfold", meta)
        return study
    if have.get("objectives") != meta["objectives"]:
        raise TensorfoldError(f"study '{name}' was created with objectives {','.join(have.get('objectives', []))}; "
                              f"this run asks for {','.join(meta['objectives'])} (use another --study)")
    for key, what in (("model", "another model"), ("space", "another search space (--methods/--space)"),
                      ("constraints", "other constraints (--max-error/--target-latency)"),
                      ("evaluation", "another evaluation (latency target, data or recovery steps)")):
        if have.get(key) != meta.get(key):
            raise TensorfoldError(f"study '{name}' was created for {what}: {have.get(key)} vs {meta.get(key)} "
                                  f"(use another --study)")
    return study
