"""onnxrt/inputs.py: how an input's dims read in a message."""

from __future__ import annotations

import onnx

from tensorfold.onnxrt.inputs import dims_text


def _dims(*dims):
    return onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(dims)).type.tensor_type.shape.dim


def test_a_named_dynamic_dim_keeps_its_name_and_a_made_up_one_reads_as_a_question_mark():
    assert dims_text(_dims("batch", 3, 48, None)) == "[batch, 3, 48, ?]"
    for made_up in ("DynamicDimension.0", "p2o.DynamicDimension.1", "unk__12", "s0"):
        assert dims_text(_dims(made_up, 3, 224, 224)) == "[?, 3, 224, 224]"
    assert dims_text(_dims("seq", "sequence_length")) == "[seq, sequence_length]"
