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
