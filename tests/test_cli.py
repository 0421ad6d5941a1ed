"""The CLI as a user meets it: reports, JSON, and one-line errors with exit 2 for bad input."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tensorfold.demo import demo_model_path
from tests.helpers.cli import assert_user_error, invoke
from tests.passes.single_node import conv_model, run

DEMO = demo_model_path()


def test_optimize_json_report(tmp_path):
    out = tmp_path / "small.onnx"
    code, text = invoke("optimize", DEMO, "-o", out, "--method", "tucker", "--ratio", "4", "--json")
    assert code == 0, text
    report = json.loads(text)
    for key in ("params_before", "params_after", "flops_before", "flops_after", "layers", "skipped", "verification"):
        assert key in report
    assert report["params_before"] / report["params_after"] > 2.5
    assert report["factorizable_ratio"] >= 4.0
    assert report["flops_after"] < report["flops_before"]
    assert report["verification"]["checker"] == "passed"
    assert any("random normal" in w for w in report["warnings"])  # 0.65 on random inputs
    layer = report["layers"][0]
    assert {"node", "method", "ranks", "weight_error"} <= set(layer)
    model = onnx.load(out)
    onnx.checker.check_model(model, full_check=True)
    assert any(p.key == "tensorfold" for p in model.metadata_props)
    docs = [n.doc_string for n in model.graph.node if '[tensorfold] {"original"' in n.doc_string]
    assert len(docs) >= 3 * len(report["layers"]) - 1  # every node of every chain says where it came from


def test_a_check_on_random_inputs_alone_is_always_a_warning(tmp_path):
    """Random inputs say little about real ones (PP-OCR cls at --ratio 2: 0.028 on them, 0.76 on
    text lines): a lossy rewrite checked on them only is a warning even when the error looks small."""
    code, text = invoke("optimize", DEMO, "-o", tmp_path / "a.onnx", "--method", "tucker", "--ratio", "1.1", "--json")
    assert code == 0, text
    report = json.loads(text)
    assert report["verification"]["outputs"][0]["relative_error"] < 0.05
    assert any("only, which says little about real inputs" in w for w in report["warnings"])
    inputs = tmp_path / "real.npz"
    np.savez(inputs, input=np.random.default_rng(0).random((8, 1, 28, 28), dtype=np.float32))
    code, text = invoke(
        "optimize",
        DEMO,
        "-o",
        tmp_path / "b.onnx",
        "--method",
        "tucker",
        "--ratio",
        "1.1",
        "--inputs",
        inputs,
        "--json",
    )
    assert code == 0, text
    assert not any("says little about real inputs" in w for w in json.loads(text)["warnings"])


def test_optimize_table_and_input_untouched(tmp_path):
    before = DEMO.read_bytes()
    code, text = invoke("optimize", DEMO, "-o", tmp_path / "o.onnx", "--method", "svd", "--rank", "4")
    assert code == 0, text
    assert "parameters" in text and "rel. error" in text and "rewritten layers" in text
    assert DEMO.read_bytes() == before


def test_verify_max_error_gates_a_ci_job(tmp_path):
    """`verify --max-error E` exits 1 with one line when the error is above E, 0 when within."""
    small = tmp_path / "small.onnx"
    assert invoke("optimize", DEMO, "-o", small, "--method", "tucker", "--ratio", "4")[0] == 0
    code, text = invoke("verify", DEMO, small, "--json")
    error = json.loads(text)["max_relative_error"]
    code, text = invoke("verify", DEMO, small, "--max-error", f"{error / 2:g}")
    assert code == 1 and text.strip().splitlines()[-1].startswith("error: verification failed:"), text
    assert f"is above --max-error {error / 2:g}" in text
    assert invoke("verify", DEMO, small, "--max-error", f"{error * 2:g}")[0] == 0


def test_an_array_that_is_no_input_is_named_not_silently_dropped(tmp_path):
    inputs = tmp_path / "xy.npz"
    x = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
    np.savez(inputs, input=x, y=np.zeros(4, np.int64))
    code, text = invoke("verify", DEMO, DEMO, "--inputs", inputs)
    assert code == 0, text
    assert "array(s) y are not inputs of the model (input); ignored" in text


def test_inspect_lists_methods():
    code, text = invoke("inspect", DEMO, "--json")
    assert code == 0, text
    info = json.loads(text)
    assert info["layers"] and all("methods" in row for row in info["layers"])
    conv = next(r for r in info["layers"] if r["op"] == "Conv")
    assert conv["methods"]["tucker"] == "yes" and conv["methods"]["svd"] != "yes"
    code, text = invoke("inspect", DEMO)
    assert code == 0 and "weight-heavy layers" in text


def test_verify_two_models(tmp_path):
    out = tmp_path / "o.onnx"
    assert invoke("optimize", DEMO, "-o", out, "--method", "tucker", "--rank", "1000", "--force")[0] == 0
    code, text = invoke("verify", DEMO, out, "--json")
    assert code == 0, text
    assert json.loads(text)["max_relative_error"] < 1e-4


@pytest.mark.parametrize("kind", ["missing", "folder", "text", "truncated", "empty", "opset"])
def test_bad_input_files(tmp_path, kind):
    path = tmp_path / "model.onnx"
    if kind == "folder":
        path.mkdir()
    elif kind == "text":
        path.write_text("hello, I am not a model\n" * 20)
    elif kind == "truncated":
        path.write_bytes(DEMO.read_bytes()[: DEMO.stat().st_size // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "opset":
        model = onnx.load(DEMO)
        model.opset_import[0].version = 99
        onnx.save(model, path)
    out = tmp_path / "out.onnx"
    code, text = invoke("optimize", path, "-o", out)
    assert_user_error(code, text, str(path.name))
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_output_equal_to_input_is_refused(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(DEMO.read_bytes())
    code, text = invoke("optimize", path, "-o", path)
    assert_user_error(code, text, "never overwrites its input")
    assert path.read_bytes() == DEMO.read_bytes()


def test_impossible_ratio_says_what_it_could_reach(tmp_path):
    code, text = invoke("optimize", DEMO, "-o", tmp_path / "o.onnx", "--method", "tucker", "--ratio", "1000")
    assert_user_error(code, text, "at most")
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--rank", "3", "--energy", "0.9"], "choose one of"),
        (["--energy", "1.5"], "--energy"),
        (["--ratio", "0.5"], "--ratio"),
        (["--shape", "nope"], "--shape"),
        (["--shape", "other:1,2"], "unknown input"),
        (["--inputs", "missing.npz"], "--inputs"),
    ],
)
def test_bad_options(tmp_path, args, expected):
    code, text = invoke("optimize", DEMO, "-o", tmp_path / "o.onnx", *args)
    assert_user_error(code, text, expected)
    assert not (tmp_path / "o.onnx").exists()


def _save(model, path):
    onnx.save(model, path)
    return path


def _conv_node(name, x, w, y):
    return helper.make_node("Conv", [x, w], [y], name=name, pads=[1, 1, 1, 1])


def test_untouchable_nodes_are_listed_and_model_stays_valid(tmp_path):
    """Quantized weights, a Conv inside If, a non-constant weight and NaN weights are skipped with reasons."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    w_nan = w.copy()
    w_nan[0, 0, 0, 0] = np.nan
    inits = [
        numpy_helper.from_array(w, "W"),
        numpy_helper.from_array(w_nan, "Wnan"),
        numpy_helper.from_array((w * 10).astype(np.int8), "Wq"),
        numpy_helper.from_array(np.array(0.1, np.float32), "scale"),
        numpy_helper.from_array(np.array(0, np.int8), "zp"),
        numpy_helper.from_array(np.array(True), "cond"),
    ]
    inits.append(numpy_helper.from_array(w.copy(), "Wif"))  # its own weight: a shared one keeps "good" whole
    then_graph = helper.make_graph(
        [_conv_node("conv_in_if", "x", "Wif", "t")],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)],
    )
    else_graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["e"], name="id")],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)],
    )
    nodes = [
        _conv_node("good", "x", "W", "a"),
        helper.make_node("DequantizeLinear", ["Wq", "scale", "zp"], ["Wdq"], name="dq"),
        _conv_node("quantized", "x", "Wdq", "b"),
        _conv_node("dynamic_weight", "x", "w_input", "c"),
        _conv_node("nan_weights", "x", "Wnan", "d"),
        helper.make_node("If", ["cond"], ["f"], name="branch", then_branch=then_graph, else_branch=else_graph),
        helper.make_node("Sum", ["a", "b", "c", "f"], ["y"], name="sum"),
        helper.make_node("Identity", ["d"], ["y2"], name="keep_nan"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6]),
            helper.make_tensor_value_info("w_input", TensorProto.FLOAT, [8, 4, 3, 3]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("y2", TensorProto.FLOAT, None),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = _save(model, tmp_path / "mixed.onnx")
    out = tmp_path / "out.onnx"
    code, text = invoke("optimize", path, "-o", out, "--method", "tucker", "--rank", "2", "--json", "--no-verify")
    assert code == 0, text
    report = json.loads(text)
    reasons = {s["node"]: s["reason"] for s in report["skipped"]}
    assert "DequantizeLinear" in reasons["quantized"]
    assert "not a constant" in reasons["dynamic_weight"]
    assert "NaN" in reasons["nan_weights"]
    assert "subgraph" in reasons["conv_in_if"]
    assert [layer["node"] for layer in report["layers"]] == ["good"]
    rewritten = onnx.load(out)
    onnx.checker.check_model(rewritten)
    feeds = {"x": rng.standard_normal((1, 4, 6, 6)).astype(np.float32), "w_input": w}
    assert run(rewritten, feeds)[0].shape == run(model, feeds)[0].shape


def test_integer_inputs_need_real_inputs(tmp_path):
    emb = numpy_helper.from_array(np.random.default_rng(0).standard_normal((50, 16)).astype(np.float32), "E")
    w = numpy_helper.from_array(np.random.default_rng(1).standard_normal((16, 16)).astype(np.float32), "W")
    nodes = [
        helper.make_node("Gather", ["E", "ids"], ["h"], name="embed"),
        helper.make_node("MatMul", ["h", "W"], ["y"], name="proj"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "T"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "T", 16])],
        [emb, w],
    )
    path = _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "ids.onnx")
    out = tmp_path / "o.onnx"
    code, text = invoke("optimize", path, "-o", out, "--method", "svd", "--rank", "4")
    assert_user_error(code, text, "--inputs")
    np.savez(tmp_path / "ids.npz", ids=np.array([[1, 2, 3], [4, 5, 49]], dtype=np.int64))
    code, text = invoke(
        "optimize", path, "-o", out, "--method", "svd", "--rank", "4", "--inputs", tmp_path / "ids.npz", "--json"
    )
    assert code == 0, text
    assert json.loads(text)["verification"]["inputs"].endswith("ids.npz")


def test_conv_model_roundtrip_with_grouped_conv(tmp_path):
    model, feeds = conv_model(np.random.default_rng(0).standard_normal((8, 3, 3, 3)), bias=True, groups=2)
    path = _save(model, tmp_path / "g.onnx")
    code, text = invoke("optimize", path, "-o", tmp_path / "o.onnx", "--method", "cp", "--rank", "2", "--json")
    assert code == 0, text
    report = json.loads(text)
    assert "grouped" in report["skipped"][0]["reason"]
    code, text = invoke(
        "optimize", path, "-o", tmp_path / "o.onnx", "--method", "tucker", "--rank", "100", "--force", "--json"
    )
    assert code == 0, text
    assert json.loads(text)["verification"]["max_relative_error"] < 1e-4


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--hardware-aware", "--speedup", "0"], "--speedup"),
        (["--hardware-aware", "--max-error", "-1"], "--max-error"),
        (["--hardware-aware", "--speedup", "2", "--target-latency", "1"], "choose one of"),
        (["--hardware-aware", "--device", "rx590"], "unknown device"),
        (["--hardware-aware", "--provider", "cuda"], "onnxruntime-gpu"),
    ],
)
def test_hardware_aware_bad_options(tmp_path, args, expected):
    code, text = invoke("optimize", DEMO, "-o", tmp_path / "o.onnx", *args)
    assert_user_error(code, text, expected)
    assert not (tmp_path / "o.onnx").exists()


def test_a_device_or_fifo_output_is_refused(tmp_path):
    import os

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    code, text = invoke("optimize", DEMO, "-o", fifo, "--rank", "2")
    assert_user_error(code, text, "not a regular file")
    assert fifo.exists() and not fifo.is_file()
    code, text = invoke("optimize", DEMO, "-o", "/dev/null", "--rank", "2")
    assert_user_error(code, text, "not a regular file")
    assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")


def test_inspect_warns_when_a_dynamic_dim_was_taken_as_64(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [w],
    )
    path = tmp_path / "dyn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    code, text = invoke("inspect", path, "--json")
    assert code == 0, text
    assert "FLOPs counted at 64" in json.loads(text)["warnings"][0]
    code, text = invoke("inspect", path, "--shape", "x:1,3,488,488", "--json")
    assert json.loads(text)["warnings"] == []
    # calibration samples give the size: FLOPs counted there, as optimize counts them
    np.savez(tmp_path / "cal.npz", x=np.random.default_rng(0).random((4, 3, 48, 192), dtype=np.float32))
    code, text = invoke("inspect", path, "--calibration", tmp_path / "cal.npz", "--json")
    assert code == 0, text
    info = json.loads(text[text.index("{") :])
    assert info["warnings"] == [] and info["inputs"] == {"x": [1, 3, 48, 192]}
    assert info["flops"] == 2 * 4 * 27 * 46 * 190


def test_the_demo_ships_real_calibration_images():
    from tensorfold.demo import demo_samples

    x = demo_samples()
    assert x.shape == (64, 1, 28, 28) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.std() > 0.1  # real images with contrast, not blank arrays
