"""Concrete tensor shapes for one set of input shapes (FLOPs need them)."""

from __future__ import annotations

import onnx

from tensorfold.graph.model import GraphIndex
from tensorfold.graph.normalize import infer_shapes
from tensorfold.onnxrt import large


def concrete_shapes(
    model: onnx.ModelProto, input_shapes: dict[str, list[int]], needed: set[str] | None = None
) -> dict[str, list[int]]:
    """Shapes of every value onnx shape inference can resolve with the inputs fixed; values in
    `needed` that it cannot resolve (data-dependent Resize, custom ops) are read off one
    onnxruntime run on zeros."""
    fixed, held = large.skeleton(model)  # shapes need no weights: none copied
    del fixed.graph.value_info[:]
    for v in fixed.graph.input:
        if v.name in input_shapes:
            dims = v.type.tensor_type.shape.dim
            for d, size in zip(dims, input_shapes[v.name]):
                d.Clear()
                d.dim_value = size
    infer_shapes(fixed)
    shapes = {}
    index = GraphIndex(fixed)
    for name in index.value_info:
        dims = index.shape(name)
        if dims is not None and all(isinstance(d, int) and d > 0 for d in dims):
            shapes[name] = dims
    for name, t in index.initializers.items():
        shapes[name] = list(t.dims)
    missing = [n for n in (needed or set()) if n not in shapes]
    if missing:
        shapes.update(_shapes_from_run(large.with_weights(fixed, held), input_shapes, missing))
    return shapes


def _shapes_from_run(model: onnx.ModelProto, input_shapes: dict[str, list[int]], names: list[str]):
    import numpy as np
    import onnxruntime as ort

    from tensorfold.onnxrt.inputs import _NP_TYPES, model_inputs
    from tensorfold.onnxrt.sessions import make_session

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    for name in names:
        if name not in existing:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    try:
        session = make_session(probe, optimization="none")
        feeds = {
            v.name: np.zeros(input_shapes[v.name], _NP_TYPES.get(v.type.tensor_type.elem_type, np.float32))
            for v in model_inputs(probe)
        }
        quiet = ort.RunOptions()
        quiet.log_severity_level = 4  # a probe that fails leaves shapes unknown; no log lines for it
        results = session.run(names, feeds, quiet)
    except Exception:  # noqa: BLE001 - shapes stay unknown; FLOPs for those nodes are reported as unknown
        return {}
    return {n: list(r.shape) for n, r in zip(names, results)}
