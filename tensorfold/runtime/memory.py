"""Peak memory of one inference call, predicted from the graph: the weights, the largest set of
activations alive at once along the execution order, and the scratch buffer of the node running
then (a kxk convolution's im2col matrix). What a device's memory must hold, whatever its speed.

A prediction from shapes alone: an execution provider's allocator pads, pools and may plan other
reuse, so a measured peak differs (docs/results/memory.md compares with onnxruntime's on the host).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from tensorfold.graph.shapes import concrete_shapes


@dataclass(frozen=True)
class MemoryEstimate:
    weights_bytes: int
    activations_bytes: int  # the largest live set of inputs and intermediate values
    workspace_bytes: int  # the scratch buffer of the node at that point
    peak_node: str  # where the peak falls

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.activations_bytes + self.workspace_bytes

    def as_dict(self) -> dict:
        mb = 1 << 20
        return {
            "total_mb": round(self.total_bytes / mb, 2),
            "weights_mb": round(self.weights_bytes / mb, 2),
            "activations_mb": round(self.activations_bytes / mb, 2),
            "workspace_mb": round(self.workspace_bytes / mb, 2),
            "peak_node": self.peak_node,
        }


def _itemsize(elem_type: int) -> int:
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).itemsize
    except (KeyError, TypeError):
        return 4


def _workspace(node: onnx.NodeProto, shapes: dict[str, list[int]], itemsize: int) -> int:
    """im2col of a convolution whose kernel is not 1x1 (or that strides): (C_in / group) * prod(k)
    rows by the output's spatial positions, one group at a time."""
    if node.op_type != "Conv" or len(node.input) < 2:
        return 0
    w, out = shapes.get(node.input[1]), shapes.get(node.output[0])
    if not w or not out or len(w) < 3:
        return 0
    strides = next((list(a.ints) for a in node.attribute if a.name == "strides"), [1] * (len(w) - 2))
    if all(k == 1 for k in w[2:]) and all(s == 1 for s in strides):
        return 0  # a pointwise conv is a plain matmul on the input
    return int(w[1] * np.prod(w[2:]) * np.prod(out[2:])) * itemsize


def predict_memory(model: onnx.ModelProto, input_shapes: dict[str, list[int]]) -> MemoryEstimate:
    """The peak of weights + live activations + the current node's workspace over one call."""
    shapes = concrete_shapes(model, input_shapes)
    weights = {t.name for t in model.graph.initializer}
    types = {
        v.name: v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output, *model.graph.value_info]
    }
    weights_bytes = sum(int(np.prod(t.dims)) * _itemsize(t.data_type) for t in model.graph.initializer)

    def size(name: str) -> int:
        dims = shapes.get(name)
        return int(np.prod(dims)) * _itemsize(types.get(name, onnx.TensorProto.FLOAT)) if dims is not None else 0

    last_use: dict[str, int] = {}
    for i, node in enumerate(model.graph.node):
        for name in node.input:
            if name and name not in weights:
                last_use[name] = i
    outputs = {o.name for o in model.graph.output}
    live = {v.name: size(v.name) for v in model.graph.input if v.name not in weights}
    peak, peak_live, peak_work, peak_node = 0, 0, 0, ""
    for i, node in enumerate(model.graph.node):
        for name in node.output:
            if name:
                live[name] = size(name)
        current = sum(live.values())
        work = _workspace(node, shapes, 4)
        if current + work > peak:
            peak, peak_live, peak_work, peak_node = current + work, current, work, node.name or node.output[0]
        for name in [*node.input, *node.output]:
            if name in live and last_use.get(name, -1) <= i and name not in outputs:
                del live[name]
    return MemoryEstimate(weights_bytes, peak_live, peak_work, peak_node)


_MEASURE = """
import sys, numpy as np, onnxruntime as ort

def high_water():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) * 1024

feeds = dict(np.load(sys.argv[2]))
options = ort.SessionOptions()
options.intra_op_num_threads = 1
base = high_water()
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
session.run(None, feeds)
print(high_water() - base)
"""


def measured_peak_bytes(model_path, feeds: dict[str, np.ndarray]) -> int | None:
    """What loading the model into onnxruntime (CPU) and one call on `feeds` add to a fresh
    process's peak resident memory (VmHWM after the imports, before the session). A fresh process
    because a child started from a large one inherits its ru_maxrss; VmHWM belongs to the new
    address space. Linux only (None elsewhere)."""
    import subprocess
    import sys
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".npz") as fh:
        np.savez(fh.name, **feeds)
        done = subprocess.run(
            [sys.executable, "-c", _MEASURE, str(model_path), fh.name], capture_output=True, text=True
        )
    try:
        return int(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None
