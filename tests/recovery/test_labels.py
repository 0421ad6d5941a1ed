"""A labelled folder whose class names sort differently from the model's outputs is caught before
training, with the --classes order that fixes it; --classes and classes.txt set the order."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tensorfold.api import optimize
from tensorfold.datasets import load_data
from tensorfold.demo import demo_model_path
from tests.helpers.cli import assert_user_error, invoke

TEACHER = demo_model_path()
# Fashion-MNIST's classes in the demo model's output order; sorted by name they come out otherwise
NAMES = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("labelled")
    x, y, _ = load_data("fashion-mnist", "test")
    for k, name in enumerate(NAMES):
        (root / name).mkdir()
        for i, j in enumerate(np.flatnonzero(y == k)[:20]):
            Image.fromarray(np.asarray(x[j]).reshape(28, 28).astype(np.uint8)).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    path = tmp_path_factory.mktemp("s") / "student.onnx"
    optimize(TEACHER, path, method="tucker", ratio=4, progress=False)
    return path


def _recover(student, folder, tmp_path, *extra):
    return invoke(
        "recover",
        student,
        "--teacher",
        TEACHER,
        "--data",
        folder,
        "-o",
        tmp_path / "r.onnx",
        "--max-steps",
        "1",
        *extra,
    )


def test_name_order_that_contradicts_the_teacher_is_named_with_the_fix(student, folder, tmp_path):
    code, out = _recover(student, folder, tmp_path)
    assert code == 0, out
    assert "renumbered" in out and f"--classes {','.join(NAMES)}" in out, out


def test_classes_in_the_teachers_order_train_without_a_warning(student, folder, tmp_path):
    code, out = _recover(student, folder, tmp_path, "--classes", ",".join(NAMES))
    assert code == 0, out
    assert "renumbered" not in out, out


def test_a_classes_txt_sets_the_order(student, folder, tmp_path):
    (folder / "classes.txt").write_text("\n".join(NAMES) + "\n")
    try:
        code, out = _recover(student, folder, tmp_path)
    finally:
        (folder / "classes.txt").unlink()
    assert code == 0, out
    assert "renumbered" not in out, out


@pytest.mark.parametrize(
    "given, says",
    [
        ("tshirt,trouser", "holds images but --classes does not name it"),
        ("tshirt,tshirt", "more than once"),
        (",".join(NAMES) + ",hat", "hat, not a subfolder"),
    ],
)
def test_bad_classes_are_one_line(student, folder, tmp_path, given, says):
    assert_user_error(*_recover(student, folder, tmp_path, "--classes", given), says)
