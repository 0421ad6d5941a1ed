"""The roofline model on hand-computed cases, and the host calibration's shape."""

import numpy as np
import pytest

from tensorfold.errors import TensorfoldError
from tensorfold.runtime.devices import DEVICES, Device, calibrate_host, get_device, node_costs, predict_seconds
from tests.passes.single_node import conv_model, gemm_model


def test_roofline_node():
    dev = Device("toy", peak_flops=1e9, bandwidth=1e9, overhead_s=1e-6)
    assert dev.node_seconds(2e6, 1e6) == pytest.approx(2e-3 + 1e-6)  # compute-bound
    assert dev.node_seconds(1e6, 4e6) == pytest.approx(4e-3 + 1e-6)  # memory-bound


def test_conv_cost_by_hand():
    model, _ = conv_model(np.ones((8, 4, 3, 3)), bias=False, pads=[1, 1, 1, 1], spatial=(10, 10), batch=1)
    (cost,) = node_costs(model, {"x": [1, 4, 10, 10]})
    assert cost.flops == 2 * 8 * 4 * 9 * 10 * 10
    assert cost.bytes == 4 * (4 * 100 + 8 * 4 * 9 + 8 * 100)
    rx = DEVICES["rx580"]
    expected = max(cost.flops / rx.peak_flops, cost.bytes / rx.bandwidth) + rx.overhead_s
    assert predict_seconds(model, {"x": [1, 4, 10, 10]}, rx) == pytest.approx(expected + rx.run_overhead_s)


def test_gemm_cost_by_hand():
    model, _ = gemm_model(16, 4, bias="vector", batch=3)
    (cost,) = node_costs(model, {"x": [3, 16]})
    assert cost.flops == 2 * 3 * 16 * 4
    assert cost.bytes == 4 * (3 * 16 + 16 * 4 + 4 + 3 * 4)


def test_unknown_device():
    with pytest.raises(TensorfoldError, match="rx580"):
        get_device("rx590")


def test_host_calibration_is_plausible():
    host = calibrate_host(cache=False)
    assert 1e8 < host.peak_flops < 1e14
    assert 1e8 < host.bandwidth < 1e13
    assert 0 < host.overhead_s < 1e-3


def test_fit_roofline_recovers_a_known_device():
    from tensorfold.runtime.devices import NodeCost, fit_roofline

    truth = Device("truth", peak_flops=5e10, bandwidth=2e10, overhead_s=3e-6, run_overhead_s=2e-5)
    rng = np.random.default_rng(0)
    samples = [
        [
            NodeCost("n", "Conv", float(rng.uniform(1e5, 1e9)), float(rng.uniform(1e4, 1e8)))
            for _ in range(rng.integers(1, 5))
        ]
        for _ in range(60)
    ]
    measured = [truth.run_overhead_s + sum(truth.node_seconds(c.flops, c.bytes) for c in s) for s in samples]
    fitted = fit_roofline(samples, measured, DEVICES["rx580"])
    pred = [fitted.run_overhead_s + sum(fitted.node_seconds(c.flops, c.bytes) for c in s) for s in samples]
    np.testing.assert_allclose(pred, measured, rtol=0.02)
