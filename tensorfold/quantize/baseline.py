"""What a user would run instead of tensorfold's int8: onnxruntime's quantize_static as its CPU
guidance says (QDQ, uint8 activations, int8 per-channel weights, MinMax on the same samples), after
converting the model to opset 13 and onnxruntime's pre-processing; and its quantize_dynamic with
int8 weights (no calibration). Every node quantized, nothing checked. The benchmarks compare against
them in the same run (tools/bench_deploy.py, bench/runner.py)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx

from tensorfold.errors import TensorfoldError
from tensorfold.graph.io import load_model, save_model
from tensorfold.onnxrt import large
from tensorfold.quantize.formats import Int8Format
from tensorfold.quantize.static import StaticQuantizer

BASELINE = Int8Format(
    "onnxruntime quantize_static, QDQ U8S8 per-channel, MinMax",
    "uint8",
    why="onnxruntime's CPU guidance, every node quantized",
)


def ort_quantize_static(model: onnx.ModelProto, fit: dict[str, np.ndarray]) -> onnx.ModelProto:
    """As the guidance says, and where onnxruntime's quantizer fails on the model its own
    pre-processing wrote (magika), on the model as it is: what a user would try next."""
    try:
        with StaticQuantizer(model, fit, BASELINE) as quantizer:
            quantized: onnx.ModelProto = quantizer.quantize("minmax")
            return quantized
    except TensorfoldError:
        with StaticQuantizer(model, fit, BASELINE, preprocess=False) as quantizer:
            return quantizer.quantize("minmax")


def ort_quantize_dynamic(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxruntime's quantize_dynamic at its defaults with int8 weights, as a user would call it."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from tensorfold.quantize.static import quiet_onnxruntime_quantization

    with tempfile.TemporaryDirectory(prefix="tensorfold-ort-dynamic-") as tmp:
        src, dst = Path(tmp, "model.onnx"), Path(tmp, "dynamic.onnx")
        save_model(model, src)  # a model past protobuf's 2 GiB cap keeps its weights beside it
        with quiet_onnxruntime_quantization():
            quantize_dynamic(
                str(src), str(dst), weight_type=QuantType.QInt8, use_external_data_format=large.is_large(model)
            )
        return load_model(dst)
