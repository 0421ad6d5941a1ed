"""Inputs to run a model on: random ones shaped by the model, or the user's arrays from an .npz
(or a folder of .npy/.npz files, numpy_files.py)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from tensorfold.errors import TensorfoldError
from tensorfold.log import warn
from tensorfold.onnxrt.numpy_files import read_array_folder, read_numpy_file

# A dynamic dim the user did not fix: batch (the first dim) gets 1, others this size.
DEFAULT_DYNAMIC_DIM = 64

_NP_TYPES: dict[int, type] = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.INT8: np.int8,
    onnx.TensorProto.UINT8: np.uint8,
    onnx.TensorProto.BOOL: np.bool_,
}


# dim names exporters make up, which say nothing to a user: paddle2onnx's DynamicDimension.0,
# onnxruntime's and onnx shape inference's unk__3, torch.export's s0
_MADE_UP_DIM = re.compile(r"^(?:[\w.]*DynamicDimension\.\d+|unk__\d+|s\d+)$")


def dims_text(dims: Any) -> str:
    """An input's dims as the user reads them: [batch, 3, 48, ?] (a dynamic dim by its name, or ?
    where it has none or only one an exporter made up)."""
    return (
        "["
        + ", ".join(
            str(d.dim_value)
            if d.HasField("dim_value") and d.dim_value > 0
            else (d.dim_param if d.dim_param and not _MADE_UP_DIM.match(d.dim_param) else "?")
            for d in dims
        )
        + "]"
    )


def input_problem(v: onnx.ValueInfoProto, arr: np.ndarray) -> str | None:
    """Why `arr` (samples along its first axis) cannot feed input `v`: its rank, a static dim after
    the first, or its kind of number (integers for a float input, ...); None when it fits. Said
    before onnxruntime runs, whose own message is cut and points elsewhere."""
    tensor = v.type.tensor_type
    if tensor.HasField("shape"):
        dims = tensor.shape.dim
        if arr.ndim != len(dims):
            return (
                f"has shape {list(arr.shape)}; the model takes rank-{len(dims)} arrays {dims_text(dims)} "
                "with the samples along the first axis"
            )
        for i, d in enumerate(dims[1:], start=1):
            if d.HasField("dim_value") and d.dim_value > 0 and arr.shape[i] != d.dim_value:
                return f"has shape {list(arr.shape)}; the model takes {dims_text(dims)}"
    want = _NP_TYPES.get(tensor.elem_type)
    if want is not None and (
        np.issubdtype(want, np.floating) != np.issubdtype(arr.dtype, np.floating)
        or (arr.dtype == np.bool_) != (want == np.bool_)
    ):
        return f"is {arr.dtype}; the model takes {np.dtype(want).name}"
    return None


def as_input(v: onnx.ValueInfoProto, arr: np.ndarray, where: str) -> np.ndarray:
    """`arr` cast to input `v`'s number type (float64 samples for a float32 input, ...), or one
    line, prefixed by `where`, saying why it cannot feed `v` (input_problem)."""
    problem = input_problem(v, arr)
    if problem:
        raise TensorfoldError(f"{where} {problem}")
    want = _NP_TYPES.get(v.type.tensor_type.elem_type)
    return arr.astype(want) if want is not None and arr.dtype != want else arr


def parse_shapes(specs: tuple[str, ...] | list[str]) -> dict[str, list[int]]:
    """`name:1,3,224,224` (repeatable) -> {name: [1, 3, 224, 224]}."""
    shapes = {}
    for spec in specs:
        name, sep, dims = spec.rpartition(":")
        try:
            if not sep or not name:
                raise ValueError
            shapes[name] = [int(d) for d in dims.split(",")]
            if any(d < 1 for d in shapes[name]):
                raise ValueError
        except ValueError:
            raise TensorfoldError(f"--shape '{spec}': expected NAME:D1,D2,... with positive integers") from None
    return shapes


def model_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in inits]


def resolve_shapes(model: onnx.ModelProto, shapes: dict[str, list[int]] | None = None) -> dict[str, list[int]]:
    """Concrete shape per input: the user's --shape, else static dims with dynamic ones defaulted."""
    shapes = dict(shapes or {})
    inputs = model_inputs(model)
    unknown = set(shapes) - {v.name for v in inputs}
    if unknown:
        raise TensorfoldError(
            f"--shape names unknown input(s) {sorted(unknown)}; the model's inputs are {[v.name for v in inputs]}"
        )
    out = {}
    for v in inputs:
        dims = v.type.tensor_type.shape.dim
        if v.name in shapes:
            if len(shapes[v.name]) != len(dims):
                raise TensorfoldError(f"--shape {v.name}: {len(shapes[v.name])} dims given, the input has {len(dims)}")
            fixed = [
                i
                for i, d in enumerate(dims)
                if i > 0 and d.HasField("dim_value") and d.dim_value > 0 and shapes[v.name][i] != d.dim_value
            ]
            if fixed:
                raise TensorfoldError(
                    f"--shape {v.name}:{','.join(map(str, shapes[v.name]))}: dim {fixed[0]} is fixed at "
                    f"{dims[fixed[0]].dim_value} in the model ({dims_text(dims)}); only its dynamic dims can be set"
                )
            out[v.name] = shapes[v.name]
            continue
        out[v.name] = [
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (1 if i == 0 else DEFAULT_DYNAMIC_DIM)
            for i, d in enumerate(dims)
        ]
    return out


def defaulted_dims(model: onnx.ModelProto, shapes: dict[str, list[int]] | None = None) -> dict[str, list[int]]:
    """Inputs whose non-batch dims are dynamic and not fixed by --shape: name -> the axes that
    resolve_shapes filled with DEFAULT_DYNAMIC_DIM (a timing there says little about real use)."""
    out = {}
    for v in model_inputs(model):
        if v.name in (shapes or {}):
            continue
        axes = [
            i
            for i, d in enumerate(v.type.tensor_type.shape.dim)
            if i > 0 and not (d.HasField("dim_value") and d.dim_value > 0)
        ]
        if axes:
            out[v.name] = axes
    return out


def dynamic_warning(
    model: onnx.ModelProto, shapes: dict[str, list[int]] | None = None, what: str = "timed", inputs_option: bool = True
) -> str | None:
    """The line to print when a timing (or a FLOP count: `what`) runs at defaulted dynamic dims,
    naming how to fix them (--inputs only where the command has it)."""
    defaulted = defaulted_dims(model, shapes)
    if not defaulted:
        return None
    resolved = resolve_shapes(model, shapes)
    name = next(iter(defaulted))
    example = ",".join("D" if i in defaulted[name] else str(d) for i, d in enumerate(resolved[name]))
    return (
        f"input(s) {', '.join(defaulted)} have dynamic dims, {what} at {DEFAULT_DYNAMIC_DIM} there "
        f"({name}: {resolved[name]}); the model's speed depends on them: give the size it runs at with "
        f"--shape {name}:{example}" + (" or real inputs with --inputs" if inputs_option else "")
    )


def zero_inputs(model: onnx.ModelProto, shapes: dict[str, list[int]] | None = None) -> dict[str, np.ndarray]:
    """Zeros of each input's shape and type: for what only needs shapes (a device prediction)."""
    resolved = resolve_shapes(model, shapes)
    return {
        v.name: np.zeros(resolved[v.name], _NP_TYPES.get(v.type.tensor_type.elem_type, np.float32))
        for v in model_inputs(model)
    }


def random_inputs(
    model: onnx.ModelProto, shapes: dict[str, list[int]] | None = None, seed: int = 0
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    resolved = resolve_shapes(model, shapes)
    feeds = {}
    for v in model_inputs(model):
        elem = v.type.tensor_type.elem_type
        dtype = _NP_TYPES.get(elem)
        if dtype is None or not np.issubdtype(dtype, np.floating):
            raise TensorfoldError(
                f"input '{v.name}' is of type {onnx.TensorProto.DataType.Name(elem)}: random values "
                f"would be meaningless; pass real inputs with --inputs file.npz"
            )
        feeds[v.name] = rng.standard_normal(resolved[v.name]).astype(dtype)
    return feeds


def read_npz(
    path: str | Path, option: str = "--inputs", single: str = "x=array", ranks: Mapping[str, int] | None = None
) -> dict[str, np.ndarray]:
    """Every array of an .npz, or of a folder of .npy/.npz files joined as one (numpy_files.py;
    `ranks`, the model's inputs' ranks, tell a file's one sample from a batch), read and checked:
    never unpickled, a truncated or foreign file is one line, floats beyond float32's range refused."""
    path = Path(path)
    if path.is_dir():
        return read_array_folder(path, option, ranks)
    return read_numpy_file(path, option, single)


def input_ranks(model: onnx.ModelProto) -> dict[str, int]:
    """The model inputs' ranks, where the graph gives a shape."""
    return {
        v.name: len(v.type.tensor_type.shape.dim) for v in model_inputs(model) if v.type.tensor_type.HasField("shape")
    }


def load_inputs(path: str | Path, model: onnx.ModelProto, option: str = "--inputs") -> dict[str, np.ndarray]:
    """One array per model input from an .npz (`x` accepted for a single-input model)."""
    path = Path(path)
    arrays = read_npz(path, option, ranks=input_ranks(model))
    names = [v.name for v in model_inputs(model)]
    if len(names) == 1 and names[0] not in arrays and "x" in arrays:
        arrays[names[0]] = arrays.pop("x")
    unused = sorted(set(arrays) - set(names))
    if unused and not set(names) - set(arrays):  # all inputs there: the rest is a label or a typo
        warn(f"{option} {path}: array(s) {', '.join(unused)} are not inputs of the model ({', '.join(names)}); ignored")
    missing = [n for n in names if n not in arrays]
    if missing:
        raise TensorfoldError(
            f"{option} {path}: no array for input(s) {missing} (it has {sorted(arrays)}; "
            f"name the arrays after the model's inputs{', or x' if len(names) == 1 else ''})"
        )
    for v in model_inputs(model):
        n, arr = v.name, arrays[v.name]
        if arr.size == 0:  # a scalar input (a sample rate) is one value, not zero samples
            raise TensorfoldError(f"{option} {path}: input '{n}' holds no samples (shape {list(arr.shape)})")
        arrays[n] = arr = as_input(v, arr, f"{option} {path}: input '{n}'")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise TensorfoldError(
                f"{option} {path}: input '{n}' holds NaN or Inf values; nothing can be verified on them"
            )
    # inputs that all stack samples on a dynamic first axis must hold as many each (was onnxruntime's
    # "BroadcastIterator ... axis == 1" text for 10 input_ids and 9 attention masks)
    stacked = {
        v.name: int(arrays[v.name].shape[0])
        for v in model_inputs(model)
        if arrays[v.name].ndim == len(v.type.tensor_type.shape.dim) >= 1
        and not v.type.tensor_type.shape.dim[0].HasField("dim_value")
    }
    if len(stacked) == len(names) > 1 and len(set(stacked.values())) > 1:
        counts = ", ".join(f"{n} {c}" for n, c in stacked.items())
        raise TensorfoldError(f"{option} {path}: the inputs hold different numbers of samples ({counts})")
    return {n: arrays[n] for n in names}
