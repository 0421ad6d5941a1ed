"""Known-fragile spots are found in a transformer-style graph and a regression head."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from tensorfold.quantize.fragile import fragile_nodes


def encoder_block():
    rng = np.random.default_rng(0)
    f = lambda *s: numpy_helper.from_array(rng.standard_normal(s).astype(np.float32))  # noqa: E731
    inits = [f(50, 8), f(8, 8), f(8), f(8), f(8, 4)]
    for t, name in zip(inits, ["emb", "wq", "g", "b", "head"]):
        t.name = name
    nodes = [
        helper.make_node("Gather", ["emb", "ids"], ["e"], name="embed"),
        helper.make_node("LayerNormalization", ["e", "g", "b"], ["ln"], name="ln", axis=-1),
        helper.make_node("MatMul", ["ln", "wq"], ["q"], name="proj"),
        helper.make_node("Transpose", ["q"], ["kt"], name="kt", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"], name="scores"),
        helper.make_node("Softmax", ["scores"], ["p"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["p", "q"], ["ctx"], name="context"),
        helper.make_node("MatMul", ["ctx", "head"], ["out"], name="head"),
        helper.make_node("Sigmoid", ["out"], ["y"], name="sigmoid"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 4])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_transformer_spots_and_the_regression_head():
    found = fragile_nodes(encoder_block())
    assert found["embed"] == "embedding Gather"
    assert "LayerNormalization" in found["ln"]
    assert "attention-score" in found["scores"] and found["softmax"] == "Softmax"
    assert "attention-score" in found["context"]
    assert "last layers of output y" in found["sigmoid"] and "last layers of output y" in found["head"]
    assert "proj" not in found  # a weight MatMul in the middle of a block is not fragile


def test_a_class_output_is_not_a_regression_head():
    assert "head" not in fragile_nodes(encoder_block(), {"y"})
