"""The real thing, behind `make bench`: a 2.1 GiB model through inspect, optimize, verify, profile."""

import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_a_model_above_two_gib_goes_through_every_command(tmp_path):
    sys.path.insert(0, str(Path(__file__).parents[2] / "tools"))
    import bench_large_model

    assert bench_large_model.main(["--gib", "2.1", "--workdir", str(tmp_path)]) == 0
