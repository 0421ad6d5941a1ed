"""Third-party graph shapes: dynamic image sizes timed where the user runs them, integer inputs
and outputs (token ids in, ArgMax out) profiled, predicted and verified by agreement."""

from __future__ import annotations

import json

import numpy as np
import onnx
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from tensorfold.cli import main


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def dynamic_conv(path):
    """A conv net over images of any size: (N, 3, H, W)."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((16, 3, 3, 3)).astype(np.float32), "W")
    nodes = [helper.make_node("Conv", ["x", "W"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 16, "h", "w"])],
        [w],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


def token_tagger(path):
    """int64 token ids -> embedding (Gather) -> MatMul -> int64 ArgMax tags, ALBERT-tagger style."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((50, 32)).astype(np.float32), "emb"),
        numpy_helper.from_array(rng.standard_normal((32, 48)).astype(np.float32), "W"),
    ]
    nodes = [
        helper.make_node("Gather", ["emb", "ids"], ["e"], name="embed"),
        helper.make_node("MatMul", ["e", "W"], ["logits"], name="proj"),
        helper.make_node("ArgMax", ["logits"], ["tags"], name="argmax", axis=-1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, "seq"])],
        [helper.make_tensor_value_info("tags", TensorProto.INT64, [1, "seq"])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


def test_a_dynamic_model_is_timed_at_the_shape_given_and_warned_about_otherwise(tmp_path):
    model = dynamic_conv(tmp_path / "d.onnx")
    code, text = invoke("profile", model, "--runs", "3", "--warmup", "1", "--json")
    assert code == 0, text
    info = json.loads(text[text.index("{") :])
    assert info["input_shapes"] == {"x": [1, 3, 64, 64]} and "dynamic dims" in info["warnings"][0]
    code, text = invoke("profile", model, "--runs", "3", "--warmup", "1", "--shape", "x:1,3,96,128", "--json")
    info = json.loads(text[text.index("{") :])
    assert info["input_shapes"] == {"x": [1, 3, 96, 128]} and not info["warnings"]
    assert info["flops"] == 2 * 16 * 27 * 96 * 128
    np.savez(tmp_path / "in.npz", x=np.zeros((4, 3, 40, 50), np.float32))
    code, text = invoke("profile", model, "--runs", "3", "--warmup", "1", "--inputs", tmp_path / "in.npz")
    assert code == 0, text
    assert "input shapes x [1, 3, 40, 50]" in text and "timed as they are" in text


def test_integer_inputs_and_outputs(tmp_path):
    model = token_tagger(tmp_path / "t.onnx")
    ids = np.random.default_rng(1).integers(0, 50, (6, 12)).astype(np.int64)  # 6 samples, batch 1 each
    np.savez(tmp_path / "ids.npz", ids=ids)
    # random values are meaningless for token ids: profile says how to give real ones, and takes them
    code, text = invoke("profile", model)
    assert code == 2 and "--inputs" in text
    code, text = invoke("profile", model, "--inputs", tmp_path / "ids.npz", "--runs", "3", "--warmup", "1")
    assert code == 0, text
    code, text = invoke("profile", model, "--device", "rx580", "--shape", "ids:1,12")
    assert code == 0, text
    # a strong cut changes tags: the summary reads the disagreement, not a relative error of 0
    out = tmp_path / "small.onnx"
    code, text = invoke(
        "optimize", model, "-o", out, "--method", "svd", "--rank", "1", "--inputs", tmp_path / "ids.npz", "--json"
    )
    assert code == 0, text
    verification = json.loads(text)["verification"]
    tags = next(o for o in verification["outputs"] if o["name"] == "tags")
    assert tags["kind"] == "integer" and tags["agreement"] < 1
    assert verification["max_error"] == 1 - tags["agreement"] > 0


def test_profile_counts_weights_held_by_constant_nodes_and_names_the_batches_it_times(tmp_path):
    """PaddlePaddle exports keep weights in Constant nodes: the per-node table counted 0 params for
    them (the header did count them); with --batch the header said batch 1 only."""
    w = np.random.default_rng(0).normal(size=(8, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(w, "w")),
            helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 8, 16, 16])],
    )
    path = tmp_path / "const.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    code, text = invoke("profile", path, "--runs", "2", "--warmup", "0", "--batch", "2", "--batch", "4", "--json")
    assert code == 0, text
    info = json.loads(text[text.index("{") :])
    assert info["params"] == w.size and info["graph_nodes"][0]["params"] == w.size
    code, text = invoke("profile", path, "--runs", "2", "--warmup", "0", "--batch", "2", "--batch", "4")
    assert "the table times batch 2, 4" in text
