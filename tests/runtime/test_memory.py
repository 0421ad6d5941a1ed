"""Predicted peak memory: weights, the largest live activation set, a conv's im2col workspace."""

import json

import numpy as np
import onnx
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from tensorfold.cli import main
from tensorfold.runtime.memory import measured_peak_bytes, predict_memory


def _model():
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
        for n, s in (("w1", (8, 4, 3, 3)), ("b1", (8,)), ("w2", (2, 8, 1, 1)), ("b2", (2,)))
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2", "b2"], ["y"], name="conv2"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2, 8, 8])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_the_peak_is_counted_along_the_execution_order():
    est = predict_memory(_model(), {"x": [1, 4, 8, 8]})
    assert est.weights_bytes == (8 * 4 * 9 + 8 + 2 * 8 + 2) * 4
    # at conv1: its input and output are alive (x: 1 KiB, c1: 2 KiB) and im2col is 4*9 x 64 floats
    assert (est.activations_bytes, est.workspace_bytes, est.peak_node) == (3072, 9216, "conv1")
    assert est.total_bytes == est.weights_bytes + 3072 + 9216
    # at batch 16 the activations outgrow im2col (per image): the peak moves to relu, c1 and r alive
    big = predict_memory(_model(), {"x": [16, 4, 8, 8]})
    assert (big.activations_bytes, big.workspace_bytes, big.peak_node) == (16 * 4096, 0, "relu")


def test_the_measured_peak_is_a_fresh_process_s_own(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_model(), path)
    small = measured_peak_bytes(path, {"x": np.zeros((1, 4, 8, 8), np.float32)})
    large = measured_peak_bytes(path, {"x": np.zeros((512, 4, 8, 8), np.float32)})
    assert small is not None and large is not None and 0 <= small < large  # 512 images need more


def test_profile_predicts_memory_and_warns_past_the_device(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_model(), path)
    result = CliRunner().invoke(
        main, ["profile", str(path), "--device", "rx580", "--batch", "1", "--batch", "4000000", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    small, huge = report["batches"]["1"]["predicted_memory"], report["batches"]["4000000"]["predicted_memory"]
    assert small["peak_node"] == "conv1" and small["total_mb"] < huge["total_mb"]
    assert any("more than the 8 GiB of rx580" in w for w in report["warnings"])
