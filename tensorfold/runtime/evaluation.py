"""Top-1 accuracy of an ONNX model (a file or a ModelProto) on labelled arrays, in onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from tensorfold.onnxrt.sessions import make_session


def evaluate_onnx(
    model: str | Path | onnx.ModelProto, x: np.ndarray, y: np.ndarray, batch: int = 500, threads: int = 0
) -> float:
    session = make_session(model if isinstance(model, onnx.ModelProto) else str(model), threads=threads)
    name = session.get_inputs()[0].name
    pred = np.concatenate([session.run(None, {name: x[i : i + batch]})[0].argmax(1) for i in range(0, len(x), batch)])
    return float(np.mean(pred == y))
