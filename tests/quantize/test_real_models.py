"""int8 on a real third-party model with realistic inputs: the PP-OCR direction classifier (weights
in Constant nodes, opset 11, converted to 13 first) on printed text lines, half of them turned."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tensorfold.api import optimize


@pytest.mark.network
def test_ppocr_classifier_int8_within_the_bound(tmp_path):
    from tensorfold.bench.real_models import fetch_rapidocr_model
    from tensorfold.bench.text_images import line_images, to_nchw

    images, _ = line_images(24, (48, 192), seed=1, flip_share=0.5)
    np.savez(tmp_path / "lines.npz", x=to_nchw(images, 0.5, 0.5))
    report = optimize(
        fetch_rapidocr_model("cls"),
        tmp_path / "cls.int8.onnx",
        method="none",
        int8=True,
        calibration=str(tmp_path / "lines.npz"),
        max_output_error=0.05,
        objective="size",
        threads=1,
        progress=False,
    )
    int8 = next(c for c in report.deploy["candidates"] if c["name"] == "int8")
    assert int8["within"] and int8["max_error"] <= 0.05
    assert int8["outputs"][0]["argmax_agreement"] is not None  # a Softmax makes it a class output
    assert int8["int8"]["fusion"]["kernels"].get("QLinearConv", 0) > 0
    # int8 weights count as parameters (what is missing is the 35 BatchNorms folded into their convs)
    assert int8["params"] >= 0.95 * report.before.params
    if report.deploy["chosen"] == "int8":
        written = onnx.load(str(tmp_path / "cls.int8.onnx"))
        zero_points = [n.input[2] for n in written.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
        inits = {t.name: t for t in written.graph.initializer}
        assert {inits[z].data_type for z in zero_points if z in inits} == {onnx.TensorProto.UINT8}  # U8 activations
