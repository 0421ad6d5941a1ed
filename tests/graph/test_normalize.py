"""Normalization: Constant weights become initializers, Conv+BatchNorm fold, outputs unchanged."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tensorfold.graph.normalize import normalize
from tests.passes.single_node import run


def _bn_model(with_constants: bool):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    scale, beta = rng.random(6).astype(np.float32) + 0.5, rng.standard_normal(6).astype(np.float32)
    mean, var = rng.standard_normal(6).astype(np.float32), rng.random(6).astype(np.float32) + 0.1
    tensors = {"W": w, "B": b, "scale": scale, "beta": beta, "mean": mean, "var": var}
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "scale", "beta", "mean", "var"], ["y"], name="bn", epsilon=1e-3),
    ]
    inits = []
    if with_constants:
        nodes = [
            helper.make_node("Constant", [], [k], value=numpy_helper.from_array(v)) for k, v in tensors.items()
        ] + nodes
    else:
        inits = [numpy_helper.from_array(v, k) for k, v in tensors.items()]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, 8, 8])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_constants_become_initializers_and_bn_folds():
    model = _bn_model(with_constants=True)
    before = model.SerializeToString()
    norm, stats = normalize(model)
    assert model.SerializeToString() == before  # input untouched
    assert stats["constants_to_initializers"] == 6
    assert stats["batchnorms_folded"] == 1
    assert [n.op_type for n in norm.graph.node] == ["Conv"]
    onnx.checker.check_model(norm, full_check=True)
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(run(norm, {"x": x})[0], run(model, {"x": x})[0], rtol=1e-4, atol=1e-4)


def test_bn_with_two_consumers_of_the_conv_is_not_folded():
    model = _bn_model(with_constants=False)
    model.graph.node.append(helper.make_node("Relu", ["c"], ["r"], name="relu"))
    model.graph.output.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, None))
    norm, stats = normalize(model)
    assert stats["batchnorms_folded"] == 0
    assert "BatchNormalization" in [n.op_type for n in norm.graph.node]


def test_identity_on_weight_is_bypassed():
    w = numpy_helper.from_array(np.ones((4, 2, 1, 1), np.float32), "W")
    nodes = [
        helper.make_node("Identity", ["W"], ["W2"], name="id"),
        helper.make_node("Conv", ["x", "W2"], ["y"], name="conv"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])],
        [w],
    )
    norm, stats = normalize(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert stats["identities_removed"] == 1
    assert [n.op_type for n in norm.graph.node] == ["Conv"] and norm.graph.node[0].input[1] == "W"
