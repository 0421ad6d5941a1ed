"""Exact rewrites of activation patterns that exporters spell out op by op.

Hard-swish, x * clip(x + 3, 0, 6) / 6, comes out of PaddlePaddle (and older torch exports) as
four elementwise ops: Add, Clip, Mul, Div. Written as x * HardSigmoid(x) (alpha 1/6, beta 0.5;
HardSigmoid is in every opset, HardSwish only from 14) it is two ops. On PP-OCRv4's detector
(24 hard-swishes, the count `tensorfold optimize` notes) this and the affine folds (graph/folds.py)
make the unfactorized model 1.35-1.38x faster on the CPU provider (docs/results/hardware-aware.md,
"folds"); onnxruntime's profiler (`tensorfold profile`) shows fewer NCHWc layout reorders.
"""

from __future__ import annotations

import onnx
from onnx import helper

from tensorfold.graph.model import GraphIndex, attr, fresh_name, other_input, prune_initializers


def _clip_bounds(index: GraphIndex, clip: onnx.NodeProto) -> tuple[float | None, float | None]:
    if len(clip.input) > 1:  # opset 11+: min and max are inputs
        lo = index.scalar(clip.input[1])
        hi = index.scalar(clip.input[2]) if len(clip.input) > 2 else None
        return lo, hi
    return attr(clip, "min", None), attr(clip, "max", None)


def _is_div6(index: GraphIndex, node: onnx.NodeProto | None, value: str) -> bool:
    """node computes value / 6 (or value * 1/6)."""
    if node is None:
        return False
    if node.op_type == "Div" and node.input[0] == value:
        c = index.scalar(node.input[1])
        return c is not None and abs(c - 6.0) < 1e-6
    if node.op_type == "Mul":
        c = index.scalar(other_input(node, value))
        return c is not None and abs(c - 1 / 6) < 1e-6
    return False


def _match(index: GraphIndex, add: onnx.NodeProto):
    """(x, nodes to remove, output name) of a hard-swish that starts at this Add, or None."""
    if add.op_type != "Add" or len(add.input) != 2:
        return None
    for x in add.input:
        three = index.scalar(other_input(add, x))
        if three is None or abs(three - 3.0) > 1e-6 or index.is_constant(x):
            continue
        clip = index.single_user(add.output[0])
        if clip is None or clip.op_type != "Clip" or clip.input[0] != add.output[0]:
            continue
        lo, hi = _clip_bounds(index, clip)
        if lo is None or hi is None or abs(lo) > 1e-6 or abs(hi - 6.0) > 1e-6:
            continue
        nxt = index.single_user(clip.output[0])
        if nxt is None:
            continue
        # x * clip / 6
        if nxt.op_type == "Mul" and other_input(nxt, clip.output[0]) == x:
            last = index.single_user(nxt.output[0])
            if _is_div6(index, last, nxt.output[0]):
                return x, [add, clip, nxt, last], last.output[0]
        # (clip / 6) * x
        if _is_div6(index, nxt, clip.output[0]):
            last = index.single_user(nxt.output[0])
            if last is not None and last.op_type == "Mul" and other_input(last, nxt.output[0]) == x:
                return x, [add, clip, nxt, last], last.output[0]
    return None


def hard_swish_to_hard_sigmoid(model: onnx.ModelProto) -> int:
    """Rewrite every spelled-out hard-swish as x * HardSigmoid(x) in place; returns how many."""
    graph = model.graph
    index = GraphIndex(model)
    replace: dict[int, list[onnx.NodeProto]] = {}
    drop: set[int] = set()
    for node in graph.node:
        if id(node) in drop:
            continue
        got = _match(index, node)
        if got is None:
            continue
        x, nodes, out = got
        base = nodes[-1].name or out
        hs = helper.make_node(
            "HardSigmoid",
            [x],
            [fresh_name(index, f"{out}.hardsigmoid")],
            name=f"{base}.hardsigmoid",
            alpha=1 / 6,
            beta=0.5,
            doc_string="[tensorfold] hard-swish as x * HardSigmoid(x)",
        )
        mul = helper.make_node("Mul", [x, hs.output[0]], [out], name=f"{base}.hardswish")
        drop.update(id(n) for n in nodes)
        replace[id(nodes[-1])] = [hs, mul]
    if not replace:
        return 0
    kept = []
    for node in graph.node:
        if id(node) in replace:
            kept += replace[id(node)]
        elif id(node) not in drop:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    prune_initializers(model)
    return len(replace)
