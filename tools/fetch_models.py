#!/usr/bin/env python3
"""Fetch the real ONNX models tensorfold benchmarks on into the cache, and describe them.

For each model: path, size, opset, inputs and outputs, op-type counts, where its weights
live (initializers or Constant nodes), control-flow subgraphs, and the Conv attributes seen.

    .venv/bin/python tools/fetch_models.py          # cache: $TENSORFOLD_CACHE or ~/.cache/tensorfold
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tensorfold.bench.real_models import fetch_rapidocr_models  # noqa: E402
from tensorfold.errors import TensorfoldError  # noqa: E402


def _shape(value_info) -> list:
    dims = value_info.type.tensor_type.shape.dim
    return [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in dims]


def _constant_tensors(graph) -> dict[str, np.ndarray]:
    out = {}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    out[node.output[0]] = numpy_helper.to_array(attr.t)
    return out


def _subgraph_ops(graph) -> collections.Counter:
    """Control-flow nodes (If/Loop/Scan, anything with a graph attribute), at any depth."""
    found = collections.Counter()
    for node in graph.node:
        for attr in node.attribute:
            subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subgraphs:
                found[node.op_type] += 1
                found += _subgraph_ops(sub)
    return found


def _conv_summary(graph, weights: dict[str, np.ndarray]) -> dict:
    seen = collections.defaultdict(collections.Counter)
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        group = attrs.get("group", 1)
        w = weights.get(node.input[1])
        if w is None:
            kind = "weight not constant"
        elif group == 1:
            kind = "dense"
        elif w.shape[1] == 1 and group == w.shape[0]:
            kind = "depthwise"
        else:
            kind = f"grouped (groups={group})"
        seen["kind"][kind] += 1
        seen["bias"]["yes" if len(node.input) > 2 and node.input[2] else "no"] += 1
        seen["kernel"]["x".join(map(str, attrs.get("kernel_shape", w.shape[2:] if w is not None else [])))] += 1
        for name in ("strides", "dilations", "pads"):
            seen[name][str(attrs[name]) if name in attrs else "absent"] += 1
        auto_pad = attrs.get("auto_pad", b"absent")
        seen["auto_pad"][auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad] += 1
    return {k: dict(v.most_common()) for k, v in seen.items()}


def describe(path: Path) -> str:
    model = onnx.load(str(path))
    graph = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    consts = _constant_tensors(graph)
    big_consts = {k: v for k, v in consts.items() if v.size > 1}
    opsets = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in model.opset_import)
    init_names = {i.name for i in graph.initializer}
    lines = [
        f"{path}",
        f"  size {path.stat().st_size / 1e6:.2f} MB, opset {opsets}, ir_version {model.ir_version}, "
        f"producer {model.producer_name} {model.producer_version}".rstrip(),
        "  inputs:  " + ", ".join(f"{i.name} {_shape(i)}" for i in graph.input if i.name not in init_names),
        "  outputs: " + ", ".join(f"{o.name} {_shape(o)}" for o in graph.output),
        f"  nodes {len(graph.node)}: "
        + ", ".join(f"{op} {n}" for op, n in collections.Counter(n.op_type for n in graph.node).most_common()),
        f"  weights: {len(inits)} initializers ({sum(a.nbytes for a in inits.values()) / 1e6:.2f} MB), "
        f"{len(big_consts)} non-scalar Constant nodes "
        f"({sum(a.nbytes for a in big_consts.values()) / 1e6:.2f} MB)"
        + ("  -> stored as Constant nodes" if big_consts and not inits else ""),
    ]
    sub = _subgraph_ops(graph)
    lines.append("  subgraphs: " + (", ".join(f"{op} {n}" for op, n in sub.items()) if sub else "none"))
    for key, counts in _conv_summary(graph, {**inits, **consts}).items():
        lines.append(f"  conv {key}: " + ", ".join(f"{v} x{n}" for v, n in counts.items()))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--timeout", type=float, default=600, help="seconds allowed for pip download")
    args = parser.parse_args(argv)
    try:
        paths = fetch_rapidocr_models(timeout=args.timeout)
    except TensorfoldError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, path in paths.items():
        print(f"[{name}] " + describe(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
