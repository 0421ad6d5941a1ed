"""Parameters are counted over every dtype: int8 weights and int32 biases of a quantized model are
parameters, its scales and zero points are not."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from tensorfold.graph.model import count_params


def test_a_qdq_conv_counts_its_int8_weight_and_int32_bias_not_its_scales():
    t = numpy_helper.from_array
    inits = [
        t(np.ones((16, 8, 3, 3), np.int8), "w_q"),
        t(np.ones(16, np.float32), "w_scale"),
        t(np.zeros(16, np.int8), "w_zp"),
        t(np.ones(16, np.int32), "b_q"),
        t(np.ones(16, np.float32), "b_s"),
        t(np.array([1, -1], np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], axis=0),
        helper.make_node("DequantizeLinear", ["b_q", "b_s"], ["b"], axis=0),
        helper.make_node("Conv", ["x", "w", "b"], ["y"]),
        helper.make_node("Reshape", ["y", "shape"], ["z"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 5, 5])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        inits,
    )
    assert count_params(helper.make_model(graph)) == 16 * 8 * 9 + 16


def test_dynamic_quantization_scales_are_not_parameters():
    t = numpy_helper.from_array
    inits = [
        t(np.ones((8, 4), np.int8), "W_quantized"),
        t(np.ones(4, np.float32), "W_scale"),
        t(np.zeros(4, np.int8), "W_zero_point"),
    ]
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
        helper.make_node("MatMulInteger", ["xq", "W_quantized", "xz", "W_zero_point"], ["acc"]),
        helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["xs", "W_scale"], ["s"]),
        helper.make_node("Mul", ["accf", "s"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    assert count_params(helper.make_model(graph)) == 32


def test_a_dynamically_quantized_lstm_counts_its_int8_weights_not_their_scales():
    t = numpy_helper.from_array
    inits = [
        t(np.ones((1, 4, 8), np.int8), "W_q"),
        t(np.ones((1, 4, 8), np.int8), "R_q"),
        t(np.ones((1, 8), np.float32), "W_s"),
        t(np.zeros((1, 8), np.int8), "W_z"),
        t(np.ones((1, 8), np.float32), "R_s"),
        t(np.zeros((1, 8), np.int8), "R_z"),
    ]
    node = helper.make_node(
        "DynamicQuantizeLSTM",
        ["x", "W_q", "R_q", "", "", "", "", "", "W_s", "W_z", "R_s", "R_z"],
        ["y"],
        domain="com.microsoft",
        hidden_size=2,
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    assert count_params(helper.make_model(graph)) == 64


def test_weights_inside_an_if_branch_count():
    """onnxruntime's quantizer moved hey_jarvis's weights into an If branch: a third of them went
    uncounted and the int8 candidate read 214,277 parameters against the input's 316,743."""
    branch = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w_in"], ["y_then"])],
        "then",
        [],
        [helper.make_tensor_value_info("y_then", TensorProto.FLOAT, [None, 4])],
        [numpy_helper.from_array(np.ones((8, 4), np.float32), "w_in")],
    )
    other = helper.make_graph(
        [helper.make_node("Constant", [], ["y_else"], value=numpy_helper.from_array(np.zeros((1, 4), np.float32)))],
        "else",
        [],
        [helper.make_tensor_value_info("y_else", TensorProto.FLOAT, [None, 4])],
    )
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=other),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
        [numpy_helper.from_array(np.ones((8, 8), np.float32), "w"), numpy_helper.from_array(np.array(True), "c")],
    )
    # 64 at the top, 32 in the then branch, 4 in the else branch's Constant (the bool condition is no weight)
    assert count_params(helper.make_model(graph)) == 64 + 32 + 4


def test_quantized_matrix_products_count_their_flops():
    """A dynamically quantized model (MatMulInteger, ConvInteger) read as 0 FLOPs."""
    from tensorfold.graph.stats import model_stats

    w8 = numpy_helper.from_array(np.ones((8, 4), np.int8), "w8")
    k8 = numpy_helper.from_array(np.ones((2, 3, 3, 3), np.int8), "k8")
    graph = helper.make_graph(
        [
            helper.make_node("MatMulInteger", ["a", "w8"], ["m"]),
            helper.make_node("ConvInteger", ["img", "k8"], ["c"], pads=[1, 1, 1, 1]),
        ],
        "g",
        [
            helper.make_tensor_value_info("a", TensorProto.UINT8, [1, 8]),
            helper.make_tensor_value_info("img", TensorProto.UINT8, [1, 3, 5, 5]),
        ],
        [
            helper.make_tensor_value_info("m", TensorProto.INT32, [1, 4]),
            helper.make_tensor_value_info("c", TensorProto.INT32, [1, 2, 5, 5]),
        ],
        [w8, k8],
    )
    stats = model_stats(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), {})
    assert stats.flops == 2 * 4 * 8 + 2 * (2 * 5 * 5) * (3 * 3 * 3)
