"""Put a model into the form the passes expect: weights as initializers, BatchNorm and per-channel
affine ops folded into their convs, hard-swish in two ops, shapes inferred."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from tensorfold.graph.folds import fold_affine_into_next_conv, fold_batchnorm, fold_conv_affine
from tensorfold.graph.model import GraphIndex, prune_initializers
from tensorfold.graph.simplify import hard_swish_to_hard_sigmoid
from tensorfold.onnxrt import large


def normalize(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    """Return a normalized copy and counts of what changed. The input model is not modified."""
    model = _copy(model)
    stats = {
        "constants_to_initializers": constants_to_initializers(model),
        "identities_removed": remove_weight_identities(model),
        "batchnorms_folded": fold_batchnorm(model),
        # before the affine folds: a Div by 6 would otherwise fold into the next conv and leave
        # a hard-swish no longer recognizable
        "hard_swish_rewritten": hard_swish_to_hard_sigmoid(model),
        "affines_folded": fold_conv_affine(model) + fold_affine_into_next_conv(model),
    }
    infer_shapes(model)
    return model, stats


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def constants_to_initializers(model: onnx.ModelProto) -> int:
    """Top-level Constant nodes holding a tensor become initializers of the same name."""
    graph = model.graph
    outputs = {v.name for v in graph.output}
    keep, moved = [], 0
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output[0] not in outputs:
            tensor = _constant_tensor(node)
            if tensor is not None:
                tensor.name = node.output[0]
                graph.initializer.append(tensor)
                moved += 1
                continue
        keep.append(node)
    if moved:
        del graph.node[:]
        graph.node.extend(keep)
    return moved


def _constant_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    for a in node.attribute:
        if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
            t = onnx.TensorProto()
            t.CopyFrom(a.t)
            return t
        if a.name == "value_float":
            return numpy_helper.from_array(np.array(a.f, dtype=np.float32))
        if a.name == "value_floats":
            return numpy_helper.from_array(np.array(list(a.floats), dtype=np.float32))
        if a.name == "value_int":
            return numpy_helper.from_array(np.array(a.i, dtype=np.int64))
        if a.name == "value_ints":
            return numpy_helper.from_array(np.array(list(a.ints), dtype=np.int64))
    return None  # sparse_value / strings: leave the node alone


def remove_weight_identities(model: onnx.ModelProto) -> int:
    """`Identity(initializer)` (common in exports) is bypassed so weights are seen as constants."""
    graph = model.graph
    index = GraphIndex(model)
    rename: dict[str, str] = {}
    keep = []
    for node in graph.node:
        if (
            node.op_type == "Identity"
            and node.input[0] in index.initializers
            and node.output[0] not in index.graph_outputs
        ):
            rename[node.output[0]] = node.input[0]
            continue
        keep.append(node)
    if not rename:
        return 0
    for node in keep:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    _rename_in_subgraphs(keep, rename)
    del graph.node[:]
    graph.node.extend(keep)
    return len(rename)


def _rename_in_subgraphs(nodes, rename):
    for node in nodes:
        for a in node.attribute:
            graphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
            for g in graphs:
                for sub in g.node:
                    for i, name in enumerate(sub.input):
                        if name in rename:
                            sub.input[i] = rename[name]
                _rename_in_subgraphs(g.node, rename)


def infer_shapes(model: onnx.ModelProto) -> None:
    """ONNX shape inference into `model`; a model it cannot handle (custom ops) keeps its shapes as
    they were."""
    try:
        large.infer_shapes_in_place(model, data_prop=True)
    except Exception:  # noqa: BLE001 - inference is best effort; the graph stays valid without it
        pass


def make_name_generator(model: onnx.ModelProto):
    """Unique value/node names for new nodes."""
    taken = {t.name for t in model.graph.initializer}
    for n in model.graph.node:
        taken.update(n.output)
        taken.add(n.name)
    taken.update(v.name for v in model.graph.input)

    def fresh(base: str) -> str:
        name, i = base, 1
        while name in taken:
            name = f"{base}_{i}"
            i += 1
        taken.add(name)
        return name

    return fresh


__all__ = [
    "normalize",
    "constants_to_initializers",
    "remove_weight_identities",
    "fold_batchnorm",
    "fold_conv_affine",
    "fold_affine_into_next_conv",
    "hard_swish_to_hard_sigmoid",
    "prune_initializers",
    "infer_shapes",
    "make_name_generator",
]
