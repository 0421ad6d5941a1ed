"""Load and save ONNX models: clear errors for bad input, atomic writes, the input never touched."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from tensorfold.errors import TensorfoldError
from tensorfold.outputs import atomic_path, new_file_mode, refuse_target

# Models above this size must keep their weights in an external data file (protobuf's 2 GiB cap).
_EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Read an ONNX file, external data included, or raise a one-line TensorfoldError."""
    path = Path(path)
    if not path.exists():
        raise TensorfoldError(f"{path}: no such file")
    if not path.is_file():
        raise TensorfoldError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise TensorfoldError(f"{path}: empty file, not an ONNX model")
    _refuse_above_protobuf_cap(path)
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


# protobuf (upb) cannot even size a message above 2 GiB: ByteSize, CopyFrom and serialization fail
_PROTOBUF_CAP = 2**31 - 1


def _refuse_above_protobuf_cap(path: Path) -> None:
    """A model whose weights total more than protobuf's 2 GiB cannot be held as one ModelProto:
    say so in one line before loading gigabytes, instead of failing deep inside a pass."""
    total = path.stat().st_size
    if total < 64 * 2**20:      # only a small header can point at gigabytes of external data
        try:
            header = onnx.load(str(path), load_external_data=False)
        except Exception:  # noqa: BLE001 - load_model reports an unreadable file with its own message
            return
        files = {entry.value for t in _external_tensors(header) for entry in t.external_data
                 if entry.key == "location"}
        total += sum((path.parent / f).stat().st_size for f in files if (path.parent / f).is_file())
    if total > _PROTOBUF_CAP:
        raise TensorfoldError(f"{path}: {total / 2**30:.1f} GiB of graph and weights; models above protobuf's "
                              "2 GiB cap are not supported yet (see docs/security.md)")


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
        if model.ByteSize() > external_data_threshold():
            data_path = folder / f"{path.name}.data"
            refuse_target(data_path)
            # onnx refuses a data file name that exists (checked against the working directory,
            # not the model's folder): a unique name that does not exist yet, removed on failure
            tmp_data = folder / f".{data_path.name}.{uuid.uuid4().hex}.tmp"
            try:
                # onnx moves the weights out of the proto it saves: save a copy, never the caller's model
                copy = onnx.ModelProto()
                copy.CopyFrom(model)
                onnx.save_model(copy, tmp, save_as_external_data=True, all_tensors_to_one_file=True,
                                location=tmp_data.name, size_threshold=1024)
                del copy
                saved = onnx.load(tmp, load_external_data=False)
                for tensor in _external_tensors(saved):
                    for entry in tensor.external_data:
                        if entry.key == "location":
                            entry.value = data_path.name
                onnx.save_model(saved, tmp)
                os.chmod(tmp_data, new_file_mode())
                os.replace(tmp_data, data_path)
            finally:
                tmp_data.unlink(missing_ok=True)
        else:
            onnx.save_model(model, tmp)
    return path


def external_data_threshold() -> int:
    """Models above this many bytes keep their weights in an external data file (protobuf's 2 GiB
    cap); TENSORFOLD_EXTERNAL_DATA_BYTES lowers it (tests take the large-model path with it)."""
    return int(os.environ.get("TENSORFOLD_EXTERNAL_DATA_BYTES", _EXTERNAL_DATA_THRESHOLD))


def _external_tensors(model: onnx.ModelProto):
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            yield tensor


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (of the driver's error it wraps, if any), for a one-line error."""
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
