"""Exact simplifications in normalize: per-channel affine ops after a Conv fold into it, and a
spelled-out hard-swish becomes x * HardSigmoid(x); outputs match the original in onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tensorfold.graph.normalize import normalize
from tensorfold.runtime.sessions import make_session

C = 6


def _model(nodes, inits, out="y", opset=17, out_channels=C):
    rng = np.random.default_rng(0)
    base = [numpy_helper.from_array(rng.standard_normal((C, 3, 3, 3)).astype(np.float32), "W"),
            numpy_helper.from_array(rng.standard_normal(C).astype(np.float32), "B")]
    graph = helper.make_graph([helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv", pads=[1, 1, 1, 1])] + nodes,
                              "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, [2, out_channels, 8, 8])],
                              base + [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _same_outputs(a, b):
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32) * 3
    ya, yb = make_session(a).run(None, {"x": x})[0], make_session(b).run(None, {"x": x})[0]
    np.testing.assert_allclose(yb, ya, rtol=1e-5, atol=1e-5)


per_channel = np.linspace(0.5, 2.0, C).reshape(1, C, 1, 1)

AFFINES = {
    "paddle lab: Mul(const, y), Add": ([helper.make_node("Mul", ["s", "c"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])],
                                       {"s": [0.94], "b": [0.1]}),
    "per-channel Mul then Sub": ([helper.make_node("Mul", ["c", "s"], ["m"]), helper.make_node("Sub", ["m", "b"], ["y"])],
                                 {"s": per_channel, "b": per_channel[0]}),
    "const minus y, then Div": ([helper.make_node("Sub", ["b", "c"], ["m"]), helper.make_node("Div", ["m", "s"], ["y"])],
                                {"b": 0.3, "s": per_channel}),
    "Add alone, rank-3 constant": ([helper.make_node("Add", ["c", "b"], ["y"])], {"b": per_channel[0]}),
}


@pytest.mark.parametrize("name", AFFINES)
def test_affine_ops_fold_into_the_conv(name):
    nodes, inits = AFFINES[name]
    model = _model(nodes, inits)
    before = model.SerializeToString()
    norm, stats = normalize(model)
    assert model.SerializeToString() == before
    assert stats["affines_folded"] == 1
    assert [n.op_type for n in norm.graph.node] == ["Conv"] and norm.graph.node[0].output[0] == "y"
    onnx.checker.check_model(norm)
    _same_outputs(model, norm)


NOT_AFFINE = {
    "spatial constant": ([helper.make_node("Mul", ["c", "s"], ["y"])], {"s": np.ones((1, 1, 8, 8)) * 2}),
    "y divides": ([helper.make_node("Div", ["s", "c"], ["y"])], {"s": [2.0]}),
    "constant of higher rank": ([helper.make_node("Mul", ["c", "s"], ["y"])], {"s": np.ones((1, 1, 1, 1, 1))}),
}


@pytest.mark.parametrize("name", NOT_AFFINE)
def test_what_is_not_a_per_channel_affine_stays(name):
    nodes, inits = NOT_AFFINE[name]
    out = "y"
    model = _model(nodes, inits, out)
    if name == "constant of higher rank":     # y gets rank 5
        model.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, C, 8, 8]))
    norm, stats = normalize(model)
    assert stats["affines_folded"] == 0 and len(norm.graph.node) == 2


def test_a_conv_output_read_twice_is_not_folded():
    nodes = [helper.make_node("Mul", ["c", "s"], ["m"]), helper.make_node("Add", ["m", "c"], ["y"])]
    norm, stats = normalize(_model(nodes, {"s": [2.0]}))
    assert stats["affines_folded"] == 0


def _hard_swish(form: str):
    """x = conv output; the variants exporters write."""
    add = helper.make_node("Add", ["c", "three"], ["a"])
    if form == "opset 10 clip":
        clip = helper.make_node("Clip", ["a"], ["k"], min=0.0, max=6.0)
    else:
        clip = helper.make_node("Clip", ["a", "zero", "six"], ["k"])
    tail = {"x * clip / 6": [helper.make_node("Mul", ["c", "k"], ["m"]), helper.make_node("Div", ["m", "six"], ["y"])],
            "clip / 6 * x": [helper.make_node("Div", ["k", "six"], ["m"]), helper.make_node("Mul", ["m", "c"], ["y"])],
            "x * clip * (1/6)": [helper.make_node("Mul", ["k", "c"], ["m"]), helper.make_node("Mul", ["sixth", "m"], ["y"])],
            "opset 10 clip": [helper.make_node("Mul", ["c", "k"], ["m"]), helper.make_node("Div", ["m", "six"], ["y"])]}[form]
    inits = {"three": 3.0, "zero": 0.0, "six": 6.0, "sixth": 1 / 6}
    return _model([add, clip] + tail, inits, opset=10 if form == "opset 10 clip" else 17)


@pytest.mark.parametrize("form", ["x * clip / 6", "clip / 6 * x", "x * clip * (1/6)", "opset 10 clip"])
def test_hard_swish_becomes_x_times_hard_sigmoid(form):
    model = _hard_swish(form)
    norm, stats = normalize(model)
    assert stats["hard_swish_rewritten"] == 1
    assert [n.op_type for n in norm.graph.node] == ["Conv", "HardSigmoid", "Mul"]
    assert norm.graph.node[-1].output[0] == "y"
    onnx.checker.check_model(norm)
    _same_outputs(model, norm)


def test_a_clip_to_five_is_not_hard_swish():
    model = _hard_swish("x * clip / 6")
    model.graph.node[2].input[2] = "five"
    model.graph.initializer.append(numpy_helper.from_array(np.asarray(5.0, np.float32), "five"))
    norm, stats = normalize(model)
    assert stats["hard_swish_rewritten"] == 0


def _affine_then_conv(ops, inits, groups=1, pads=(0, 0, 0, 0), kernel=1, second_reader=False):
    """x -> ops (reading "x", writing "v") -> Conv(v); the conv's input has 4 channels."""
    rng = np.random.default_rng(2)
    w = numpy_helper.from_array(rng.standard_normal((6, 4 // groups, kernel, kernel)).astype(np.float32), "W2")
    b = numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "B2")
    nodes = ops + [helper.make_node("Conv", ["v", "W2", "B2"], ["y"], group=groups, pads=list(pads), name="pw")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if second_reader:
        nodes.append(helper.make_node("Relu", ["v"], ["r"]))
        outputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 8, 8])], outputs,
                              [w, b] + [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _same(a, b):
    x = np.random.default_rng(1).standard_normal((2, 4, 8, 8)).astype(np.float32)
    for ya, yb in zip(make_session(a).run(None, {"x": x}), make_session(b).run(None, {"x": x})):
        np.testing.assert_allclose(yb, ya, rtol=1e-5, atol=1e-5)


LAB = [helper.make_node("Mul", ["s", "x"], ["m"]), helper.make_node("Add", ["m", "t"], ["v"])]
CHANNELS = np.array([0.5, 1.0, 1.5, 2.0]).reshape(1, 4, 1, 1)


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("consts", [{"s": [0.9], "t": [0.2]}, {"s": CHANNELS, "t": -CHANNELS}], ids=["scalar", "per-channel"])
def test_an_affine_before_a_pointwise_conv_folds_into_it(groups, consts):
    model = _affine_then_conv(LAB, consts, groups=groups)
    norm, stats = normalize(model)
    assert stats["affines_folded"] == 1
    assert [n.op_type for n in norm.graph.node] == ["Conv"] and norm.graph.node[0].input[0] == "x"
    onnx.checker.check_model(norm)
    _same(model, norm)


@pytest.mark.parametrize("case", ["padded conv", "value read twice"])
def test_an_affine_before_a_padded_or_shared_input_stays(case):
    model = _affine_then_conv(LAB, {"s": [0.9], "t": [0.2]}, pads=(1, 1, 1, 1) if case == "padded conv" else (0, 0, 0, 0),
                              kernel=3 if case == "padded conv" else 1, second_reader=case == "value read twice")
    norm, stats = normalize(model)
    assert stats["affines_folded"] == 0
    _same(model, norm)


def test_hard_swish_then_affine_then_pointwise_conv():
    """PP-LCNetV3's block tail: hard-swish, a learnable affine, a pointwise conv."""
    ops = [helper.make_node("Add", ["x", "three"], ["a"]), helper.make_node("Clip", ["a", "zero", "six"], ["k"]),
           helper.make_node("Mul", ["x", "k"], ["m0"]), helper.make_node("Div", ["m0", "six"], ["h"]),
           helper.make_node("Mul", ["s", "h"], ["m"]), helper.make_node("Add", ["m", "t"], ["v"])]
    model = _affine_then_conv(ops, {"three": 3.0, "zero": 0.0, "six": 6.0, "s": [0.9], "t": [0.2]})
    norm, stats = normalize(model)
    assert stats["hard_swish_rewritten"] == 1 and stats["affines_folded"] == 1
    assert [n.op_type for n in norm.graph.node] == ["HardSigmoid", "Mul", "Conv"]
    _same(model, norm)
