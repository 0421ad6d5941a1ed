"""The learned per-kernel model: reading configurations off a graph, the sampled kernel models,
learning a known synthetic device, and one real (tiny) calibration through onnxruntime."""

import math

import numpy as np
import onnx
import pytest

from tensorfold.graph.shapes import concrete_shapes
from tensorfold.graph.stats import node_flops
from tensorfold.runtime.devices import DEVICES, describe, get_device, predict_seconds
from tensorfold.runtime.kernel_model import (
    KernelModel,
    Sample,
    collect_samples,
    conv_bytes,
    conv_flops,
    conv_input_bytes,
    kernel_model,
    learn_host,
    matmul_flops,
    node_config,
    sample_conv,
    sample_matmul,
    sample_pair,
)
from tests.passes.single_node import conv_model, gemm_model


def test_node_config_of_a_strided_grouped_conv():
    model, _ = conv_model(
        np.ones((8, 2, 3, 3)), bias=True, groups=2, strides=[2, 2], pads=[1, 1, 1, 1], spatial=(9, 9), batch=1
    )
    shapes = concrete_shapes(model, {"x": [1, 4, 9, 9]})
    fam, c = node_config(model.graph.node[0], shapes)
    assert fam == "conv"
    assert c == {
        "batch": 1,
        "cin": 4,
        "hin": 9,
        "win": 9,
        "cout": 8,
        "hout": 5,
        "wout": 5,
        "kh": 3,
        "kw": 3,
        "stride": 2,
        "groups": 2,
    }
    assert conv_flops(c) == node_flops(model.graph.node[0], shapes)


def test_node_config_of_a_gemm():
    model, _ = gemm_model(16, 4, bias="vector", batch=3)
    shapes = concrete_shapes(model, {"x": [3, 16]})
    fam, c = node_config(model.graph.node[0], shapes)
    assert fam == "matmul" and (c["m"], c["k"], c["n"]) == (3, 16, 4)
    assert matmul_flops(c) == node_flops(model.graph.node[0], shapes)


@pytest.mark.parametrize("seed", range(5))
def test_sampled_kernels_are_valid_models_of_their_configs(seed):
    rng = np.random.default_rng(seed)
    for fam, c in (
        ("conv", sample_conv(rng)),
        ("matmul", sample_matmul(rng)),
        ("conv", list(sample_pair(rng).values())),
    ):
        model, feeds = kernel_model(fam, c, rng)
        onnx.checker.check_model(model)
        shapes = concrete_shapes(model, {k: list(v.shape) for k, v in feeds.items()})
        read = [node_config(n, shapes)[1] for n in model.graph.node]
        assert read == (c if isinstance(c, list) else [c])  # the graph is the configuration


def _synthetic_seconds(c):
    """A device whose efficiency grows with channels (as a CPU's does): no single roofline fits it."""
    eff = min(1.0, 0.15 + 0.85 * math.log(c["cin"] // c["groups"] + 1) / math.log(1025))
    return max(conv_flops(c) / (100e9 * eff), conv_bytes(c) / 20e9) + 5e-6


def test_learns_a_device_no_roofline_describes():
    rng = np.random.default_rng(0)
    call = 1e-5
    train = [sample_conv(rng) for _ in range(400)]
    samples = [Sample("conv", c, call + _synthetic_seconds(c)) for c in train]
    # joints: each saves 1 us + 1 ns per byte of the tensor passed between the two convs
    for _ in range(20):
        p = sample_pair(rng)
        samples.append(Sample("pair", p, 1e-6 + 1e-9 * conv_input_bytes(p["b"])))
    km = KernelModel(samples, call, DEVICES["rx580"])
    assert km.joint == pytest.approx((1e-9, 1e-6), rel=1e-3)
    test = [sample_conv(rng) for _ in range(100)]
    pred = km.config_seconds("conv", test)
    true = np.array([_synthetic_seconds(c) for c in test])
    assert np.median(np.abs(pred / true - 1)) < 0.15
    from scipy.stats import kendalltau

    assert kendalltau(pred, true).statistic > 0.9
    # a two-conv chain: both convs' times, one call, less the joint's saving
    pair = sample_pair(rng)
    model, feeds = kernel_model("conv", [pair["a"], pair["b"]], rng)
    got = km.predict(model, {k: list(v.shape) for k, v in feeds.items()})
    expected = (
        call + km.config_seconds("conv", [pair["a"], pair["b"]]).sum() - (1e-6 + 1e-9 * conv_input_bytes(pair["b"]))
    )
    assert got == pytest.approx(expected, rel=1e-6)


def test_real_calibration_through_onnxruntime(tmp_path, monkeypatch):
    """A tiny calibration (a few kernels) runs, is cached, and predicts positive times; with too
    few samples to learn from, every node takes the fallback roofline's time."""
    monkeypatch.setenv("TENSORFOLD_CACHE", str(tmp_path))
    samples, call = collect_samples(counts={"conv": 4, "matmul": 2, "pair": 2}, rounds=3)
    assert len(samples) == 8 and call > 0
    assert all(s.seconds > 0 for s in samples if s.family != "pair")
    import tensorfold.runtime.kernel_model as km_mod

    monkeypatch.setattr(km_mod, "SAMPLES", {"conv": 12, "matmul": 3, "pair": 2})
    host = get_device("host", progress=False)
    assert host.kernels is not None and host.key.startswith("host-k")
    assert "per-kernel model" in describe(host)
    assert list((tmp_path / "devices").glob("kernels-*.json"))
    again = learn_host(progress=False)  # from the cache: same samples
    assert [s.config for s in again.samples] == [s.config for s in host.kernels.samples]
    model, feeds = conv_model(np.ones((8, 4, 3, 3)), bias=True, pads=[1, 1, 1, 1], spatial=(16, 16), batch=1)
    assert predict_seconds(model, {"x": [1, 4, 16, 16]}, host) > host.run_overhead_s
    # matmul has 3 samples: no forest for it, the fallback roofline answers
    gemm, _ = gemm_model(16, 4, bias="vector", batch=3)
    assert "matmul" not in host.kernels.forests
    assert predict_seconds(gemm, {"x": [3, 16]}, host) > 0


def test_host_roofline_is_the_quick_calibration():
    dev = get_device("host-roofline")
    assert dev.kernels is None and dev.name == "host-roofline" and dev.peak_flops > 0
