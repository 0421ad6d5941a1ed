"""search/storage.py: a journal is read back whole before anything is appended, and an append that
fails leaves no torn record."""

from __future__ import annotations

import errno
import os

import pytest

from tensorfold.errors import TensorfoldError
from tensorfold.search import storage as storage_module
from tensorfold.search.storage import open_storage, open_study

DIRECTIONS = ["minimize"]


def _journal_with_a_study(path):
    study = open_study(open_storage(f"journal:{path}"), "s", DIRECTIONS, {"objectives": ["error"]}, None)
    study.enqueue_trial({"x": 1.0})
    return path.read_bytes()


def test_a_torn_last_line_is_refused_by_line_with_the_repair_and_the_file_untouched(tmp_path):
    path = tmp_path / "s.log"
    good = _journal_with_a_study(path)
    path.write_bytes(good + b'{"op_code":4,"wor')
    torn_line = good.count(b"\n") + 1
    with pytest.raises(TensorfoldError, match=rf"line {torn_line} is cut short.*truncate -s {len(good)}"):
        open_storage(f"journal:{path}")
    assert path.read_bytes() == good + b'{"op_code":4,"wor'
    os.truncate(path, len(good))  # the repair the message gives
    open_storage(f"journal:{path}")


def test_a_foreign_file_is_refused_before_anything_is_appended(tmp_path):
    path = tmp_path / "s.log"
    path.write_text("not a journal\n")
    with pytest.raises(TensorfoldError, match="line 1 is not an Optuna journal record"):
        open_storage(f"journal:{path}")
    assert path.read_text() == "not a journal\n"


def test_an_append_that_fails_is_cut_back_to_where_it_began(tmp_path, monkeypatch):
    path = tmp_path / "s.log"
    good = _journal_with_a_study(path)
    storage = open_storage(f"journal:{path}")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage_module.os, "fsync", full)
    with pytest.raises(OSError):
        storage.tensorfold_backend.append_logs([{"op_code": 4, "worker_id": "w", "study_id": 0}])
    assert path.read_bytes() == good
    assert storage_module.write_failure(storage).errno == errno.ENOSPC
