"""Activation smoothing before dynamic int8 (SmoothQuant, Xiao et al. 2023).

Dynamic int8 quantizes each activation at run time with one scale for the whole tensor. A
transformer's LayerNorm outputs hold a few channels tens of times larger than the rest, so that
one scale leaves the other channels a handful of int8 steps. Per input channel j of a weight
MatMul/Gemm, dividing the activation by s_j and multiplying the weight's row j by s_j leaves the
float product unchanged and moves the outliers' range into the weights, which are quantized per
output channel. s_j = max|x_j|^alpha / max|w_j|^(1 - alpha), the activation maxima measured on the
calibration fit share.

Why our own: onnxruntime's SmoothQuant option serves quantize_static only and needs Intel Neural
Compressor; dynamic int8 is where the transformers measured here run fastest. Measured on
paraphrase-MiniLM-L3 (docs/results/int8-search.md): fully quantized, the held-out error went from
0.096 to 0.060 at alpha 0.9, and within 0.05 every MatMul is int8 (1.66x the input's speed, against
1.29x unsmoothed with four nodes kept in float).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from tensorfold.onnxrt.sessions import make_session

# MiniLM-L3, MatMuls in int8 (a development run): 0.5 0.111, 0.75 0.047, 0.9 0.040, 0.95 0.040
ALPHAS = (0.5, 0.75, 0.9)
_EPS = 1e-5


@dataclass(frozen=True)
class Group:
    """The weight MatMul/Gemm nodes that read one activation tensor (Q, K and V read one), each with
    its weight and the weight's axis that runs over the activation's channels."""

    activation: str
    nodes: tuple[str, ...]
    weights: tuple[str, ...]
    axes: tuple[int, ...]  # 0: a MatMul's (K, N) weight or a Gemm's; 1: a Gemm's transB (N, K) weight


def smoothable_groups(model: onnx.ModelProto) -> list[Group]:
    """Activations read by float32 weight MatMuls (a 2-D initializer as B) or Gemms (transA 0),
    grouped by tensor; a weight that any other node reads too is left alone (scaling it would
    change that node)."""
    weights = {t.name: t for t in model.graph.initializer if len(t.dims) == 2 and t.data_type == onnx.TensorProto.FLOAT}
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    found: dict[str, list[tuple[str, str, int]]] = {}
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2 or node.input[1] not in weights:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Gemm" and attrs.get("transA", 0):
            continue
        if readers[node.input[1]] > 1 or node.input[0] in weights:
            continue
        axis = 1 if node.op_type == "Gemm" and attrs.get("transB", 0) else 0
        found.setdefault(node.input[0], []).append((node.name, node.input[1], axis))
    return [
        Group(act, tuple(n for n, _, _ in members), tuple(w for _, w, _ in members), tuple(a for _, _, a in members))
        for act, members in found.items()
    ]


def activation_maxima(
    model: onnx.ModelProto, calls: Iterable[dict[str, np.ndarray]], names: list[str]
) -> dict[str, np.ndarray]:
    """Each named tensor's largest magnitude per channel (its last axis) over the calls."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names if n not in outputs)
    session = make_session(probe, "cpu")
    maxima: dict[str, np.ndarray] = {}
    for call in calls:
        for name, value in zip(names, session.run(names, call)):
            value = np.abs(np.asarray(value, np.float32))
            channel = value.reshape(-1, value.shape[-1]).max(axis=0) if value.ndim else value.reshape(1)
            maxima[name] = channel if name not in maxima else np.maximum(maxima[name], channel)
    return maxima


def smooth(model: onnx.ModelProto, groups: list[Group], maxima: dict[str, np.ndarray], alpha: float) -> onnx.ModelProto:
    """A copy of `model` with each group's activation divided per channel by s (a Mul before its
    readers) and their weights' matching rows multiplied by it: the same function in float."""
    smoothed = onnx.ModelProto()
    smoothed.CopyFrom(model)
    inits = {t.name: t for t in smoothed.graph.initializer}
    nodes = {n.name: n for n in smoothed.graph.node}
    muls: dict[str, onnx.NodeProto] = {}  # the first reader's name -> the Mul to run before it
    for group in groups:
        weights = [numpy_helper.to_array(inits[w]) for w in group.weights]
        channels = maxima[group.activation]
        if any(w.shape[a] != channels.size for w, a in zip(weights, group.axes)):
            continue  # the activation's last axis is not the weight's input axis (a broadcast, a reshape)
        wmax = np.max([np.abs(w).max(axis=1 - a) for w, a in zip(weights, group.axes)], axis=0)
        s = np.power(np.maximum(channels, _EPS), alpha) / np.power(np.maximum(wmax, _EPS), 1 - alpha)
        s = np.clip(s, _EPS, 1 / _EPS).astype(np.float32)
        scaled = f"{group.activation}_smoothed"
        # not "<tensor>_scale": onnxruntime's quantizer names the run-time scale of `scaled` so
        divisor = numpy_helper.from_array((1 / s).astype(np.float32), f"{group.activation}_smoothing_divisor")
        smoothed.graph.initializer.append(divisor)
        for name, w, axis, weight in zip(group.nodes, group.weights, group.axes, weights):
            shape = (-1, 1) if axis == 0 else (1, -1)
            inits[w].CopyFrom(numpy_helper.from_array((weight * s.reshape(shape)).astype(np.float32), w))
            nodes[name].input[0] = scaled
        mul = helper.make_node("Mul", [group.activation, divisor.name], [scaled], name=f"{scaled}_mul")
        muls[group.nodes[0]] = mul
    order = []
    for node in smoothed.graph.node:  # each Mul right before its group's first node in graph order
        if node.name in muls:
            order.append(muls[node.name])
        order.append(node)
    del smoothed.graph.node[:]
    smoothed.graph.node.extend(order)
    return smoothed
