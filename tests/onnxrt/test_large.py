"""Models above protobuf's 2 GiB cap, on small models: the threshold is lowered and the cap itself
simulated (ModelProto refuses to serialize or size a message holding more weight bytes than it),
so every path that still serialized a whole large model fails here as it would on a real one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf.message import EncodeError
from onnx import TensorProto, helper, numpy_helper

from tensorfold.graph.io import load_model, save_model
from tensorfold.onnxrt import large
from tensorfold.onnxrt.sessions import make_session

CAP = 20_000


def _bytes_in_proto(model: onnx.ModelProto) -> int:
    return sum(large.tensor_bytes(t) for t in model.graph.initializer if t.data_location != TensorProto.EXTERNAL)


@pytest.fixture
def protobuf_cap(monkeypatch):
    """Serializing or sizing a model with more than CAP bytes of weights in it raises, as upb does
    above 2 GiB; the large-model path starts well below that."""
    monkeypatch.setenv("TENSORFOLD_EXTERNAL_DATA_BYTES", str(CAP // 2))
    serialize, size = onnx.ModelProto.SerializeToString, onnx.ModelProto.ByteSize

    def capped(method):
        def call(self, *args, **kwargs):
            if _bytes_in_proto(self) > CAP:
                raise EncodeError("Failed to serialize proto (simulated 2 GiB cap)")
            return method(self, *args, **kwargs)

        return call

    monkeypatch.setattr(onnx.ModelProto, "SerializeToString", capped(serialize))
    monkeypatch.setattr(onnx.ModelProto, "ByteSize", capped(size))


def _mlp(widths=(64, 128, 96, 10), dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    nodes, inits = [], [numpy_helper.from_array(np.array([0, -1], np.int64), "shape")]
    nodes.append(helper.make_node("Reshape", ["x", "shape"], ["h0"]))
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        inits.append(numpy_helper.from_array(rng.standard_normal((a, b)).astype(dtype), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [f"h{i}", f"w{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Relu", [f"m{i}"], [f"h{i + 1}"]))
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", elem, ["N", widths[0]])],
        [helper.make_tensor_value_info(f"h{len(widths) - 1}", elem, ["N", widths[-1]])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_the_simulated_cap_refuses_what_upb_refuses(protobuf_cap):
    model = _mlp()
    assert large.weight_bytes(model) > CAP
    with pytest.raises(EncodeError):
        model.SerializeToString()
    with pytest.raises(EncodeError):
        onnx.checker.check_model(model)


def test_a_tensor_of_an_unknown_type_counts_its_bytes_and_stays_in_the_skeleton():
    tensor = TensorProto(name="odd", data_type=0, dims=[4], raw_data=b"12345678" * 200)
    assert large.tensor_bytes(tensor) == 1600
    model = helper.make_model(helper.make_graph([], "g", [], [], [tensor]))
    skel, held = large.skeleton(model)
    assert not held and skel.graph.initializer[0].raw_data == tensor.raw_data


def test_skeleton_holds_the_weights_apart_and_gives_them_back(protobuf_cap):
    model = _mlp()
    skel, held = large.skeleton(model)
    assert sorted(held) == ["w0", "w1", "w2"]
    assert skel.graph.initializer[0].raw_data  # the small shape constant stays in
    assert len(skel.SerializeToString()) < 2000
    back = large.with_weights(skel, held)
    for a, b in zip(model.graph.initializer, back.graph.initializer):
        assert np.array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))
    assert large.serialized_size(model) >= large.weight_bytes(model)


def test_checker_and_shape_inference_work_on_a_large_model(protobuf_cap):
    from tensorfold.graph.normalize import infer_shapes

    model = _mlp()
    large.check_model(model, full_check=True)
    weights = [numpy_helper.to_array(t) for t in model.graph.initializer]
    infer_shapes(model)
    assert {v.name for v in model.graph.value_info} >= {"m0", "h1", "m2"}
    assert all(np.array_equal(numpy_helper.to_array(t), w) for t, w in zip(model.graph.initializer, weights))
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    broken.graph.node[1].input[1] = "missing"
    with pytest.raises(onnx.checker.ValidationError):
        large.check_model(broken, full_check=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_a_session_of_a_large_model_computes_what_the_small_path_computes(protobuf_cap, monkeypatch, dtype):
    model = _mlp(dtype=dtype)
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(dtype)
    big = make_session(model).run(None, {"x": x})[0]
    monkeypatch.undo()  # the cap and the lowered threshold off: the ordinary path
    assert not large.is_large(model)
    small = make_session(model).run(None, {"x": x})[0]
    np.testing.assert_array_equal(big, small)


def test_bfloat16_weights_reach_onnxruntime_by_their_bits(protobuf_cap):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    w = np.arange(8192, dtype=np.float32).reshape(128, 64) / 8192
    graph = helper.make_graph(
        [helper.make_node("Cast", ["w"], ["wf"], to=TensorProto.FLOAT), helper.make_node("MatMul", ["x", "wf"], ["y"])],
        "bf16",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 128])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        [numpy_helper.from_array(w.astype(ml_dtypes.bfloat16), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    assert large.is_large(model)
    x = np.ones((1, 128), np.float32)
    y = make_session(model).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, x @ w.astype(ml_dtypes.bfloat16).astype(np.float32), rtol=1e-6)


def test_save_streams_the_weights_aligned_and_loads_back(protobuf_cap, tmp_path):
    model = _mlp(widths=(64, 1024, 300, 10))  # w0 is 256 KiB, w1 1.2 MiB: aligned
    save_model(model, tmp_path / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    assert (tmp_path / "m.onnx").stat().st_size < 2000
    header = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    offsets = {
        t.name: int(next(e.value for e in t.external_data if e.key == "offset"))
        for t in header.graph.initializer
        if t.data_location == TensorProto.EXTERNAL
    }
    assert offsets["w0"] == 0 and offsets["w1"] % 65536 == 0
    back = load_model(tmp_path / "m.onnx")
    for a, b in zip(model.graph.initializer, back.graph.initializer):
        assert np.array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))
    onnx.checker.check_model(str(tmp_path / "m.onnx"), full_check=True)


def test_every_command_works_on_a_model_above_the_cap(tmp_path, monkeypatch, protobuf_cap):
    """load, factorize, verify, save, profile, recover, search ranks and int8 on models whose
    protobuf cannot be serialized whole: input and output keep their weights in NAME.data."""
    from click.testing import CliRunner

    from tensorfold.cli import main
    from tensorfold.demo import demo_model_path

    monkeypatch.chdir(tmp_path)
    save_model(load_model(demo_model_path()), "cnn.onnx")
    assert Path("cnn.onnx.data").stat().st_size > CAP
    np.savez("d.npz", x=np.random.default_rng(0).random((32, 1, 28, 28), dtype=np.float32))

    def ok(*args):
        result = CliRunner().invoke(main, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        return result.output

    ok("optimize", "cnn.onnx", "-o", "small.onnx", "--ratio", "1.5", "--inputs", "d.npz")
    assert large.is_large(load_model("small.onnx"))
    ok("verify", "cnn.onnx", "small.onnx", "--inputs", "d.npz")
    ok("profile", "small.onnx", "--runs", "2", "--warmup", "1")
    ok(
        "recover",
        "small.onnx",
        "--teacher",
        "cnn.onnx",
        "--data",
        "d.npz",
        "-o",
        "rec.onnx",
        "--max-steps",
        "2",
        "--batch-size",
        "16",
    )
    ok("search", "ranks", "cnn.onnx", "--n-trials", "2", "-o", "pareto")
    ok("optimize", "cnn.onnx", "-o", "q.onnx", "--int8", "--calibration", "d.npz")
    for name in ("small.onnx.data", "rec.onnx.data", "pareto/point-1.onnx.data", "q.onnx"):
        assert Path(name).stat().st_size > 1000, name
    assert not list(Path(".").rglob(".*.tmp"))
