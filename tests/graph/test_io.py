"""Loading (external data too) and atomic saving that never leaves a partial file."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import numpy as np
import onnx
import pytest

from tensorfold.errors import TensorfoldError
from tensorfold.graph.io import load_model, save_model
from tests.passes.single_node import conv_model


def test_external_data_roundtrip(tmp_path):
    model, _ = conv_model(np.ones((64, 32, 3, 3)), bias=True)
    path = tmp_path / "ext.onnx"
    onnx.save_model(
        model, path, save_as_external_data=True, all_tensors_to_one_file=True, location="ext.data", size_threshold=16
    )
    assert (tmp_path / "ext.data").exists()
    loaded = load_model(path)
    w = onnx.numpy_helper.to_array(loaded.graph.initializer[0])
    assert w.shape == (64, 32, 3, 3) and float(w.sum()) == 64 * 32 * 9


def test_missing_external_data_is_a_user_error(tmp_path):
    model, _ = conv_model(np.ones((64, 32, 3, 3)), bias=False)
    path = tmp_path / "ext.onnx"
    onnx.save_model(model, path, save_as_external_data=True, location="ext.data", size_threshold=16)
    (tmp_path / "ext.data").unlink()
    with pytest.raises(TensorfoldError, match="ext.onnx"):
        load_model(path)


def test_save_is_atomic_when_writing_fails(tmp_path):
    model, _ = conv_model(np.ones((4, 2, 3, 3)), bias=False)
    target = tmp_path / "out.onnx"
    target.write_bytes(b"previous content")
    with mock.patch("onnx.save_model", side_effect=OSError("disk full")):
        with pytest.raises(OSError):
            save_model(model, target)
    assert target.read_bytes() == b"previous content"
    assert [p.name for p in tmp_path.iterdir()] == ["out.onnx"]


def test_save_large_model_uses_external_data(tmp_path, monkeypatch):
    monkeypatch.setenv("TENSORFOLD_EXTERNAL_DATA_BYTES", "1000")
    model, _ = conv_model(np.arange(64 * 32 * 9, dtype=np.float32).reshape(64, 32, 3, 3), bias=False)
    target = tmp_path / "big.onnx"
    save_model(model, target)
    assert (tmp_path / "big.onnx.data").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    w = onnx.numpy_helper.to_array(load_model(target).graph.initializer[0])
    assert np.array_equal(w, np.arange(64 * 32 * 9, dtype=np.float32).reshape(64, 32, 3, 3))


def test_save_into_missing_folder(tmp_path):
    model, _ = conv_model(np.ones((4, 2, 3, 3)), bias=False)
    with pytest.raises(TensorfoldError, match="does not exist"):
        save_model(model, tmp_path / "nope" / "out.onnx")


def test_models_tensorfold_builds_carry_the_lowest_ir_version_their_opset_needs():
    """onnxruntime builds older than the installed onnx refuse a newer IR version; nothing built
    here (latency-table chains, calibration kernels, frozen-op fallbacks) needs more than its opset."""
    from onnx import TensorProto, helper

    from tensorfold.graph.model import make_model
    from tensorfold.planning.latency_table import mini_model

    node = helper.make_node("Relu", ["x"], ["y"])
    model = mini_model([node], [], {"x": [1, 4], "y": [1, 4]}, 17)
    assert model.ir_version == helper.find_min_ir_version_for([helper.make_opsetid("", 17)]) == 8
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    assert make_model(graph, [helper.make_opsetid("", 13)]).ir_version == 7
    assert make_model(graph, [helper.make_opsetid("", 13)], ir_version=9).ir_version == 9


def test_saving_with_external_data_leaves_the_model_in_memory_whole(tmp_path, monkeypatch):
    """Saving with external data must not strip the weights from the caller's model (as
    onnx.save_model(save_as_external_data=True) does to the proto it is given)."""
    monkeypatch.setenv("TENSORFOLD_EXTERNAL_DATA_BYTES", "1000")
    weight = np.arange(64 * 32 * 9, dtype=np.float32).reshape(64, 32, 3, 3)
    model, _ = conv_model(weight, bias=False)
    before = model.SerializeToString()
    save_model(model, tmp_path / "a.onnx")
    save_model(model, tmp_path / "a.onnx")  # over the first: a unique temp data name each time
    assert model.SerializeToString() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx", "a.onnx.data"]
    assert np.array_equal(onnx.numpy_helper.to_array(load_model(tmp_path / "a.onnx").graph.initializer[0]), weight)
    assert (tmp_path / "a.onnx.data").stat().st_size == weight.nbytes


def test_external_data_save_works_from_the_output_folder_itself(tmp_path, monkeypatch):
    """onnx checks the data file name against the working directory: a bare -o name must work."""
    monkeypatch.setenv("TENSORFOLD_EXTERNAL_DATA_BYTES", "1000")
    monkeypatch.chdir(tmp_path)
    model, _ = conv_model(np.ones((64, 32, 3, 3), np.float32), bias=False)
    save_model(model, "o.onnx")
    save_model(model, "o.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.onnx", "o.onnx.data"]


def test_every_command_works_through_external_data(tmp_path, monkeypatch):
    """The large-model path end to end, with the threshold lowered: optimize writes NAME.data,
    and verify, profile, recover and search ranks read and write through it."""
    from click.testing import CliRunner

    from tensorfold.cli import main
    from tensorfold.demo import demo_model_path

    monkeypatch.setenv("TENSORFOLD_EXTERNAL_DATA_BYTES", "1000")
    monkeypatch.chdir(tmp_path)
    np.savez("d.npz", x=np.random.default_rng(0).random((32, 1, 28, 28), dtype=np.float32))

    def ok(*args):
        result = CliRunner().invoke(main, [str(a) for a in args])
        assert result.exit_code == 0, result.output

    ok("optimize", demo_model_path(), "-o", "small.onnx", "--ratio", "2")
    ok("verify", demo_model_path(), "small.onnx")
    ok("profile", "small.onnx", "--runs", "2", "--warmup", "1")
    ok(
        "recover",
        "small.onnx",
        "--teacher",
        demo_model_path(),
        "--data",
        "d.npz",
        "-o",
        "rec.onnx",
        "--max-steps",
        "2",
        "--batch-size",
        "16",
    )
    ok("search", "ranks", "small.onnx", "--n-trials", "2", "-o", "pareto")
    for name in ("small.onnx.data", "rec.onnx.data", "pareto/point-1.onnx.data"):
        assert Path(name).stat().st_size > 1000, name
    assert not list(Path(".").rglob(".*.tmp"))
