"""Load and save ONNX models: clear errors for bad input, atomic writes, the input never touched."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from tensorfold.errors import TensorfoldError
from tensorfold.onnxrt import large
from tensorfold.outputs import atomic_path, new_file_mode, refuse_target, temp_beside


def check_model_path(path: str | os.PathLike) -> Path:
    """The model's path, or the one-line error for a missing file or a folder: said before anything
    else is checked (a folder given as the model is not "an input folder" the output lies in)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"a model path is a str or an os.PathLike, not {type(path).__name__} ({path!r:.60})")
    path = Path(path)
    if not path.exists():
        raise TensorfoldError(f"{path}: no such file")
    if not path.is_file():
        raise TensorfoldError(f"{path}: not a file")
    return path


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Read an ONNX file, external data included, or raise a one-line TensorfoldError."""
    path = check_model_path(path)
    if path.stat().st_size == 0:
        raise TensorfoldError(f"{path}: empty file, not an ONNX model")
    try:
        model = onnx.load(str(path), load_external_data=True)
    except onnx.checker.ValidationError as exc:  # raised for a missing or misplaced external data file
        raise TensorfoldError(f"{path}: external data: {first_line(exc)}") from None
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise TensorfoldError(
            f"{path}: not a valid ONNX model (truncated or another format): {first_line(exc)}"
        ) from None
    except FileNotFoundError as exc:
        raise TensorfoldError(f"{path}: external data file missing: {first_line(exc)}") from None
    except OSError as exc:
        raise TensorfoldError(f"{path}: cannot read: {first_line(exc)}") from None
    if not model.graph.node and not model.graph.output:
        raise TensorfoldError(f"{path}: not a valid ONNX model (no graph found)")
    if model.ir_version > onnx.IR_VERSION:
        raise TensorfoldError(
            f"{path}: IR version {model.ir_version} is newer than this onnx supports "
            f"({onnx.IR_VERSION}); a corrupt file, or upgrade onnx/onnxruntime"
        )
    check_opset(model, path)
    check_initializers(model, path)
    if not large.is_large(model):
        # a damaged file often still parses (protobuf is lenient): names, attributes, node order
        try:
            onnx.checker.check_model(model)
        except onnx.checker.ValidationError as exc:
            if "Field 'shape' of 'type' is required" in str(exc):
                return model  # a value without a shape: real exporters write them, onnxruntime runs them
            raise TensorfoldError(
                f"{path}: not a valid ONNX model (onnx.checker: {first_line(exc)}); a corrupt or hand-edited file?"
            ) from None
    return model


def check_initializers(model: onnx.ModelProto, path: str | os.PathLike = "model") -> None:
    """Every weight holds as many values as its dims say: a mismatch (a corrupt or hand-edited file)
    is refused here, by name, instead of failing later inside numpy or onnxruntime."""
    import math

    from onnx import helper

    four_bit = {getattr(onnx.TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1") if hasattr(onnx.TensorProto, n)}
    graphs = [model.graph] + [a.g for n in model.graph.node for a in n.attribute if a.HasField("g")]
    for graph in graphs:
        for t in graph.initializer:
            if t.data_location == onnx.TensorProto.EXTERNAL or t.data_type in (
                onnx.TensorProto.STRING,
                onnx.TensorProto.UNDEFINED,
            ):
                continue
            if any(d < 0 for d in t.dims):
                raise TensorfoldError(f"{path}: weight '{t.name}' has a negative dimension {list(t.dims)}")
            count = math.prod(t.dims)
            try:
                if t.raw_data:
                    bits = 4 if t.data_type in four_bit else 8 * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
                    have, want, unit = len(t.raw_data), -(-count * bits // 8), "bytes"
                else:
                    # one value per entry of the typed field (two for complex), 4-bit types two to one
                    have, unit = len(getattr(t, helper.tensor_dtype_to_field(t.data_type))), "values"
                    want = (
                        2 * count
                        if t.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128)
                        else -(-count // 2)
                        if t.data_type in four_bit
                        else count
                    )
            except (KeyError, TypeError, ValueError):
                continue  # a type this onnx does not know: onnxruntime says what it thinks of it
            if have != want:
                raise TensorfoldError(
                    f"{path}: weight '{t.name}' holds {have} {unit} where its dims {list(t.dims)} "
                    f"need {want}; a corrupt file"
                )


def check_opset(model: onnx.ModelProto, path: str | os.PathLike = "model") -> None:
    """Reject opsets this onnx install does not know (onnxruntime and the checker could not run them)."""
    supported = onnx.defs.onnx_opset_version()
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx") and imp.version > supported:
            raise TensorfoldError(
                f"{path}: opset {imp.version} is newer than this onnx supports ({supported}); upgrade onnx/onnxruntime"
            )
        if imp.domain in ("", "ai.onnx") and imp.version < 1:
            raise TensorfoldError(f"{path}: invalid opset version {imp.version}")
    if not any(imp.domain in ("", "ai.onnx") for imp in model.opset_import):
        raise TensorfoldError(f"{path}: the model imports no default-domain opset")


def save_model(model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Write the model atomically (outputs.atomic_path): never onto an input, never half-written.

    A large model keeps its weights in `<name>.data` beside it, written the same way under a
    unique temp name."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise TensorfoldError(f"{path}: output folder {folder} does not exist")
    with atomic_path(path) as tmp:
        if large.is_large(model):
            data_path = folder / f"{path.name}.data"
            refuse_target(data_path)
            with temp_beside(data_path) as tmp_data:
                large.write_external(model, tmp, tmp_data, data_path.name)
                os.chmod(tmp_data, new_file_mode())
                os.replace(tmp_data, data_path)
        else:
            onnx.save_model(model, tmp)
    return path


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (of the driver's error it wraps, if any), for a one-line error."""
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
