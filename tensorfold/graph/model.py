"""Read-only views over a ModelProto: initializers as arrays, producers and consumers of values."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper


class GraphIndex:
    """Index of the top-level graph. Rebuild it after an edit; it is cheap."""

    def __init__(self, model: onnx.ModelProto):
        graph = model.graph
        self.model = model
        self.initializers: dict[str, onnx.TensorProto] = {t.name: t for t in graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for out in node.output:
                if out:
                    self.producer[out] = node
            for inp in node.input:
                if inp:
                    self.consumers[inp].append(node)
            # values read by nested graphs (If/Loop/Scan bodies) count as consumed by the node
            for name in _outer_scope_reads(node):
                self.consumers[name].append(node)
        self.graph_inputs = {v.name for v in graph.input} - set(self.initializers)
        self.graph_outputs = {v.name for v in graph.output}
        self.value_info = {v.name: v for v in list(graph.value_info) + list(graph.input) + list(graph.output)}

    def is_constant(self, name: str) -> bool:
        # an initializer that is also a graph input can be overridden at run time: not a constant
        return name in self.initializers and name not in {v.name for v in self.model.graph.input}

    def array(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.initializers[name])

    def scalar(self, name: str | None) -> float | None:
        """The value of a one-element float constant (an epsilon, an exponent, a 0.5), else None."""
        if not name or not self.is_constant(name):
            return None
        value = self.array(name)
        return float(value.ravel()[0]) if value.size == 1 and np.issubdtype(value.dtype, np.floating) else None

    def single_user(self, name: str) -> onnx.NodeProto | None:
        """The one node reading `name`, where it is read by one node only and is not a graph output:
        a pattern may take it over."""
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 and name not in self.graph_outputs else None

    def shape(self, name: str) -> list[int | str | None] | None:
        """Static shape from value_info: ints, dim_param strings, or None for unknown dims."""
        if name in self.initializers:
            return list(self.initializers[name].dims)
        info = self.value_info.get(name)
        if info is None or not info.type.HasField("tensor_type") or not info.type.tensor_type.HasField("shape"):
            return None
        dims = []
        for d in info.type.tensor_type.shape.dim:
            if d.HasField("dim_value"):
                dims.append(d.dim_value)
            elif d.HasField("dim_param"):
                dims.append(d.dim_param)
            else:
                dims.append(None)
        return dims


def _outer_scope_reads(node: onnx.NodeProto) -> set[str]:
    names: set[str] = set()
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for g in graphs:
            local = {v.name for v in g.input} | {t.name for t in g.initializer}
            for sub in g.node:
                local.update(sub.output)
            for sub in g.node:
                names.update(i for i in sub.input if i and i not in local)
                names.update(n for n in _outer_scope_reads(sub) if n not in local)
    return names


def subgraph_nodes(model: onnx.ModelProto):
    """Yield (parent node, node) for every node nested inside If/Loop/Scan bodies."""

    def walk(graph, parent):
        for node in graph.node:
            if parent is not None:
                yield parent, node
            for attr in node.attribute:
                graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
                for g in graphs:
                    yield from walk(g, parent if parent is not None else node)

    yield from walk(model.graph, None)


def other_input(node: onnx.NodeProto, name: str) -> str | None:
    """A binary node's input that is not `name` (None: not binary, or both inputs are `name`)."""
    rest = [i for i in node.input if i != name]
    return rest[0] if len(rest) == 1 and len(node.input) == 2 else None


def attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def constant_tensors(model: onnx.ModelProto | onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """Every constant tensor of the top-level graph (or of `graph`) by the name nodes read it under:
    initializers, and the value of each Constant node (PaddlePaddle exports keep their weights there)."""
    graph = model.graph if isinstance(model, onnx.ModelProto) else model
    out = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            out.update(
                (node.output[0], a.t)
                for a in node.attribute
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR
            )
    return out


def count_params(model: onnx.ModelProto) -> int:
    """Parameters = elements of the constant tensors that hold weights, of any dtype, whether stored
    as initializers or as top-level Constant nodes (as in PaddlePaddle exports): floating-point
    constants, int8/uint8/int4/int16 weights of a quantized model, and int32 biases read by a
    DequantizeLinear. Quantization metadata (scales and zero points) and integer shapes or indices
    are not parameters: a 17M-parameter model quantized to int8 still holds 17M parameters. The
    bodies of If/Loop/Scan nodes count too (onnxruntime's quantizer moved hey_jarvis's weights into
    an If branch, and they read as a third of the parameters gone)."""
    return _graph_params(model.graph)


def _graph_params(graph: onnx.GraphProto) -> int:
    metadata, biases = set(), set()
    total = 0
    for node in graph.node:
        positions = _QUANT_METADATA.get(node.op_type, ())
        metadata.update(node.input[i] for i in positions if i < len(node.input))
        if node.op_type == "DequantizeLinear" or node.op_type in ("QLinearConv", "QGemm"):
            biases.update(node.input)
        for a in node.attribute:
            bodies = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
            total += sum(_graph_params(body) for body in bodies)
    for name, t in constant_tensors(graph).items():
        # onnxruntime's quantizers name the scales and zero points they add (the per-channel scale a
        # dynamically quantized MatMul multiplies by is read by a plain Mul)
        if name in metadata or (len(t.dims) <= 1 and name.endswith(("_scale", "_zero_point"))):
            continue
        if t.data_type in _WEIGHT_TYPES or (t.data_type == onnx.TensorProto.INT32 and name in biases):
            total += int(np.prod(t.dims)) if t.dims else 1
    return total


# inputs that are scales or zero points, by op
_QUANT_METADATA = {
    "QuantizeLinear": (1, 2),
    "DequantizeLinear": (1, 2),
    "QLinearConv": (1, 2, 4, 5, 6, 7),
    "QLinearMatMul": (1, 2, 4, 5, 6, 7),
    "MatMulInteger": (2, 3),
    "ConvInteger": (2, 3),
    "QLinearAdd": (1, 2, 4, 5, 6, 7),
    "QLinearMul": (1, 2, 4, 5, 6, 7),
    "QGemm": (1, 2, 4, 5, 7, 8),
    "DynamicQuantizeMatMul": (2, 3),
    "MatMulIntegerToFloat": (2, 3, 4, 5),
    "DynamicQuantizeLSTM": (8, 9, 10, 11),  # per-direction, per-gate scales of W and R
}
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
_WEIGHT_TYPES = _FLOAT_TYPES | {
    onnx.TensorProto.INT8,
    onnx.TensorProto.UINT8,
    onnx.TensorProto.INT16,
    onnx.TensorProto.UINT16,
    onnx.TensorProto.INT4,
    onnx.TensorProto.UINT4,
}


def make_model(graph: onnx.GraphProto, opset_imports: list, ir_version: int | None = None) -> onnx.ModelProto:
    """onnx.helper.make_model stamped with the lowest IR version its opsets need. helper.make_model
    stamps the installed onnx's newest IR version (14 for onnx 1.23), which older onnxruntime
    builds refuse to load ("Unsupported model IR version"), though the model needs nothing newer."""
    opset_imports = list(opset_imports)
    if ir_version is None:
        ir_version = onnx.helper.find_min_ir_version_for(opset_imports, ignore_unknown=True)
    return onnx.helper.make_model(graph, opset_imports=opset_imports, ir_version=ir_version)


def prune_initializers(model: onnx.ModelProto) -> int:
    """Remove initializers nothing reads any more."""
    graph = model.graph
    index = GraphIndex(model)
    used = set(index.consumers) | index.graph_outputs
    keep = [t for t in graph.initializer if t.name in used]
    removed = len(graph.initializer) - len(keep)
    if removed:
        del graph.initializer[:]
        graph.initializer.extend(keep)
        graph_inputs = [v for v in graph.input if v.name in used or v.name in index.graph_inputs]
        if len(graph_inputs) != len(graph.input):
            del graph.input[:]
            graph.input.extend(graph_inputs)
    return removed


def fresh_name(index: GraphIndex, base: str) -> str:
    """A value name no initializer or node output of the indexed graph has yet."""
    name, i = base, 1
    while name in index.initializers or name in index.producer:
        name = f"{base}.{i}"
        i += 1
    return name
