"""What onnxruntime fused is counted from its optimized graph; an unfused Q/DQ around a weight op is
a slow spot."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from tensorfold.quantize.fusion import fusion_of


def test_a_conv_fed_by_dequantize_is_a_slow_spot():
    w = numpy_helper.from_array(np.ones((2, 1, 1, 1), np.int8), "w")
    nodes = [
        helper.make_node("DequantizeLinear", ["w", "s"], ["wf"], name="dq"),
        helper.make_node("Conv", ["x", "wf"], ["y"], name="conv"),
        helper.make_node("QLinearConv", ["x"] * 8, ["z"], name="fused"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [w, numpy_helper.from_array(np.array(0.1, np.float32), "s")],
    )
    report = fusion_of(helper.make_model(graph))
    assert report.slow_spots == ["conv"] and report.kernels == {"QLinearConv": 1}
    assert report.dequantize_nodes == 1 and "slow" in report.describe()
