"""graph.verify: outputs compared pooled over calls; a NaN/Inf the original does not have fails."""

from __future__ import annotations

import numpy as np
import onnx
from click.testing import CliRunner
from onnx import TensorProto, helper

from tensorfold.cli import main
from tensorfold.graph.verify import Reference


def _model(op_nodes, const=None):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    inits = [onnx.numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in (const or {}).items()]
    return helper.make_model(helper.make_graph(op_nodes, "g", [x], [y], inits),
                             opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


ORIGINAL = _model([helper.make_node("Add", ["x", "one"], ["y"])], {"one": 1.0})
# x / 0 is +-inf (0 / 0 NaN) where the original is finite
BROKEN = _model([helper.make_node("Div", ["x", "zero"], ["y"])], {"zero": 0.0})


def test_a_nonfinite_output_fails_and_reads_null_in_json(tmp_path):
    feeds = {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}
    check = Reference(ORIGINAL, feeds, "test").verify(BROKEN)
    assert check.broken == ["y (6 NaN/Inf values)"]
    assert check.max_relative_error == float("inf") and not check.within(1e9)
    onnx.save(ORIGINAL, tmp_path / "a.onnx")
    onnx.save(BROKEN, tmp_path / "b.onnx")
    np.savez(tmp_path / "in.npz", x=feeds["x"])
    result = CliRunner().invoke(main, ["verify", str(tmp_path / "a.onnx"), str(tmp_path / "b.onnx"),
                                       "--inputs", str(tmp_path / "in.npz"), "--json"])
    assert result.exit_code == 1
    assert "NaN" not in result.output.replace("NaN/Inf", "") and '"relative_error": null' in result.output
    assert result.output.strip().splitlines()[-1].startswith("error: verification failed")


def test_the_same_inf_in_both_models_is_no_error():
    both = _model([helper.make_node("Div", ["x", "zero"], ["y"])], {"zero": 0.0})
    feeds = {"x": np.ones((2, 3), np.float32)}
    check = Reference(both, feeds, "test").verify(BROKEN)
    assert check.broken == [] and check.max_relative_error == 0.0


def test_a_channel_group_far_off_shows_although_the_overall_error_is_small():
    """A detector head (N, 4 + classes, anchors): boxes in pixels dominate one L2 over the output."""
    rng = np.random.default_rng(0)
    boxes = rng.uniform(0, 640, (1, 4, 100))
    scores = rng.uniform(0, 1, (1, 6, 100))
    ref = np.concatenate([boxes, scores], axis=1).astype(np.float32)
    got = ref.copy()
    got[:, 7] *= 3.0                          # one class channel off by 200%
    from tensorfold.graph.verify import compare_outputs

    check = compare_outputs([ref], [got], ["out"])[0]
    assert check.relative_error < 0.01
    assert check.worst_channel["index"] == 7 and check.worst_channel["axis"] == 1
    assert abs(check.worst_channel["relative_error"] - 2.0) < 1e-6


def test_channels_are_dropped_when_axis_one_changes_between_calls():
    """An RNN's h_n is (layers, N, H): axis 1 is the batch, 8 then 4 samples per call."""
    from tensorfold.graph.verify import OutputAccumulator

    acc = OutputAccumulator("h_n", None)
    for n in (8, 4):
        ref = np.ones((1, n, 16), np.float32)
        acc.add(ref, ref * 1.01)
    check = acc.result()
    assert check.worst_channel is None and abs(check.relative_error - 0.01) < 1e-6


def test_nan_in_the_original_alone_does_not_fail_the_candidate():
    from tensorfold.graph.verify import OutputAccumulator

    acc = OutputAccumulator("y", None)
    acc.add(np.array([[np.nan, 1.0]]), np.array([[0.5, 1.0]]))
    assert acc.result().nonfinite == 0
