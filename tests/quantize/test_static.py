"""quantize/static.py: onnxruntime's pre-processing, as its failures reach the user."""

from __future__ import annotations

import errno
import logging

import numpy as np
import onnx
import pytest

from tensorfold.demo import demo_model_path
from tensorfold.quantize import static
from tensorfold.quantize.formats import format_for


def _fit():
    return {"input": np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)}


def test_a_full_disk_in_pre_processing_ends_the_run_and_prints_no_traceback(monkeypatch, capsys):
    """onnxruntime logs a failed step with its traceback and goes on; a full TMPDIR is an error."""
    import onnxruntime.quantization.shape_inference as ort_shape_inference

    def full_disk(src, dst, **kwargs):
        logger = logging.getLogger("onnxruntime.quantization.shape_inference")
        logger.error("ONNX Runtime Model Optimization Failed!")
        logger.error("Traceback (most recent call last):\nOSError: [Errno 28] No space left on device")

    monkeypatch.setattr(ort_shape_inference, "quant_pre_process", full_disk)
    with pytest.raises(OSError) as err:
        static.StaticQuantizer(onnx.load(str(demo_model_path())), _fit(), format_for("cpu", "x86_64", set()))
    assert err.value.errno == errno.ENOSPC
    assert "Traceback" not in capsys.readouterr().err
