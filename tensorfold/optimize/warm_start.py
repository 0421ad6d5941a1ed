"""Warm starts for `optimize --recover`: a candidate built from a recovered one.

A factor chain is a linear map (convs, Gemms, MatMuls and reshapes, nothing non-linear between
them), so it folds back into one dense weight: run the chain alone in onnxruntime on unit inputs
and read its response. A conv chain with its pads zeroed and its strides set to 1 answers a
one-hot patch the size of the kernel's reach with one output position: that kernel entry. A
Gemm or MatMul chain answers the identity with its weight. What the chain gives a zero input is
its bias.

`dense_equivalent` puts those weights, and every other weight recovery trained, into the model the
candidates were factorized from. Factorizing that at a higher ratio starts the next candidate where
recovery had moved the network, instead of at the input model's weights (optimize's bound search
does this from its most compressed recovered candidate within the bound: `search_budget`'s
`warm`).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from tensorfold.onnxrt.sessions import make_session
from tensorfold.passes.chains import provenance
from tensorfold.passes.layers import Layer, MatMulAttrs, find_layers


def chains(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """{original layer name: its chain's nodes in graph order}, from each node's provenance."""
    found: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in model.graph.node:
        info = provenance(node)
        if info is not None and "output" in info:
            found[info["original"]].append(node)
    return dict(found)


def dense_equivalent(recovered: onnx.ModelProto, template: onnx.ModelProto) -> onnx.ModelProto:
    """`template` (the model the candidate was factorized from) with each rewritten layer's weight
    and bias set to what its chain in `recovered` computes, and every other weight the two share
    by name and shape taken from `recovered`. A chain that does not fold (shared factors, a shape
    the probe cannot read) leaves its layer at the template's weight."""
    dense = onnx.ModelProto()
    dense.CopyFrom(template)
    trained = {t.name: t for t in recovered.graph.initializer}
    weights = {t.name: t for t in dense.graph.initializer}
    for name, tensor in weights.items():
        if (
            name in trained
            and tuple(trained[name].dims) == tuple(tensor.dims)
            and trained[name].data_type == tensor.data_type
        ):
            tensor.CopyFrom(trained[name])
    layers, _ = find_layers(dense)
    by_name = {layer.name: layer for layer in layers}
    for original, nodes in chains(recovered).items():
        layer = by_name.get(original)
        if layer is None or layer.sharers:
            continue
        folded = fold(layer, nodes, trained)
        if folded is None:
            continue
        weight, bias = folded
        stored = weights[layer.node.input[1]]
        if layer.kind == "gemm" and len(stored.dims) == 2 and tuple(stored.dims) != weight.shape:
            weight = weight.T  # transB: stored (N, K)
        alpha = layer.gemm.alpha if layer.kind == "gemm" else 1.0
        stored.CopyFrom(numpy_helper.from_array((weight / alpha).astype(np.float32), stored.name))
        if bias is not None and layer.bias_name is not None and layer.bias_name in weights:
            b = weights[layer.bias_name]
            beta = layer.gemm.beta if layer.kind == "gemm" else 1.0
            if int(np.prod(b.dims)) == bias.size:
                b.CopyFrom(numpy_helper.from_array((bias / beta).reshape(tuple(b.dims)).astype(np.float32), b.name))
    return dense


def fold(
    layer: Layer, nodes: list[onnx.NodeProto], weights: dict[str, onnx.TensorProto]
) -> tuple[np.ndarray, np.ndarray | None] | None:
    """(the chain's weight in the layer's layout: conv (O, I/groups, *k), Gemm/MatMul (K, N); its
    bias or None), or None where the probe cannot read it."""
    produced = {o for n in nodes for o in n.output}
    outside = [i for n in nodes for i in n.input if i and i not in produced and i not in weights]
    if len(set(outside)) != 1 or layer.node.output[0] not in produced:
        return None
    if layer.kind == "gemm" and layer.gemm.trans_a:
        return None  # the chain reads the input transposed
    source, output = outside[0], layer.node.output[0]
    probe_nodes = [_unpadded(n) if n.op_type == "Conv" else n for n in nodes]
    used = {i for n in nodes for i in n.input if i in weights}
    graph = helper.make_graph(
        probe_nodes,
        "chain",
        [helper.make_tensor_value_info(source, onnx.TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, None)],
        [weights[n] for n in sorted(used)],
    )
    probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    try:
        session = make_session(probe, threads=1)
        if layer.kind == "conv":
            return _fold_conv(layer, session, source)
        return _fold_matrix(layer, session, source)
    except Exception:  # noqa: BLE001 - any chain the probe cannot run keeps its layer cold
        return None


def _unpadded(node: onnx.NodeProto) -> onnx.NodeProto:
    """The conv with no padding and stride 1: its output at position 0 is the sum over one window."""
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    kernel = next((list(a.ints) for a in node.attribute if a.name == "kernel_shape"), None)
    keep = [a for a in copy.attribute if a.name not in ("pads", "strides", "auto_pad")]
    del copy.attribute[:]
    copy.attribute.extend(keep)
    if kernel is not None:
        copy.attribute.extend([helper.make_attribute("strides", [1] * len(kernel))])
    return copy


def _fold_conv(layer: Layer, session: ort.InferenceSession, source: str) -> tuple[np.ndarray, np.ndarray | None]:
    out_ch, in_per_group, *kernel = layer.weight.shape
    dilations = layer.conv.dilations or [1] * len(kernel)
    reach = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    channels = in_per_group * layer.groups
    positions = list(np.ndindex(*kernel))
    x = np.zeros((channels * len(positions), channels, *reach), np.float32)
    for c in range(channels):
        for j, pos in enumerate(positions):
            x[(c * len(positions) + j, c) + tuple(p * d for p, d in zip(pos, dilations))] = 1.0
    zero = session.run(None, {source: np.zeros((1, channels, *reach), np.float32)})[0]
    response = session.run(None, {source: x})[0]
    if response.shape[1:] != (out_ch, *([1] * len(kernel))):
        raise ValueError(f"chain answers {response.shape[1:]}")
    bias = zero.reshape(out_ch)
    full = (response.reshape(channels, len(positions), out_ch) - bias).transpose(2, 0, 1)
    full = full.reshape(out_ch, channels, *kernel)
    per_group = out_ch // layer.groups
    weight = np.stack(
        [full[o, (o // per_group) * in_per_group : (o // per_group + 1) * in_per_group] for o in range(out_ch)]
    )
    return weight, bias


def _fold_matrix(layer: Layer, session: ort.InferenceSession, source: str) -> tuple[np.ndarray, np.ndarray | None]:
    k, n = layer.weight.shape
    rank = (layer.attrs.input_rank or 2) if isinstance(layer.attrs, MatMulAttrs) else 2
    lead = (1,) * max(0, rank - 2)
    zero = session.run(None, {source: np.zeros((*lead, 1, k), np.float32)})[0].reshape(-1)
    response = session.run(None, {source: np.eye(k, dtype=np.float32).reshape(*lead, k, k)})[0].reshape(k, n)
    bias = zero if np.any(zero) else None
    return response - zero[None, :], bias
