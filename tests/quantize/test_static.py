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


def test_a_histogram_widened_to_tens_of_thousands_of_bins_is_merged_about_zero():
    """A quiet first sample left one of hey_jarvis's tensors at 62,374 bins, and onnxruntime's
    entropy search (quadratic in the bins, in Python) took 224 s on it."""
    rng = np.random.default_rng(0)
    values = rng.standard_normal(10_000).astype(np.float32)
    threshold = np.float32(4.0)
    hist, edges = np.histogram(values, 62_374, range=(-threshold, threshold))
    wide = {"t": (hist, edges.astype(np.float32), values.min(), values.max(), threshold)}
    small = {"s": (hist[:128], edges[:129], 0.0, 1.0, threshold)}
    static.cap_histograms(wide)
    static.cap_histograms(small)
    merged, new_edges, low, high, new_threshold = wide["t"]
    assert len(merged) <= static.MAX_ENTROPY_BINS and merged.sum() == hist.sum()
    assert len(new_edges) == len(merged) + 1 and new_edges[0] == -new_threshold and new_edges[-1] == new_threshold
    assert len(merged) % 2 == 0 and abs(new_edges[len(merged) // 2]) < 1e-6  # the middle edge is zero
    assert new_threshold >= threshold and (low, high) == (values.min(), values.max())
    assert len(small["s"][0]) == 128  # left as it was
