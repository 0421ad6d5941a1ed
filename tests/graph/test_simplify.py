"""A spelled-out hard-swish becomes x * HardSigmoid(x); outputs match the original in onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from tensorfold.graph.normalize import normalize
from tests.graph.graphs import affine_then_conv, check_same_outputs, conv_then


def _hard_swish(form: str):
    """x = conv output; the variants exporters write."""
    add = helper.make_node("Add", ["c", "three"], ["a"])
    if form == "opset 10 clip":
        clip = helper.make_node("Clip", ["a"], ["k"], min=0.0, max=6.0)
    else:
        clip = helper.make_node("Clip", ["a", "zero", "six"], ["k"])
    tail = {
        "x * clip / 6": [helper.make_node("Mul", ["c", "k"], ["m"]), helper.make_node("Div", ["m", "six"], ["y"])],
        "clip / 6 * x": [helper.make_node("Div", ["k", "six"], ["m"]), helper.make_node("Mul", ["m", "c"], ["y"])],
        "x * clip * (1/6)": [
            helper.make_node("Mul", ["k", "c"], ["m"]),
            helper.make_node("Mul", ["sixth", "m"], ["y"]),
        ],
        "opset 10 clip": [helper.make_node("Mul", ["c", "k"], ["m"]), helper.make_node("Div", ["m", "six"], ["y"])],
    }[form]
    inits = {"three": 3.0, "zero": 0.0, "six": 6.0, "sixth": 1 / 6}
    return conv_then([add, clip] + tail, inits, opset=10 if form == "opset 10 clip" else 17)


@pytest.mark.parametrize("form", ["x * clip / 6", "clip / 6 * x", "x * clip * (1/6)", "opset 10 clip"])
def test_hard_swish_becomes_x_times_hard_sigmoid(form):
    model = _hard_swish(form)
    norm, stats = normalize(model)
    assert stats["hard_swish_rewritten"] == 1
    assert [n.op_type for n in norm.graph.node] == ["Conv", "HardSigmoid", "Mul"]
    assert norm.graph.node[-1].output[0] == "y"
    onnx.checker.check_model(norm)
    check_same_outputs(model, norm)


def test_a_clip_to_five_is_not_hard_swish():
    model = _hard_swish("x * clip / 6")
    model.graph.node[2].input[2] = "five"
    model.graph.initializer.append(numpy_helper.from_array(np.asarray(5.0, np.float32), "five"))
    norm, stats = normalize(model)
    assert stats["hard_swish_rewritten"] == 0


def test_hard_swish_then_affine_then_pointwise_conv():
    """PP-LCNetV3's block tail: hard-swish, a learnable affine, a pointwise conv."""
    ops = [
        helper.make_node("Add", ["x", "three"], ["a"]),
        helper.make_node("Clip", ["a", "zero", "six"], ["k"]),
        helper.make_node("Mul", ["x", "k"], ["m0"]),
        helper.make_node("Div", ["m0", "six"], ["h"]),
        helper.make_node("Mul", ["s", "h"], ["m"]),
        helper.make_node("Add", ["m", "t"], ["v"]),
    ]
    model = affine_then_conv(ops, {"three": 3.0, "zero": 0.0, "six": 6.0, "s": [0.9], "t": [0.2]})
    norm, stats = normalize(model)
    assert stats["hard_swish_rewritten"] == 1 and stats["affines_folded"] == 1
    assert [n.op_type for n in norm.graph.node] == ["HardSigmoid", "Mul", "Conv"]
    check_same_outputs(model, norm)
