"""Exact folds into a Conv's weights: BatchNorm and per-channel (or scalar) affine ops after a
conv, and affine ops before a conv without padding.

onnxruntime fuses some of these itself (ConvBN, ConvMul/ConvAdd when the constant is the second
input and per-channel), but not PaddlePaddle's learnable affine blocks (`Mul(constant, conv)`,
then `Add`) nor any affine in front of a conv; PP-OCRv4's detector has 38 of them
(the note `tensorfold optimize` prints). Folding
them also gives the passes one conv with one bias where the graph had three nodes.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from tensorfold.graph.model import GraphIndex, attr, fresh_name, prune_initializers

# an op on y and a per-channel (or scalar) constant c, applied to y = factor * x + shift:
# the new (factor, shift); None where the result is not affine in y
_AFFINE_OPS = {
    "Mul": lambda f, s, c, y_first: (f * c, s * c),
    "Add": lambda f, s, c, y_first: (f, s + c),
    "Sub": lambda f, s, c, y_first: (f, s - c) if y_first else (-f, c - s),
    "Div": lambda f, s, c, y_first: (f / c, s / c) if y_first else None,
}


def fold_batchnorm(model: onnx.ModelProto) -> int:
    """Conv -> BatchNormalization (inference mode, constant stats) becomes one Conv."""

    def bn_affine(index, conv, bn, w):
        if bn.op_type != "BatchNormalization" or bn.input[0] != conv.output[0] or attr(bn, "training_mode", 0):
            return None
        if len([o for o in bn.output if o]) != 1 or not all(index.is_constant(n) for n in bn.input[1:5]):
            return None
        scale, beta, mean, var = (index.array(n).astype(np.float64) for n in bn.input[1:5])
        factor = scale / np.sqrt(var + attr(bn, "epsilon", 1e-5))
        return factor, beta - mean * factor, [bn]

    return _rewrite_convs(model, _after(bn_affine), "bnfold")


def fold_conv_affine(model: onnx.ModelProto) -> int:
    """Conv followed by Mul/Add/Sub/Div with per-channel or scalar constants becomes one Conv."""

    def affine(index, conv, first, w):
        factor, shift = np.ones(w.shape[0]), np.zeros(w.shape[0])
        node, y, absorbed = first, conv.output[0], []
        while node is not None and node.op_type in _AFFINE_OPS and len(node.input) == 2:
            consts = [i for i in node.input if i != y]
            if len(consts) != 1 or not index.is_constant(consts[0]):
                break
            c = _per_channel(index.array(consts[0]), w.shape[0], w.ndim)
            got = None if c is None else _AFFINE_OPS[node.op_type](factor, shift, c, node.input[0] == y)
            if got is None:
                break
            factor, shift = got
            absorbed.append(node)
            y = node.output[0]
            users = index.consumers.get(y, [])
            if len(users) != 1 or y in index.graph_outputs:
                break
            node = users[0]
        return (factor, shift, absorbed) if absorbed else None

    return _rewrite_convs(model, _after(affine), "affinefold")


def fold_affine_into_next_conv(model: onnx.ModelProto) -> int:
    """Mul/Add/Sub/Div with per-channel or scalar constants whose result only a Conv without
    padding reads (a pointwise conv after an activation's affine block) fold into that Conv:
    conv(f * x + s) = conv_{W * f}(x) + sum(W * s). Exact only without padding (a padded border
    would see s where the fold sees 0), so padded convs are left alone."""

    def before(index, conv, w, b, taken):
        if any(attr(conv, "pads", [0])) or attr(conv, "auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            return None
        cin = w.shape[1] * attr(conv, "group", 1)
        factor, shift, v, chain = np.ones(cin), np.zeros(cin), conv.input[0], []
        while True:  # walk back: v = factor * u + shift
            op = index.producer.get(v)
            if (
                op is None
                or op.op_type not in _AFFINE_OPS
                or len(op.input) != 2
                or v in index.graph_outputs
                or len(index.consumers.get(v, [])) != 1
                or id(op) in taken
            ):
                break
            consts = [i for i in op.input if index.is_constant(i)]
            if len(consts) != 1:
                break
            u = next(i for i in op.input if i != consts[0])
            c = _per_channel(index.array(consts[0]), cin, w.ndim)
            got = None if c is None else _AFFINE_OPS[op.op_type](np.ones(cin), np.zeros(cin), c, op.input[0] == u)
            if got is None:
                break
            factor, shift = factor * got[0], factor * got[1] + shift
            chain.append(op)
            v = u
        if not chain:
            return None
        # weight [O, I/g, k...]: the input channel of W[o, j] is (o // (O/g)) * (I/g) + j
        groups = attr(conv, "group", 1)
        channel = (np.arange(w.shape[0])[:, None] // (w.shape[0] // groups)) * w.shape[1] + np.arange(w.shape[1])
        expand = (slice(None), slice(None)) + (None,) * (w.ndim - 2)
        w64 = w.astype(np.float64)
        new_w = w64 * factor[channel][expand]
        new_b = b + (w64 * shift[channel][expand]).reshape(w.shape[0], -1).sum(axis=1)
        return new_w, new_b, chain, v, conv.output[0]

    return _rewrite_convs(model, before, "infold")


def _per_channel(c: np.ndarray, channels: int, rank: int) -> np.ndarray | None:
    """c as a vector over the channels of a conv tensor with `rank` dims, if c broadcasts only
    along channels (or is a scalar) and does not change the tensor's shape."""
    if not np.issubdtype(c.dtype, np.floating) or c.ndim > rank:
        return None
    if c.size == 1:
        return np.full(channels, float(c.ravel()[0]))
    dims = [1] * (rank - c.ndim) + list(c.shape)
    if dims[1] == channels and all(d == 1 for i, d in enumerate(dims) if i != 1):
        return c.astype(np.float64).ravel()
    return None


def _after(match):
    """A fold of the ops after a conv: `match(index, conv, its one user, weight)` gives (factor,
    shift, absorbed) when the ops `absorbed`, from that user on, compute factor * y + shift per channel."""

    def fold(index, conv, w, b, taken):
        out = conv.output[0]
        users = index.consumers.get(out, [])
        if len(users) != 1 or out in index.graph_outputs:
            return None
        got = match(index, conv, users[0], w)
        if got is None:
            return None
        factor, shift, absorbed = got
        new_w = w.astype(np.float64) * factor.reshape(-1, *([1] * (w.ndim - 1)))
        return new_w, b * factor + shift, absorbed, conv.input[0], absorbed[-1].output[0]

    return fold


def _rewrite_convs(model: onnx.ModelProto, fold, tag: str) -> int:
    """Offer every Conv with constant weights (and bias) to `fold(index, conv, weight, bias,
    ids of nodes already absorbed)`, which returns None or (new weight, new bias, the nodes it
    absorbs, the conv's new input, its new output). Returns how many convs changed."""
    graph = model.graph
    index = GraphIndex(model)
    drop: set[int] = set()
    folded = 0
    for conv in graph.node:
        if conv.op_type != "Conv" or len(conv.input) < 2 or not index.is_constant(conv.input[1]):
            continue
        if len(conv.input) > 2 and conv.input[2] and not index.is_constant(conv.input[2]):
            continue
        if len(index.consumers.get(conv.input[1], [])) > 1:
            continue  # a weight other nodes read too: a fold would copy it (more parameters, not fewer)
        w = index.array(conv.input[1])
        if not np.issubdtype(w.dtype, np.floating):
            continue
        b = (
            index.array(conv.input[2]).astype(np.float64)
            if len(conv.input) > 2 and conv.input[2]
            else np.zeros(w.shape[0])
        )
        got = fold(index, conv, w, b, drop)
        if got is None:
            continue
        new_w, new_b, absorbed, new_input, new_output = got
        base = conv.name or conv.output[0]
        names = []
        for value, suffix in ((new_w, "weight"), (new_b, "bias")):
            name = fresh_name(index, f"{base}.{tag}.{suffix}")
            graph.initializer.append(numpy_helper.from_array(value.astype(w.dtype), name))
            index.initializers[name] = graph.initializer[-1]
            names.append(name)
        while len(conv.input) < 3:
            conv.input.append("")
        conv.input[0], conv.input[1], conv.input[2] = new_input, names[0], names[1]
        conv.output[0] = new_output
        conv.doc_string = (
            conv.doc_string + " " if conv.doc_string else ""
        ) + f"[tensorfold] folded {', '.join(n.name or n.op_type for n in absorbed)}"
        drop.update(id(n) for n in absorbed)
        folded += 1
    if folded:
        keep = [n for n in graph.node if id(n) not in drop]
        del graph.node[:]
        graph.node.extend(keep)
        prune_initializers(model)
    return folded
