"""What the recovery tests share: the demo CNN cut 8x by Tucker-2, the student most of them train."""

from __future__ import annotations

import pytest

from tensorfold.api import optimize
from tensorfold.demo import demo_model_path


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    path = tmp_path_factory.mktemp("s") / "student.onnx"
    optimize(demo_model_path(), path, method="tucker", ratio=8, progress=False)
    return path
