"""onnxrt/inputs.py: how an input's dims read in a message."""

from __future__ import annotations

import numpy as np
import onnx

from tensorfold.onnxrt.inputs import dims_text


def _dims(*dims):
    return onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(dims)).type.tensor_type.shape.dim


def test_a_named_dynamic_dim_keeps_its_name_and_a_made_up_one_reads_as_a_question_mark():
    assert dims_text(_dims("batch", 3, 48, None)) == "[batch, 3, 48, ?]"
    for made_up in ("DynamicDimension.0", "p2o.DynamicDimension.1", "unk__12", "s0"):
        assert dims_text(_dims(made_up, 3, 224, 224)) == "[?, 3, 224, 224]"
    assert dims_text(_dims("seq", "sequence_length")) == "[seq, sequence_length]"


def test_inputs_holding_different_sample_counts_are_named(tmp_path):
    import pytest
    from onnx import TensorProto, helper

    from tensorfold.errors import TensorfoldError
    from tensorfold.onnxrt.inputs import load_inputs

    graph = helper.make_graph(
        [helper.make_node("Add", ["ids", "mask"], ["y"])],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["N", 8]) for n in ("ids", "mask")],
        [helper.make_tensor_value_info("y", TensorProto.INT64, ["N", 8])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "x.npz"
    np.savez(path, ids=np.zeros((10, 8), np.int64), mask=np.zeros((9, 8), np.int64))
    with pytest.raises(TensorfoldError, match=r"different numbers of samples \(ids 10, mask 9\)"):
        load_inputs(path, model)
    np.savez(path, ids=np.zeros((10, 8), np.int64), mask=np.zeros((10, 8), np.int64))
    assert load_inputs(path, model)["mask"].shape == (10, 8)
