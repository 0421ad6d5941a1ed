"""Small graphs around a Conv for the fold and simplify tests, and an output check."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from tensorfold.onnxrt.sessions import make_session

C = 6


def conv_then(nodes, inits, out="y", opset=17, out_channels=C):
    rng = np.random.default_rng(0)
    base = [
        numpy_helper.from_array(rng.standard_normal((C, 3, 3, 3)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.standard_normal(C).astype(np.float32), "B"),
    ]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv", pads=[1, 1, 1, 1])] + nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [2, out_channels, 8, 8])],
        base + [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def affine_then_conv(ops, inits, groups=1, pads=(0, 0, 0, 0), kernel=1, second_reader=False):
    """x -> ops (reading "x", writing "v") -> Conv(v); the conv's input has 4 channels."""
    rng = np.random.default_rng(2)
    w = numpy_helper.from_array(rng.standard_normal((6, 4 // groups, kernel, kernel)).astype(np.float32), "W2")
    b = numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "B2")
    nodes = ops + [helper.make_node("Conv", ["v", "W2", "B2"], ["y"], group=groups, pads=list(pads), name="pw")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if second_reader:
        nodes.append(helper.make_node("Relu", ["v"], ["r"]))
        outputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, None))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 8, 8])],
        outputs,
        [w, b] + [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def check_same_outputs(a, b):
    """Every output of b matches a's on the same input x (scaled by 3 so hard-swish's clip bites)."""
    shape = [d.dim_value for d in a.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32) * 3
    for ya, yb in zip(make_session(a).run(None, {"x": x}), make_session(b).run(None, {"x": x})):
        np.testing.assert_allclose(yb, ya, rtol=1e-5, atol=1e-5)
