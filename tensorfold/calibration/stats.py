"""Layer input statistics in one streaming pass over the calibration samples.

The model is run once with every factorizable layer's input added as an extra output; per call
each layer's input is cut into the vectors the layer multiplies (a conv's im2col patches, a
matrix layer's feature rows) and only their Gram sum x x^T is kept. Memory is one call's
activations plus one (D x D) Gram per layer, whatever the number of samples.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from tensorfold.calibration.data import Samples
from tensorfold.decompose.data_aware import InputGram
from tensorfold.onnxrt import large
from tensorfold.onnxrt.batching import chunks
from tensorfold.onnxrt.sessions import make_session
from tensorfold.passes.layers import ConvAttrs, Layer
from tensorfold.progress import bar as progress_bar

# patch rows processed per Gram update: bounds the im2col copy (rows x D floats)
_ROWS_PER_STEP = 16384


def collect_input_grams(
    model: onnx.ModelProto, layers: list[Layer], samples: Samples, provider: str = "cpu", progress: bool = False
) -> dict[str, InputGram]:
    """{layer name: InputGram} for every layer in `layers`, from one pass over `samples`."""
    if not layers:
        return {}
    graph_inputs = {v.name for v in model.graph.input}
    wanted = list(dict.fromkeys(layer.node.input[0] for layer in layers if layer.node.input[0] not in graph_inputs))
    probe = _with_outputs(model, wanted)
    session = make_session(probe, provider)
    # layers that multiply the same vectors (a transformer's Q, K and V read one input; two convs of
    # one shape on one tensor) share one Gram, computed once
    readers: dict[tuple[object, ...], list[Layer]] = {}
    for layer in layers:
        readers.setdefault(_vector_key(layer), []).append(layer)
    shared: dict[tuple[object, ...], InputGram] = {}
    batches = list(chunks(model, samples.arrays, max_batch=4))
    for feeds in progress_bar(batches, desc="calibration statistics", unit="batch", show=progress, leave=False):
        values = dict(zip(wanted, session.run(wanted, feeds) if wanted else []))
        values.update(feeds)
        for key, group in readers.items():
            layer = group[0]
            rows_per_group = _vectors(layer, np.asarray(values[layer.node.input[0]]))
            acc = shared.get(key)
            for g, rows in enumerate(rows_per_group):
                for start in range(0, len(rows), _ROWS_PER_STEP):
                    block = np.ascontiguousarray(rows[start : start + _ROWS_PER_STEP], dtype=np.float32)
                    if acc is None:
                        acc = shared[key] = InputGram(np.zeros((len(rows_per_group), block.shape[1], block.shape[1])))
                    acc.grams[g] += (block.T @ block).astype(np.float64)
            if acc is not None:
                acc.count += len(rows_per_group[0])
    # one InputGram per layer over the shared sums: its fits depend on the layer's own weight
    return {
        layer.name: InputGram(shared[key].grams, shared[key].count)
        for key, group in readers.items()
        if key in shared
        for layer in group
    }


def _vector_key(layer: Layer) -> tuple[object, ...]:
    """What decides the vectors a layer multiplies: its input and how it cuts it."""
    if layer.kind == "conv":
        return (layer.node.input[0], "conv", tuple(layer.weight.shape[1:]), layer.groups, layer.conv)
    return (layer.node.input[0], "rows", layer.kind == "gemm" and layer.gemm.trans_a)


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of `model` that also outputs `names` (types from shape inference where known)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(large.skeleton(probe)[0])  # types only: no weights
        known = {v.name: v for v in inferred.graph.value_info}
    except Exception:  # noqa: BLE001 - types are optional for onnxruntime's extra outputs
        known = {}
    present = {o.name for o in probe.graph.output}
    for name in names:
        if name in present:
            continue
        info = onnx.ValueInfoProto()
        if name in known:
            info.CopyFrom(known[name])
            info.type.tensor_type.ClearField("shape")
        else:
            info = onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
        probe.graph.output.append(info)
    return probe


def _vectors(layer: Layer, x: np.ndarray) -> list[np.ndarray]:
    """The vectors the layer multiplies, per group: rows of (P, D)."""
    if layer.kind == "conv":
        return conv_patches(x, layer.weight.shape, layer.groups, layer.conv)
    if layer.kind == "gemm" and layer.gemm.trans_a:
        x = x.T
    return [x.reshape(-1, x.shape[-1])]


def conv_patches(x: np.ndarray, weight_shape: Sequence[int], groups: int, attrs: ConvAttrs) -> list[np.ndarray]:
    """im2col of a conv's input: per group an array (N * positions, C/g * prod(k)), each row ordered
    (channel, *kernel offsets) like weight[o].ravel()."""
    kernel = tuple(int(k) for k in weight_shape[2:])
    nd = len(kernel)
    strides, dilations = attrs.strides, attrs.dilations
    pads = _pads(x.shape[2:], kernel, strides, dilations, attrs.pads, attrs.auto_pad)
    xp = np.pad(x, [(0, 0), (0, 0)] + [(pads[a], pads[a + nd]) for a in range(nd)])
    extent = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    windows = np.lib.stride_tricks.sliding_window_view(xp, extent, axis=tuple(range(2, 2 + nd)))
    select = (
        (slice(None), slice(None))
        + tuple(slice(None, None, s) for s in strides)
        + tuple(slice(None, None, d) for d in dilations)
    )
    windows = windows[select]  # (N, C, *out, *k)
    perm = (0,) + tuple(range(2, 2 + nd)) + (1,) + tuple(range(2 + nd, 2 + 2 * nd))
    per = x.shape[1] // groups
    out = []
    for g in range(groups):
        part = windows[:, g * per : (g + 1) * per].transpose(perm)
        out.append(part.reshape(-1, per * int(np.prod(kernel))))
    return out


def _pads(
    spatial: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    pads: Sequence[int],
    auto_pad: str,
) -> list[int]:
    nd = len(kernel)
    if auto_pad in ("NOTSET", ""):
        return list(pads)
    if auto_pad == "VALID":
        return [0] * (2 * nd)
    begin, end = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilations):
        out = -(-size // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        small, big = total // 2, total - total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else big)
        end.append(big if auto_pad == "SAME_UPPER" else small)
    return begin + end
