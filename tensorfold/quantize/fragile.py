"""Spots of a graph known to break under int8 (what NNCF, Intel Neural Compressor and Olive keep in
float by default): LayerNormalization inputs (also written out as ReduceMean/Sub/Pow/Sqrt/Div),
Softmax inputs, embedding Gathers, attention-score MatMuls (two activations multiplied), and the
last layers of regression heads (a detector's maps, an embedding: every value is read, not only an
argmax). They are a prior, not a verdict: the mixed-precision search returns them to float first
where their measured error says so (quantize/mixed.py)."""

from __future__ import annotations

import onnx

from tensorfold.graph.model import GraphIndex

# ops between a head's last weight layer and the graph output
_HEAD_PASSTHROUGH = {
    "Sigmoid",
    "Relu",
    "Clip",
    "Add",
    "Mul",
    "Reshape",
    "Transpose",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Resize",
    "Concat",
    "Identity",
    "Div",
    "LeakyRelu",
    "Tanh",
}
_WEIGHT_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


def fragile_nodes(model: onnx.ModelProto, class_outputs: frozenset[str] | set[str] = frozenset()) -> dict[str, str]:
    """Node name -> why it is fragile, for the nodes of `model` (named) that int8 is known to hurt."""
    index = GraphIndex(model)
    constants = set(index.initializers) | {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    producer, consumers = index.producer, index.consumers
    found: dict[str, str] = {}

    def mark(node: onnx.NodeProto | None, why: str) -> None:
        if node is not None and node.op_type != "Constant":
            found.setdefault(node.name, why)

    for node in model.graph.node:
        op = node.op_type
        if op in ("LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization"):
            mark(node, "LayerNormalization")
            mark(producer.get(node.input[0]), "input of a LayerNormalization")
        elif op == "ReduceMean" and any(
            c.op_type == "Sub" and node.output[0] in c.input for c in consumers[node.input[0]]
        ):
            mark(producer.get(node.input[0]), "input of a LayerNormalization (ReduceMean/Sub/Pow/Sqrt/Div)")
        elif op == "Softmax":
            mark(node, "Softmax")
            mark(producer.get(node.input[0]), "input of a Softmax")
        elif op == "Gather" and node.input[0] in constants:
            mark(node, "embedding Gather")
        elif op == "MatMul" and node.input[0] not in constants and node.input[1] not in constants:
            mark(node, "attention-score MatMul (two activations)")
    for out in model.graph.output:
        if out.name in class_outputs:
            continue
        # walk back from an output without a class axis (boxes, maps, scores, embeddings) to its
        # last weight layer
        node, steps = producer.get(out.name), 0
        while node is not None and steps < 6:
            mark(node, f"last layers of output {out.name}")
            if node.op_type in _WEIGHT_OPS or node.op_type not in _HEAD_PASSTHROUGH:
                break
            node = next((producer[i] for i in node.input if i in producer and i not in constants), None)
            steps += 1
    return found
