"""Put a model into the form the passes expect: weights as initializers, BatchNorm and per-channel
affine ops folded into their convs, hard-swish in two ops, shapes inferred."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from tensorfold.graph.model import GraphIndex, attr
from tensorfold.graph.simplify import hard_swish_to_hard_sigmoid


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
    model = infer_shapes(model)
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
        if (node.op_type == "Identity" and node.input[0] in index.initializers
                and node.output[0] not in index.graph_outputs):
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


def fold_batchnorm(model: onnx.ModelProto) -> int:
    """Conv -> BatchNormalization (inference mode, constant stats) becomes one Conv."""
    def bn_affine(index, conv, bn, w):
        if bn.op_type != "BatchNormalization" or bn.input[0] != conv.output[0] or attr(bn, "training_mode", 0):
            return None
        if len([o for o in bn.output if o]) != 1 or not all(index.is_constant(n) for n in bn.input[1:5]):
            return None
        scale, beta, mean, var = (index.array(n).astype(np.float64) for n in bn.input[1:5])
        factor = scale / np.sqrt(var + attr(bn, "epsilon", 1e-5))
        return factor, beta - mean * factor, bn

    return _fold_into_convs(model, bn_affine, "bnfold")


# y = conv(x) followed by these ops on a per-channel (or scalar) constant c: (factor, shift) -> new pair
_AFFINE_OPS = {
    "Mul": lambda f, s, c, y_first: (f * c, s * c),
    "Add": lambda f, s, c, y_first: (f, s + c),
    "Sub": lambda f, s, c, y_first: (f, s - c) if y_first else (-f, c - s),
    "Div": lambda f, s, c, y_first: (f / c, s / c) if y_first else None,
}


def fold_conv_affine(model: onnx.ModelProto) -> int:
    """Conv followed by Mul/Add/Sub/Div with per-channel or scalar constants (PaddlePaddle's
    learnable affine blocks, exported scale-and-shift) becomes one Conv. onnxruntime fuses such ops
    only when the constant is the second input of a Mul/Add and a per-channel shape; PP-OCRv4's
    detector has 28 `Mul(constant, conv)` + `Add` pairs it leaves unfused."""
    def affine(index, conv, first, w):
        factor, shift = np.ones(w.shape[0]), np.zeros(w.shape[0])
        node, y, last = first, conv.output[0], None
        while node is not None and node.op_type in _AFFINE_OPS and len(node.input) == 2:
            consts = [i for i in node.input if i != y]
            if len(consts) != 1 or not index.is_constant(consts[0]):
                break
            c = _per_channel(index.array(consts[0]), w.shape[0], w.ndim)
            if c is None:
                break
            got = _AFFINE_OPS[node.op_type](factor, shift, c, node.input[0] == y)
            if got is None:
                break
            factor, shift, last = got[0], got[1], node
            y = node.output[0]
            users = index.consumers.get(y, [])
            if len(users) != 1 or y in index.graph_outputs:
                break
            node = users[0]
        return None if last is None else (factor, shift, last)

    return _fold_into_convs(model, affine, "affinefold")


def fold_affine_into_next_conv(model: onnx.ModelProto) -> int:
    """Mul/Add/Sub/Div with per-channel or scalar constants whose result only a Conv without
    padding reads (a pointwise conv after an activation's affine block) fold into that Conv:
    conv(f * x + s) = conv_{W * f}(x) + sum(W * s). Exact only without padding (a padded border
    would see s where the fold sees 0), so padded convs are left alone."""
    graph = model.graph
    index = GraphIndex(model)
    drop: set[int] = set()
    folded = 0
    for conv in graph.node:
        if conv.op_type != "Conv" or len(conv.input) < 2 or not index.is_constant(conv.input[1]):
            continue
        if len(conv.input) > 2 and conv.input[2] and not index.is_constant(conv.input[2]):
            continue
        if any(attr(conv, "pads", [0]) ) or attr(conv, "auto_pad", "NOTSET") not in ("NOTSET", "VALID", b"NOTSET", b"VALID"):
            continue
        w = index.array(conv.input[1])
        groups = attr(conv, "group", 1)
        cin = w.shape[1] * groups
        if not np.issubdtype(w.dtype, np.floating):
            continue
        factor, shift, v, chain = np.ones(cin), np.zeros(cin), conv.input[0], []
        while True:
            op = index.producer.get(v)
            if (op is None or op.op_type not in _AFFINE_OPS or len(op.input) != 2 or v in index.graph_outputs
                    or len(index.consumers.get(v, [])) != 1 or id(op) in drop):
                break
            consts = [i for i in op.input if index.is_constant(i)]
            if len(consts) != 1:
                break
            u = next(i for i in op.input if i != consts[0])
            c = _per_channel(index.array(consts[0]), cin, w.ndim)
            got = None if c is None else _AFFINE_OPS[op.op_type](np.ones(cin), np.zeros(cin), c, op.input[0] == u)
            if got is None:
                break
            factor, shift = factor * got[0], factor * got[1] + shift     # v = factor * u + shift
            chain.append(op)
            v = u
        if not chain:
            continue
        # weight [O, I/g, k...]: the input channel of W[o, j] is (o // (O/g)) * (I/g) + j
        out_per_group = w.shape[0] // groups
        channel = (np.arange(w.shape[0])[:, None] // out_per_group) * w.shape[1] + np.arange(w.shape[1])[None, :]
        expand = (slice(None), slice(None)) + (None,) * (w.ndim - 2)
        w64 = w.astype(np.float64)
        new_w = (w64 * factor[channel][expand]).astype(w.dtype)
        b = index.array(conv.input[2]).astype(np.float64) if len(conv.input) > 2 and conv.input[2] else np.zeros(w.shape[0])
        new_b = (b + (w64 * shift[channel][expand]).reshape(w.shape[0], -1).sum(axis=1)).astype(w.dtype)
        base = conv.name or conv.output[0]
        w_name, b_name = _fresh(index, f"{base}.infold.weight"), _fresh(index, f"{base}.infold.bias")
        graph.initializer.append(numpy_helper.from_array(new_w, w_name))
        graph.initializer.append(numpy_helper.from_array(new_b, b_name))
        index.initializers[w_name] = graph.initializer[-2]
        index.initializers[b_name] = graph.initializer[-1]
        while len(conv.input) < 3:
            conv.input.append("")
        conv.input[0], conv.input[1], conv.input[2] = v, w_name, b_name
        drop.update(id(op) for op in chain)
        conv.doc_string = (conv.doc_string + " " if conv.doc_string else "") + \
            f"[tensorfold] folded {', '.join(op.name or op.op_type for op in chain)}"
        folded += 1
    if folded:
        keep = [n for n in graph.node if id(n) not in drop]
        del graph.node[:]
        graph.node.extend(keep)
        prune_initializers(model)
    return folded


def _per_channel(c: np.ndarray, channels: int, rank: int) -> np.ndarray | None:
    """c as a vector over the output channels of a conv whose output has `rank` dims, if c
    broadcasts only along channels (or is a scalar) and does not change the output's shape."""
    if not np.issubdtype(c.dtype, np.floating) or c.ndim > rank:
        return None
    if c.size == 1:
        return np.full(channels, float(c.ravel()[0]))
    dims = [1] * (rank - c.ndim) + list(c.shape)
    if dims[1] == channels and all(d == 1 for i, d in enumerate(dims) if i != 1):
        return c.astype(np.float64).ravel()
    return None


def _fold_into_convs(model: onnx.ModelProto, match, tag: str) -> int:
    """For every Conv with constant weights whose output feeds exactly one node, `match(index, conv,
    user, weight)` returns (factor, shift, last) when the ops from that user to `last` compute
    factor * y + shift per channel; the Conv then absorbs them and writes `last`'s output."""
    graph = model.graph
    index = GraphIndex(model)
    drop: set[int] = set()
    folded = 0
    for conv in graph.node:
        if conv.op_type != "Conv" or len(conv.input) < 2 or not index.is_constant(conv.input[1]):
            continue
        if len(conv.input) > 2 and conv.input[2] and not index.is_constant(conv.input[2]):
            continue
        out = conv.output[0]
        users = index.consumers.get(out, [])
        if len(users) != 1 or out in index.graph_outputs:
            continue
        w = index.array(conv.input[1])
        if not np.issubdtype(w.dtype, np.floating):
            continue
        got = match(index, conv, users[0], w)
        if got is None:
            continue
        factor, shift, last = got
        b = index.array(conv.input[2]).astype(np.float64) if len(conv.input) > 2 and conv.input[2] else np.zeros(w.shape[0])
        new_w = (w.astype(np.float64) * factor.reshape(-1, *([1] * (w.ndim - 1)))).astype(w.dtype)
        new_b = (b * factor + shift).astype(w.dtype)
        w_name = _fresh(index, f"{conv.name or out}.{tag}.weight")
        b_name = _fresh(index, f"{conv.name or out}.{tag}.bias")
        graph.initializer.append(numpy_helper.from_array(new_w, w_name))
        graph.initializer.append(numpy_helper.from_array(new_b, b_name))
        index.initializers[w_name] = graph.initializer[-2]
        index.initializers[b_name] = graph.initializer[-1]
        while len(conv.input) < 3:
            conv.input.append("")
        conv.input[1], conv.input[2] = w_name, b_name
        # drop every node from the conv's user up to `last`
        node, names = users[0], []
        while True:
            drop.add(id(node))
            names.append(node.name or node.op_type)
            if node is last:
                break
            node = index.consumers[node.output[0]][0]
        conv.output[0] = last.output[0]
        conv.doc_string = (conv.doc_string + " " if conv.doc_string else "") + f"[tensorfold] folded {', '.join(names)}"
        folded += 1
    if folded:
        keep = [n for n in graph.node if id(n) not in drop]
        del graph.node[:]
        graph.node.extend(keep)
        prune_initializers(model)
    return folded


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


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Run ONNX shape inference; a model it cannot handle (custom ops) keeps its shapes as they were."""
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - inference is best effort; the graph stays valid without it
        return model


def _fresh(index: GraphIndex, base: str) -> str:
    name, i = base, 1
    while name in index.initializers or name in index.producer:
        name = f"{base}.{i}"
        i += 1
    return name


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


__all__ = ["normalize", "constants_to_initializers", "remove_weight_identities", "fold_batchnorm",
           "prune_initializers", "infer_shapes", "make_name_generator"]
