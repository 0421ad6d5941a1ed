"""bench/runner.py: what a suite resumes from."""

from __future__ import annotations

import pytest

from tensorfold.bench.runner import read_rows
from tensorfold.errors import TensorfoldError


def test_rows_of_an_interrupted_run_resume_and_a_bad_line_is_named(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"key": "a"}\n{"key": "b"}\n{"key": "c", "acc')  # killed while writing row c
    assert [r["key"] for r in read_rows(path)] == ["a", "b"]
    assert path.read_text() == '{"key": "a"}\n{"key": "b"}\n'  # row c is measured again
    path.write_text('{"key": "a"}\nnot json\n{"key": "b"}\n')
    with pytest.raises(TensorfoldError, match="line 2 is not a bench row"):
        read_rows(path)


def test_a_users_npz_is_split_so_the_suite_never_tests_on_what_it_trained_on(tmp_path):
    import numpy as np

    from tensorfold.bench.train import suite_data

    path = tmp_path / "d.npz"
    np.savez(path, x=np.arange(60, dtype=np.float32).reshape(60, 1, 1, 1), y=np.arange(60) % 10)
    x, y, _ = suite_data(str(path), "train")
    tx, ty, desc = suite_data(str(path), "test")
    assert len(tx) == 10 and len(x) == 50 and "seeded sixth" in desc
    assert not set(x.ravel().tolist()) & set(tx.ravel().tolist())
    again, _, _ = suite_data(str(path), "test")
    assert (again == tx).all()  # seeded: the same sixth every run
