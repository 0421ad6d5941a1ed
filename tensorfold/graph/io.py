"""Load and save ONNX models: clear errors for bad input, atomic writes, the input never touched."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from tensorfold.errors import TensorfoldError
from tensorfold.onnxrt import large
from tensorfold.outputs import atomic_path, new_file_mode, refuse_target, temp_beside


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Read an ONNX file, external data included, or raise a one-line TensorfoldError."""
    path = Path(path)
    if not path.exists():
        raise TensorfoldError(f"{path}: no such file")
    if not path.is_file():
        raise TensorfoldError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise TensorfoldError(f"{path}: empty file, not an ONNX model")
    try:
        model = onnx.load(str(path), load_external_data=True)
    except onnx.checker.ValidationError as exc:   # raised for a missing or misplaced external data file
        raise TensorfoldError(f"{path}: external data: {first_line(exc)}") from None
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise TensorfoldError(f"{path}: not a valid ONNX model (truncated or another format): {first_line(exc)}") from None
    except FileNotFoundError as exc:
        raise TensorfoldError(f"{path}: external data file missing: {first_line(exc)}") from None
    except OSError as exc:
        raise TensorfoldError(f"{path}: cannot read: {first_line(exc)}") from None
    if not model.graph.node and not model.graph.output:
        raise TensorfoldError(f"{path}: not a valid ONNX model (no graph found)")
    check_opset(model, path)
    return model


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
