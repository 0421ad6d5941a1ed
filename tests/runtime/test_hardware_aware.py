"""Hardware-aware optimization: rewrite only where the chain is faster; never return a slower model."""

import numpy as np
import onnx
import pytest

from tensorfold.api import optimize
from tensorfold.cli import demo_model_path
from tensorfold.runtime.latency import compare
from tests.passes.single_node import conv_model


def _low_rank_conv(tmp_path, channels=256, rank=16, spatial=16):
    rng = np.random.default_rng(0)
    core = rng.standard_normal((rank, rank, 3, 3))
    u, v = np.linalg.qr(rng.standard_normal((channels, rank)))[0], np.linalg.qr(rng.standard_normal((channels, rank)))[0]
    w = np.einsum("oa,abhw,ib->oihw", u, core, v)
    model, feeds = conv_model(w, bias=True, pads=[1, 1, 1, 1], spatial=(spatial, spatial), batch=1)
    path = tmp_path / "conv.onnx"
    onnx.save(model, path)
    return path, feeds


def test_predicted_faster_chain_is_taken(tmp_path):
    path, _ = _low_rank_conv(tmp_path)
    report = optimize(path, tmp_path / "o.onnx", method="tucker", hardware_aware=True, device="rx580",
                      max_error=0.05, progress=False)
    assert report.layers and report.layers[0].ranks == [16, 16]
    assert report.latency["speedup"] > 1.0
    assert report.verification.max_relative_error < 1e-4


def test_no_faster_chain_keeps_the_input(tmp_path):
    """On the demo CNN (batch 1) the RX 580 model predicts every chain slower: launches dominate."""
    report = optimize(demo_model_path(), tmp_path / "o.onnx", method="tucker", ratio=4, hardware_aware=True,
                      device="rx580", progress=False)
    assert not report.layers
    assert report.latency["speedup"] == 1.0
    assert all("hardware-aware" in s.reason for s in report.skipped if s.op == "Conv" and s.node.endswith("4/Conv"))


def test_speedup_target(tmp_path):
    path, _ = _low_rank_conv(tmp_path)
    report = optimize(path, tmp_path / "o.onnx", method="tucker", device="rx580", speedup=1.2, progress=False)
    assert report.latency["speedup"] >= 1.2 - 1e-6
    report = optimize(path, tmp_path / "o.onnx", method="tucker", device="rx580", speedup=1000, progress=False)
    assert any("out of reach" in n for n in report.notes)


@pytest.mark.slow
def test_measured_result_is_no_slower(tmp_path):
    """Measured on the CPU provider: an independent interleaved comparison after the run."""
    path, feeds = _low_rank_conv(tmp_path, channels=256, rank=16, spatial=32)
    out = tmp_path / "o.onnx"
    report = optimize(path, out, method="auto", hardware_aware=True, provider="cpu", progress=False)
    cmp = compare(onnx.load(out), onnx.load(path), feeds, runs=40)
    assert cmp.speedup >= 0.9          # the output is not slower than the input, 10% noise allowed
    assert report.latency["speedup"] >= 1.0
