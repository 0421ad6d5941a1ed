"""A weight read by several nodes (an audio model reusing kernels, ALBERT sharing matrices) is
factorized once; every user reads the same factors; parameters count each tensor once."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tensorfold.api import optimize
from tensorfold.graph.model import count_params
from tensorfold.passes import PassContext, RankSpec, get_pass
from tests.passes.single_node import run


def shared_model(extra_reader: bool = False) -> onnx.ModelProto:
    """x -> Conv(W) -> Relu -> Conv(W) -> flatten to (N*36, 16)... -> MatMul(M) -> Relu -> MatMul(M)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32) / 12
    m = rng.standard_normal((16, 16)).astype(np.float32) / 4
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "W"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Transpose", ["c2"], ["t"], name="nhwc", perm=[0, 2, 3, 1]),
        helper.make_node("MatMul", ["t", "M"], ["m1"], name="mm1"),
        helper.make_node("Relu", ["m1"], ["r2"], name="relu2"),
        helper.make_node("MatMul", ["r2", "M"], ["y"], name="mm2"),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 6, 6, 16])]
    if extra_reader:  # W read by a node no method rewrites
        nodes.append(helper.make_node("ReduceSum", ["W"], ["wsum"], name="wsum", keepdims=0))
        outputs.append(helper.make_tensor_value_info("wsum", TensorProto.FLOAT, []))
    graph = helper.make_graph(
        nodes,
        "shared",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16, 6, 6])],
        outputs,
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(m, "M")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


FEEDS = {"x": np.random.default_rng(1).standard_normal((2, 16, 6, 6)).astype(np.float32)}


@pytest.mark.parametrize("method", ["tucker", "svd", "auto", "tt", "cp"])
def test_a_shared_weight_is_factorized_once_and_the_model_shrinks(method, tmp_path):
    model = shared_model()
    onnx.save(model, tmp_path / "m.onnx")
    report = optimize(tmp_path / "m.onnx", tmp_path / "o.onnx", method=method, ratio=2, progress=False)
    out = onnx.load(tmp_path / "o.onnx")
    assert count_params(out) < count_params(model)
    assert report.after.params < report.before.params
    rewritten = {r.node: r for r in report.layers}
    for a, b in (("conv1", "conv2"), ("mm1", "mm2")):
        if a in rewritten:  # both users or neither, and the second adds nothing
            assert b in rewritten and rewritten[b].params_after == 0 and rewritten[b].shared_with == [a]
            assert rewritten[a].shared_with == [b]
    # the factors each chain reads are the same tensors
    readers: dict[str, set[str]] = {}
    for node in out.graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.name.split("/")[0])
    inits = {t.name for t in out.graph.initializer}
    for a, b in (("conv1", "conv2"), ("mm1", "mm2")):
        if a in rewritten:
            assert any({a, b} <= users for name, users in readers.items() if name in inits)
    # eligible parameters count W and M once (svd rewrites no 3x3 conv)
    assert report.eligible_params[0] == (0 if method == "svd" else 16 * 16 * 9) + 16 * 16


def test_full_rank_shared_factors_reproduce_the_model():
    model = shared_model()
    result = get_pass("tucker")(model, PassContext(spec=RankSpec(energy=1.0), force=True, progress=False))
    assert {r.node for r in result.rewritten} == {"conv1", "conv2", "mm1", "mm2"}
    ref, got = run(model, FEEDS)[0], run(result.model, FEEDS)[0]
    assert np.linalg.norm(ref - got) / np.linalg.norm(ref) < 1e-5


def test_a_weight_also_read_elsewhere_is_kept_whole_with_the_reason():
    result = get_pass("tucker")(shared_model(extra_reader=True), PassContext(spec=RankSpec(ratio=2), progress=False))
    assert {r.node for r in result.rewritten} == {"mm1", "mm2"}
    reasons = {s.node: s.reason for s in result.skipped}
    assert "also read by wsum" in reasons["conv1"] and "also read by wsum" in reasons["conv2"]


def test_a_shared_weight_is_rewritten_for_every_user_or_none():
    """TT at a small rank on a shared 8x8 matrix: whatever one user gets, the other gets."""
    rng = np.random.default_rng(0)
    m = rng.standard_normal((8, 8)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "M"], ["h"], name="mm1"),
        helper.make_node("MatMul", ["h", "M"], ["y"], name="mm2"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])],
        [numpy_helper.from_array(m, "M")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    for method, rank in (("tt", 3), ("svd", 3), ("svd", 2)):
        result = get_pass(method)(model, PassContext(spec=RankSpec(rank=rank), progress=False))
        assert {r.node for r in result.rewritten} in (set(), {"mm1", "mm2"})
        assert count_params(result.model) <= count_params(model)


def test_gemms_sharing_a_weight_with_different_alpha_are_kept_whole():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 64)).astype(np.float32)
    nodes = [
        helper.make_node("Gemm", ["x", "W"], ["h"], name="g1"),
        helper.make_node("Gemm", ["h", "W"], ["y"], name="g2", alpha=0.5),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 64])],
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    result = get_pass("svd")(model, PassContext(spec=RankSpec(rank=8), progress=False))
    assert not result.rewritten and "different layouts" in {s.node: s.reason for s in result.skipped}["g1"]


def test_batchnorm_is_not_folded_into_a_shared_weight(tmp_path):
    """Two convs reading one W, each with its own BatchNorm: folding would copy W."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
    bn = [
        numpy_helper.from_array(v.astype(np.float32), f"bn{i}")
        for i, v in enumerate(
            (rng.uniform(0.5, 2, 8), rng.standard_normal(8), rng.standard_normal(8), rng.uniform(0.5, 2, 8))
        )
    ]
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c1"], name="c1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn0", "bn1", "bn2", "bn3"], ["b1"], name="bn_a"),
        helper.make_node("Conv", ["b1", "W"], ["c2"], name="c2", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c2", "bn0", "bn1", "bn2", "bn3"], ["y"], name="bn_b"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 6, 6])],
        [w] and [numpy_helper.from_array(w, "W"), *bn],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), tmp_path / "m.onnx")
    report = optimize(tmp_path / "m.onnx", tmp_path / "o.onnx", method="none", progress=False)
    assert report.after.params <= report.before.params
