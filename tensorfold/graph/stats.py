"""What is in a model: nodes by op type, parameters, FLOPs per node, size on disk."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import onnx

from tensorfold.graph.model import attr, count_params
from tensorfold.graph.shapes import concrete_shapes
from tensorfold.onnxrt import large

# FLOPs count a multiply-add as 2 operations (Conv, Gemm, MatMul, Einsum-free chains): the
# convention of the roofline model; elementwise ops are not counted.
MAC_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")
# their quantized forms (onnxruntime's dynamic and QOperator int8 and its fused contrib ops), by the
# float op they compute and the input that holds the weight (convolutions) or the left matrix
QUANTIZED_MAC_OPS = {
    "ConvInteger": ("Conv", 1),
    "QLinearConv": ("Conv", 3),
    "MatMulInteger": ("MatMul", 0),
    "QLinearMatMul": ("MatMul", 0),
    "DynamicQuantizeMatMul": ("MatMul", 0),
    "MatMulIntegerToFloat": ("MatMul", 0),
    "QGemm": ("Gemm", 0),
}


@dataclass
class ModelStats:
    ops: Counter
    params: int
    size_bytes: int
    flops: int | None  # None when some MAC node's shape is unknown
    node_flops: dict[str, int | None] = field(default_factory=dict)


def node_flops(node: onnx.NodeProto, shapes: dict[str, list[int]]) -> int | None:
    out = shapes.get(node.output[0])
    op, operand = QUANTIZED_MAC_OPS.get(node.op_type, (node.op_type, 1 if node.op_type.startswith("Conv") else 0))
    if op in ("Conv", "ConvTranspose"):
        w = shapes.get(node.input[operand])
        if out is None or w is None:
            return None
        if op == "Conv":
            per_output = int(np.prod(w[1:]))  # (I/g) * k...
            return 2 * int(np.prod(out)) * per_output
        x = shapes.get(node.input[0])
        if x is None:
            return None
        return 2 * int(np.prod(x)) * int(np.prod(w[1:]))  # each input pixel scatters O/g * k...
    if op in ("Gemm", "MatMul"):
        a = shapes.get(node.input[operand])
        if out is None or a is None:
            return None
        k = a[0] if (op == "Gemm" and attr(node, "transA", 0)) else a[-1]
        return 2 * int(np.prod(out)) * int(k)
    return 0


def model_stats(model: onnx.ModelProto, input_shapes: dict[str, list[int]]) -> ModelStats:
    mac_nodes = [n for n in model.graph.node if n.op_type in MAC_OPS or n.op_type in QUANTIZED_MAC_OPS]
    needed = {n.output[0] for n in mac_nodes} | {n.input[0] for n in mac_nodes}
    shapes = concrete_shapes(model, input_shapes, needed)
    per_node = {n.name or n.output[0]: node_flops(n, shapes) for n in mac_nodes}
    flops = None if any(v is None for v in per_node.values()) else int(sum(per_node.values()))
    return ModelStats(
        Counter(n.op_type for n in model.graph.node), count_params(model), large.serialized_size(model), flops, per_node
    )
