"""Models above protobuf's 2 GiB cap: every whole-model operation without one serialization.

upb holds, copies and edits a ModelProto of any size in memory, but cannot size or serialize one
above 2 GiB (ByteSize and SerializeToString raise EncodeError; ByteSize of a 1.5 GB model takes
6-11 s here, for it encodes the message). Whatever needs a model as bytes (onnx.checker, shape
inference, an onnxruntime session, saving) goes through a *skeleton* when the model is large: the
same model with every weight of 1 KiB or more marked as external data and its bytes held apart.
The checker and shape inference need only the weights' names, types and dims; onnxruntime receives
the weights through SessionOptions.add_external_initializers; saving streams them to NAME.data.

"Large" is `threshold()` bytes of weights (1.8 GB; TENSORFOLD_EXTERNAL_DATA_BYTES lowers it, so
the test suite takes this path on small models). The checker and shape inference take the skeleton
from 1 MiB of weights on: it costs milliseconds. `tensorfold inspect` of the 0.25 GiB model that
`tools/bench_large_model.py --gib 0.2` writes took 14.7 s and 1.97 GB peak RSS with whole-model
shape inference (cProfile: 7.9 s in its three calls), 5.9 s and 1.18 GB on the skeleton (here,
`/usr/bin/time -v`). Weights must be initializers of the main graph, which is how exporters store
them; Constant nodes and sub-graphs are serialized as they are.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

# the location a held-apart weight points at: it names no file (the checker gets an empty one)
HELD_LOCATION = "tensorfold-weight-held-in-memory"
_THRESHOLD = 1_800_000_000
_SKELETON_ABOVE = 2**20
# weights smaller than this stay in the skeleton: shape inference reads small constants
# (Reshape shapes, Slice bounds) for data propagation, and onnx saves them inline the same way
_HELD_TENSOR_BYTES = 1024
# tensors above 1 MiB start at a multiple of 64 KiB in NAME.data, as onnx aligns them, so that
# onnxruntime can memory-map them
_ALIGN_ABOVE, _ALIGNMENT = 2**20, 2**16


def threshold() -> int:
    """Weight bytes above which a model is handled (and saved) with its weights apart."""
    return int(os.environ.get("TENSORFOLD_EXTERNAL_DATA_BYTES", _THRESHOLD))


def tensor_bytes(tensor: TensorProto) -> int:
    """The bytes of a tensor's data, read off its dims and type (never off the data itself)."""
    if tensor.data_type == TensorProto.STRING:
        return sum(len(s) for s in tensor.string_data)
    try:
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except (KeyError, TypeError, ValueError):  # an undefined or unknown type: the checker reports it
        return len(tensor.raw_data)
    return int(np.prod(tensor.dims, dtype=np.int64)) * itemsize


def weight_bytes(model: onnx.ModelProto) -> int:
    return sum(tensor_bytes(t) for t in model.graph.initializer)


def is_large(model: onnx.ModelProto) -> bool:
    return weight_bytes(model) > threshold()


def _skeleton_pays(model: onnx.ModelProto) -> bool:
    return weight_bytes(model) > min(_SKELETON_ABOVE, threshold())


def serialized_size(model: onnx.ModelProto) -> int:
    """The bytes of the model as saved in one file (graph and weights), from its skeleton: exact
    below 1 MiB of weights, within a few bytes per weight above (ByteSize encodes the model)."""
    if not _skeleton_pays(model):
        return model.ByteSize()
    skel, held = skeleton(model)
    return skel.ByteSize() + sum(tensor_bytes(t) for t in held.values())


# strings have no fixed size, and 4-bit types pack two values in a byte: they stay in the skeleton
_KEPT_TYPES = {TensorProto.STRING} | {
    getattr(TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2") if hasattr(TensorProto, n)
}


def _holds_apart(tensor: TensorProto) -> bool:
    return (
        tensor.data_location != TensorProto.EXTERNAL
        and tensor.data_type not in _KEPT_TYPES
        and tensor.data_type in onnx.helper.get_all_tensor_dtypes()
        and tensor_bytes(tensor) >= _HELD_TENSOR_BYTES
    )


def _is_held(tensor: TensorProto) -> bool:
    return tensor.data_location == TensorProto.EXTERNAL and any(
        e.key == "location" and e.value == HELD_LOCATION for e in tensor.external_data
    )


def _copy_fields(src, dst, skip: str) -> None:
    """Copy every set field of one message into another but `skip` (without copying that one)."""
    for field, value in src.ListFields():
        if field.name == skip:
            continue
        if hasattr(value, "extend"):  # a repeated field
            getattr(dst, field.name).extend(value)
        elif field.message_type is not None:
            getattr(dst, field.name).CopyFrom(value)
        else:
            setattr(dst, field.name, value)


def skeleton(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, TensorProto]]:
    """The model with its weights of 1 KiB or more replaced by external-data stand-ins (same
    name, type, dims), and those weights by name (the model's own messages, not copies)."""
    skel = onnx.ModelProto()
    _copy_fields(model, skel, skip="graph")
    _copy_fields(model.graph, skel.graph, skip="initializer")
    held = {}
    for tensor in model.graph.initializer:
        if not _holds_apart(tensor):
            skel.graph.initializer.add().CopyFrom(tensor)
            continue
        stand_in = skel.graph.initializer.add()
        stand_in.name, stand_in.data_type = tensor.name, tensor.data_type
        stand_in.dims.extend(tensor.dims)
        stand_in.data_location = TensorProto.EXTERNAL
        for key, value in (("location", HELD_LOCATION), ("offset", "0"), ("length", str(tensor_bytes(tensor)))):
            entry = stand_in.external_data.add()
            entry.key, entry.value = key, value
        held[tensor.name] = tensor
    return skel, held


def with_weights(skel: onnx.ModelProto, held: dict[str, TensorProto]) -> onnx.ModelProto:
    """A skeleton (or a model derived from one) with its stand-ins filled from `held`."""
    model = onnx.ModelProto()
    _copy_fields(skel, model, skip="graph")
    _copy_fields(skel.graph, model.graph, skip="initializer")
    for tensor in skel.graph.initializer:
        source = held[tensor.name] if _is_held(tensor) else tensor
        model.graph.initializer.add().CopyFrom(source)
    return model


def transform(model: onnx.ModelProto, fn: Callable[[onnx.ModelProto], onnx.ModelProto]) -> onnx.ModelProto:
    """fn(model) for a function that serializes the model (shape inference, the version
    converter): the model is handed over as its skeleton and gets its weights back after."""
    if not _skeleton_pays(model):
        return fn(model)
    skel, held = skeleton(model)
    return with_weights(fn(skel), held)


def infer_shapes_in_place(model: onnx.ModelProto, **options) -> None:
    """onnx shape inference into `model` itself (value_info, inputs, outputs and nodes: sub-graphs
    get value_info too), run on the skeleton: no copy of the weights, none serialized."""
    if not _skeleton_pays(model):
        inferred = onnx.shape_inference.infer_shapes(model, **options)
    else:
        inferred = onnx.shape_inference.infer_shapes(skeleton(model)[0], **options)
    for name in ("value_info", "input", "output", "node"):
        target = getattr(model.graph, name)
        del target[:]
        target.extend(getattr(inferred.graph, name))


def check_model(model: onnx.ModelProto, full_check: bool = False) -> None:
    """onnx.checker on the model, checked as a skeleton file (the checker's way for models above
    2 GiB: it needs the stand-in file to exist, not to hold the weights)."""
    if not _skeleton_pays(model):
        onnx.checker.check_model(model, full_check=full_check)
        return
    skel, _ = skeleton(model)
    with tempfile.TemporaryDirectory(prefix="tensorfold-check-") as tmp:
        Path(tmp, HELD_LOCATION).touch()
        path = Path(tmp, "model.onnx")
        path.write_bytes(skel.SerializeToString())
        onnx.checker.check_model(str(path), full_check=full_check)


def session_parts(model: onnx.ModelProto) -> tuple[bytes, dict[str, np.ndarray]]:
    """What an onnxruntime session is built from: the serialized model, and for a large one the
    weights its stand-ins stand for (for SessionOptions.add_external_initializers)."""
    if not is_large(model):
        return model.SerializeToString(), {}
    skel, held = skeleton(model)
    return skel.SerializeToString(), {name: numpy_helper.to_array(t) for name, t in held.items()}


def ort_values(arrays: dict[str, np.ndarray]):
    """onnxruntime values of held weights; types numpy lacks (bfloat16, float8) go by their bits."""
    import onnxruntime as ort

    values = []
    for array in arrays.values():
        array = np.ascontiguousarray(array)
        if array.dtype.kind in "biuf" and array.dtype.name in np.sctypeDict:
            values.append(ort.OrtValue.ortvalue_from_numpy(array))
        else:
            bits = array.view(f"u{array.dtype.itemsize}")
            onnx_type = onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
            values.append(ort.OrtValue.ortvalue_from_numpy_with_onnx_type(bits, onnx_type))
    return list(arrays), values


def write_external(model: onnx.ModelProto, model_path: Path, data_path: Path, location: str) -> None:
    """Save the model to `model_path` with its weights of 1 KiB or more streamed one by one into
    `data_path`, which the saved model names as `location`.

    Written here, not by onnx.save_model(save_as_external_data=True): that one moves the weights
    out of the proto it is given, so it needs a whole copy of a model that may be most of memory."""
    skel, held = skeleton(model)
    with open(data_path, "wb") as out:
        for tensor in skel.graph.initializer:
            if not _is_held(tensor):
                continue
            source = held[tensor.name]
            data = source.raw_data if source.HasField("raw_data") else numpy_helper.to_array(source).tobytes()
            offset = out.tell()
            if len(data) > _ALIGN_ABOVE and offset % _ALIGNMENT:
                out.write(b"\0" * (_ALIGNMENT - offset % _ALIGNMENT))
                offset = out.tell()
            out.write(data)
            del data
            values = {"location": location, "offset": str(offset), "length": str(out.tell() - offset)}
            for entry in tensor.external_data:
                entry.value = values[entry.key]
    model_path.write_bytes(skel.SerializeToString())
