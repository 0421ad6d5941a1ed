"""The guard of refactors: on the demo CNN, every method at a budget and at an energy chooses the
same ranks, reaches the same parameter count and the same output error as recorded.

A change that means to alter these (a better rank rule, a new default) regenerates the record
and says why in its commit:  .venv/bin/python -m tests.passes.test_golden > tests/passes/golden_demo.json
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

RECORD = Path(__file__).with_name("golden_demo.json")
CASES = [
    (method, label, kwargs)
    for method in ("auto", "svd", "tucker", "cp", "tt")
    for label, kwargs in (("ratio 2", {"ratio": 2.0}), ("energy 0.9", {"energy": 0.9}))
]


def record(method: str, kwargs: dict) -> dict:
    from tensorfold.api import optimize
    from tensorfold.demo import demo_model_path

    report = optimize(demo_model_path(), None, method=method, progress=False, **kwargs)
    return {
        "layers": {
            r.node: {"method": r.method, "ranks": r.ranks, "params_after": r.params_after} for r in report.layers
        },
        "params": report.after.params,
        "max_relative_error": round(report.verification.max_relative_error, 6),
    }


@pytest.mark.parametrize("method, label, kwargs", CASES, ids=[f"{m} {label}" for m, label, _ in CASES])
def test_the_demo_factorizes_as_recorded(method, label, kwargs):
    expected = json.loads(RECORD.read_text())[f"{method} {label}"]
    got = record(method, kwargs)
    assert got["layers"] == expected["layers"]
    assert got["params"] == expected["params"]
    # float32 onnxruntime and float64 BLAS round differently across CPUs; a changed rank or method
    # moves the error far more than this
    assert got["max_relative_error"] == pytest.approx(expected["max_relative_error"], rel=1e-3, abs=1e-5)


if __name__ == "__main__":
    print(json.dumps({f"{m} {label}": record(m, k) for m, label, k in CASES}, indent=1, sort_keys=True))
