"""Whole models: small nets exported from torch, and real PP-OCR models nobody here wrote."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tensorfold.api import optimize
from tensorfold.graph.io import load_model
from tensorfold.onnxrt.sessions import make_session
from tests.fixtures import torch_models

EXPORTS = {
    "resnet": torch_models.export_resnet_like,
    "mobilenet": torch_models.export_mobilenet_like,
    "transformer": torch_models.export_transformer_block,
    "odd_convs": torch_models.export_odd_convs,
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("torch_models")
    return {name: fn(folder) for name, fn in EXPORTS.items()}


def _check_written(path):
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("name", list(EXPORTS))
def test_full_rank_reproduces_model(exported, tmp_path, name):
    out = tmp_path / "full.onnx"
    report = optimize(exported[name], out, method="tucker", rank=100_000, force=True, progress=False)
    assert report.layers
    assert report.verification.max_relative_error < 1e-4
    _check_written(out)


# odd_convs has no 1x1 conv or matrix, so svd has nothing to rewrite there (covered by test_cli's skip reasons)
CASES = [(n, m) for n in EXPORTS for m in ("svd", "tucker", "cp", "tt", "auto") if (n, m) != ("odd_convs", "svd")]


@pytest.mark.parametrize("name,method", CASES)
def test_methods_compress_and_run(exported, tmp_path, name, method):
    out = tmp_path / f"{method}.onnx"
    report = optimize(exported[name], out, method=method, ratio=2, progress=False)
    factorizable = sum(r.params_before for r in report.layers)
    assert report.layers, [s.as_dict() for s in report.skipped]
    assert report.after.params < report.before.params
    assert sum(r.params_after for r in report.layers) < factorizable
    before, after = report.eligible_params
    assert before / after >= 2.0  # --ratio holds over the layers the method can rewrite
    assert np.isfinite(report.verification.max_relative_error)
    if name == "mobilenet":
        depthwise = [s for s in report.skipped if "depthwise" in s.reason]
        assert depthwise
    _check_written(out)


def test_resnet_batchnorm_is_folded(exported, tmp_path):
    original = load_model(exported["resnet"])
    assert any(n.op_type == "BatchNormalization" for n in original.graph.node)
    report = optimize(
        exported["resnet"], tmp_path / "o.onnx", method="tucker", rank=100_000, force=True, progress=False
    )
    assert report.normalization["batchnorms_folded"] > 0
    assert "BatchNormalization" not in report.after.ops
    assert report.verification.max_relative_error < 1e-4


def test_transformer_batched_matmuls(exported, tmp_path):
    report = optimize(exported["transformer"], tmp_path / "o.onnx", method="tt", ratio=2, progress=False)
    assert {r.op for r in report.layers} == {"MatMul"}


@pytest.mark.network
@pytest.mark.parametrize("which,shape", [("det", "x:1,3,96,128"), ("cls", None)])
def test_real_ppocr_models(tmp_path, which, shape):
    """PP-OCRv4 det and the mobile direction classifier from rapidocr-onnxruntime 1.4.4 (weights in Constant nodes)."""
    from tensorfold.bench.real_models import fetch_rapidocr_model

    path = fetch_rapidocr_model(which)
    shapes = (shape,) if shape else ()
    full = optimize(
        path, tmp_path / "full.onnx", method="tucker", rank=100_000, force=True, shapes=shapes, progress=False
    )
    assert full.normalization["constants_to_initializers"] > 0
    assert full.layers
    # the detector's sigmoid map is ~0 on noise inputs, so judge it by absolute error
    out = full.verification.outputs[0]
    assert out.relative_error < 1e-3 or out.max_abs_error < 1e-5
    out = tmp_path / "small.onnx"
    report = optimize(path, out, method="auto", ratio=2, shapes=shapes, progress=False)
    assert report.layers
    assert report.after.params < report.before.params
    model = _check_written(out)
    feeds = {
        i.name: np.random.default_rng(0).random(report.input_shapes[i.name]).astype(np.float32)
        for i in make_session(str(out)).get_inputs()
    }
    assert make_session(model).run(None, feeds)[0].shape == make_session(str(path)).run(None, feeds)[0].shape


@pytest.mark.parametrize(
    "args",
    [
        {"method": "cp", "rank": 100_000},
        {"method": "cp", "energy": 1.0},
        {"method": "auto", "energy": 1.0},
        {"method": "tt", "rank": 100_000},
        {"method": "tucker", "rank": 100_000},
    ],
)
def test_huge_ranks_finish_in_seconds(tmp_path, args):
    """A chain that cannot be smaller (or cheaper) than its layer is refused before any
    decomposition runs."""
    import time

    from tensorfold.demo import demo_model_path

    start = time.perf_counter()
    report = optimize(demo_model_path(), tmp_path / "o.onnx", progress=False, verify=False, **args)
    assert time.perf_counter() - start < 30
    assert all(
        "not fewer than the layer's" in s.reason or "could not run faster" in s.reason
        for s in report.skipped
        if s.op == "Conv"
    )


def test_cp_rank_is_clipped_to_the_generic_bound():
    from tensorfold.passes.cp import cp_max_rank

    assert cp_max_rank((128, 64, 3, 3)) == 64 * 9
    assert cp_max_rank((32, 1, 3, 3)) == 9


@pytest.mark.network
def test_real_silero_vad_with_integer_input(tmp_path):
    """Silero VAD from the silero-vad 6.2.3 wheel: raw audio, an int64 sample-rate scalar, a state
    whose batch axis is the second; factorized, verified on a real-shaped call, profiled on it."""
    from tensorfold.api import profile
    from tensorfold.bench.real_models import SILERO_VAD, fetch_wheel_model

    path = fetch_wheel_model(SILERO_VAD, "vad16k")
    t = np.arange(512) / 16000
    audio = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * np.random.default_rng(0).standard_normal(512)
    inputs = tmp_path / "call.npz"
    np.savez(
        inputs,
        input=audio.astype(np.float32)[None],
        state=np.zeros((2, 1, 128), np.float32),
        sr=np.array(16000, np.int64),
    )
    full = optimize(
        path, tmp_path / "full.onnx", method="tucker", rank=100_000, force=True, inputs=str(inputs), progress=False
    )
    assert full.layers and full.verification.max_error < 1e-3
    report = optimize(path, tmp_path / "small.onnx", method="auto", ratio=2, inputs=str(inputs), progress=False)
    assert report.after.params < report.before.params
    _check_written(tmp_path / "small.onnx")
    info = profile(tmp_path / "small.onnx", inputs=str(inputs), runs=3, warmup=1)
    assert info.input_shapes["sr"] == [] and info.input_shapes["input"] == [1, 512]
