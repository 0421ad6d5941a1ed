"""int8 static quantization with onnxruntime (QDQ, per-channel int8 weights, int8 activations),
calibrated on the user's samples: what a user tries first, and what factorization composes with."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import onnx
import onnx.version_converter

from tensorfold.calibration.data import Samples
from tensorfold.errors import TensorfoldError
from tensorfold.onnxrt import large
from tensorfold.graph.io import save_model
from tensorfold.onnxrt.batching import chunks


def quantize_int8(model: onnx.ModelProto, samples: Samples) -> onnx.ModelProto:
    """The model quantized to int8 (QDQ), activation ranges calibrated (MinMax) on `samples`."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    calls = list(chunks(model, samples.arrays))
    model = _at_least_opset(model, 13)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.calls = iter(calls)

        def get_next(self):
            return next(self.calls, None)

    with tempfile.TemporaryDirectory(prefix="tensorfold-int8-") as tmp:
        src, prepared, dst = Path(tmp, "model.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        save_model(model, src)            # a large model keeps its weights in model.onnx.data
        external = large.is_large(model)
        source = src
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            # onnxruntime's recommended pre-processing (shape inference, graph optimization); it
            # writes scratch files (sym_shape_infer_temp.onnx, <uuid>.data) into the working
            # directory, so it runs with the temporary folder as that directory
            cwd = os.getcwd()
            try:
                os.chdir(tmp)
                quant_pre_process(str(src), str(prepared), skip_symbolic_shape=False,
                                  save_as_external_data=external)
                source = prepared
            except Exception:  # noqa: BLE001 - quantize the model as it is
                source = src
            finally:
                os.chdir(cwd)
            quantize_static(str(source), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            weight_type=QuantType.QInt8, activation_type=QuantType.QInt8,
                            use_external_data_format=external)
        except Exception as exc:  # noqa: BLE001 - onnxruntime.quantization raises many kinds
            raise TensorfoldError(f"int8 quantization failed: {str(exc).splitlines()[0][:300]}") from None
        finally:
            root.setLevel(level)
        return onnx.load(str(dst))


def _at_least_opset(model: onnx.ModelProto, version: int) -> onnx.ModelProto:
    """Per-channel QDQ needs DequantizeLinear's `axis` (opset 13): older models are converted first
    (onnx's version converter rewrites the ops whose signature changed, e.g. Squeeze, Split)."""
    current = max((i.version for i in model.opset_import if i.domain in ("", "ai.onnx")), default=version)
    if current >= version:
        return model
    try:
        return large.transform(model, lambda m: onnx.version_converter.convert_version(m, version))
    except Exception as exc:  # noqa: BLE001 - the converter raises several kinds
        raise TensorfoldError(f"int8 needs opset >= {version} (per-channel QDQ); converting this opset-{current} "
                              f"model failed: {str(exc).splitlines()[0][:200]}") from None
