"""Affine ops after a Conv, or before an unpadded one, fold into it; what is not affine per channel stays.
Outputs match the original in onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tensorfold.graph.normalize import normalize
from tests.graph.graphs import C, affine_then_conv, check_same_outputs, conv_then

per_channel = np.linspace(0.5, 2.0, C).reshape(1, C, 1, 1)

AFFINES = {
    "paddle lab: Mul(const, y), Add": (
        [helper.make_node("Mul", ["s", "c"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])],
        {"s": [0.94], "b": [0.1]},
    ),
    "per-channel Mul then Sub": (
        [helper.make_node("Mul", ["c", "s"], ["m"]), helper.make_node("Sub", ["m", "b"], ["y"])],
        {"s": per_channel, "b": per_channel[0]},
    ),
    "const minus y, then Div": (
        [helper.make_node("Sub", ["b", "c"], ["m"]), helper.make_node("Div", ["m", "s"], ["y"])],
        {"b": 0.3, "s": per_channel},
    ),
    "Add alone, rank-3 constant": ([helper.make_node("Add", ["c", "b"], ["y"])], {"b": per_channel[0]}),
}


@pytest.mark.parametrize("name", AFFINES)
def test_affine_ops_fold_into_the_conv(name):
    nodes, inits = AFFINES[name]
    model = conv_then(nodes, inits)
    before = model.SerializeToString()
    norm, stats = normalize(model)
    assert model.SerializeToString() == before
    assert stats["affines_folded"] == 1
    assert [n.op_type for n in norm.graph.node] == ["Conv"] and norm.graph.node[0].output[0] == "y"
    onnx.checker.check_model(norm)
    check_same_outputs(model, norm)


NOT_AFFINE = {
    "spatial constant": ([helper.make_node("Mul", ["c", "s"], ["y"])], {"s": np.ones((1, 1, 8, 8)) * 2}),
    "y divides": ([helper.make_node("Div", ["s", "c"], ["y"])], {"s": [2.0]}),
    "constant of higher rank": ([helper.make_node("Mul", ["c", "s"], ["y"])], {"s": np.ones((1, 1, 1, 1, 1))}),
}


@pytest.mark.parametrize("name", NOT_AFFINE)
def test_what_is_not_a_per_channel_affine_stays(name):
    nodes, inits = NOT_AFFINE[name]
    out = "y"
    model = conv_then(nodes, inits, out)
    if name == "constant of higher rank":  # y gets rank 5
        model.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, C, 8, 8]))
    norm, stats = normalize(model)
    assert stats["affines_folded"] == 0 and len(norm.graph.node) == 2


def test_a_conv_output_read_twice_is_not_folded():
    nodes = [helper.make_node("Mul", ["c", "s"], ["m"]), helper.make_node("Add", ["m", "c"], ["y"])]
    norm, stats = normalize(conv_then(nodes, {"s": [2.0]}))
    assert stats["affines_folded"] == 0


LAB = [helper.make_node("Mul", ["s", "x"], ["m"]), helper.make_node("Add", ["m", "t"], ["v"])]
CHANNELS = np.array([0.5, 1.0, 1.5, 2.0]).reshape(1, 4, 1, 1)


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize(
    "consts", [{"s": [0.9], "t": [0.2]}, {"s": CHANNELS, "t": -CHANNELS}], ids=["scalar", "per-channel"]
)
def test_an_affine_before_a_pointwise_conv_folds_into_it(groups, consts):
    model = affine_then_conv(LAB, consts, groups=groups)
    norm, stats = normalize(model)
    assert stats["affines_folded"] == 1
    assert [n.op_type for n in norm.graph.node] == ["Conv"] and norm.graph.node[0].input[0] == "x"
    onnx.checker.check_model(norm)
    check_same_outputs(model, norm)


@pytest.mark.parametrize("case", ["padded conv", "value read twice"])
def test_an_affine_before_a_padded_or_shared_input_stays(case):
    model = affine_then_conv(
        LAB,
        {"s": [0.9], "t": [0.2]},
        pads=(1, 1, 1, 1) if case == "padded conv" else (0, 0, 0, 0),
        kernel=3 if case == "padded conv" else 1,
        second_reader=case == "value read twice",
    )
    norm, stats = normalize(model)
    assert stats["affines_folded"] == 0
    check_same_outputs(model, norm)


def test_the_optimize_report_says_what_was_folded(tmp_path):
    from tensorfold.api import optimize

    nodes, inits = AFFINES["paddle lab: Mul(const, y), Add"]
    path = tmp_path / "m.onnx"
    onnx.save(conv_then(nodes, inits), path)
    report = optimize(path, tmp_path / "o.onnx", method="tucker", progress=False)
    assert any(n.startswith("normalize: 1 affine op chain(s) folded into convs") for n in report.notes)
    assert report.verification.max_relative_error < 1e-5
