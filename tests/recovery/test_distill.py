"""What distillation takes as class scores: by shape only where labels confirm it or a classifier
head writes the output; never a pooled sentence embedding on unlabelled data."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from tensorfold.recovery.distill import Outputs


def _two_heads():
    """x (N, 8) -> MatMul -> logits (N, 4); and x / 2 -> pooled (N, 8), an embedding."""
    w = numpy_helper.from_array(np.ones((8, 4), np.float32), "W")
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["logits"]), helper.make_node("Div", ["x", "two"], ["pooled"])]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["N", 8]),
        ],
        [w, two],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_unlabelled_training_takes_a_head_as_class_scores_and_an_embedding_not():
    model = _two_heads()
    assert Outputs.of(model, labelled=True).axes == {0: 1, 1: 1}  # labels confirm what shape guesses
    unlabelled = Outputs.of(model, labelled=False)
    assert unlabelled.axes == {0: 1}  # the MatMul head only: the pooled embedding is distilled as is
