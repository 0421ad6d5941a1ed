"""quantize/smooth.py: activation smoothing is exact in float and lets dynamic int8 hold outlier channels."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from tensorfold.graph.verify import Reference
from tensorfold.quantize.formats import Int8Format
from tensorfold.quantize.smooth import activation_maxima, smooth, smoothable_groups
from tensorfold.quantize.within_bound import quantize_within

RNG = np.random.default_rng(0)


def _block() -> onnx.ModelProto:
    """A LayerNorm whose gains make two outlier channels (as a transformer's do), read by three
    MatMuls (Q, K, V); their sum through a Gemm with transB; a weight read twice, left alone."""
    gamma = np.ones(32, np.float32)
    gamma[[3, 7]] = [40.0, 25.0]
    init = [
        numpy_helper.from_array(gamma, "gamma"),
        numpy_helper.from_array(np.zeros(32, np.float32), "beta"),
        *(numpy_helper.from_array(RNG.standard_normal((32, 48)).astype(np.float32) * 0.2, f"w{i}") for i in range(3)),
        numpy_helper.from_array(RNG.standard_normal((8, 48)).astype(np.float32) * 0.2, "wt"),  # (N, K): transB
        numpy_helper.from_array(RNG.standard_normal((8, 8)).astype(np.float32), "shared"),
    ]
    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["ln"], name="ln", axis=-1),
        *(helper.make_node("MatMul", ["ln", f"w{i}"], [f"h{i}"], name=f"mm{i}") for i in range(3)),
        helper.make_node("Sum", ["h0", "h1", "h2"], ["h"], name="sum"),
        helper.make_node("Reshape", ["h", "flat"], ["h2d"], name="flatten"),
        helper.make_node("Gemm", ["h2d", "wt"], ["g"], name="gemm", transB=1),
        helper.make_node("MatMul", ["g", "shared"], ["s1"], name="shared1"),
        helper.make_node("MatMul", ["s1", "shared"], ["y"], name="shared2"),
    ]
    init.append(numpy_helper.from_array(np.array([-1, 48], np.int64), "flat"))
    graph = helper.make_graph(
        nodes,
        "block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", 8])],
        init,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_groups_are_the_readers_of_one_activation_and_a_shared_weight_is_left_alone():
    groups = {g.activation: g for g in smoothable_groups(_block())}
    assert set(groups) == {"ln", "h2d"}
    assert groups["ln"].nodes == ("mm0", "mm1", "mm2") and groups["ln"].axes == (0, 0, 0)
    assert groups["h2d"].nodes == ("gemm",) and groups["h2d"].axes == (1,)


def test_smoothing_is_exact_in_float_at_every_alpha():
    model = _block()
    x = RNG.standard_normal((4, 16, 32)).astype(np.float32)
    groups = smoothable_groups(model)
    maxima = activation_maxima(model, [{"x": x}], [g.activation for g in groups])
    assert maxima["ln"].shape == (32,) and maxima["ln"][3] > 10 * np.median(maxima["ln"])
    before = _run(model, x)
    for alpha in (0.5, 0.9):
        smoothed = smooth(model, groups, maxima, alpha)
        onnx.checker.check_model(smoothed, full_check=True)
        after = _run(smoothed, x)
        assert np.linalg.norm(after - before) <= 1e-5 * np.linalg.norm(before)
    assert {t.name for t in model.graph.initializer} == {t.name for t in _block().graph.initializer}  # not changed


def test_dynamic_int8_over_the_bound_is_smoothed_and_says_so():
    model = _block()
    fit = {"x": RNG.standard_normal((16, 16, 32)).astype(np.float32)}
    held = {"x": RNG.standard_normal((16, 16, 32)).astype(np.float32)}
    reference = Reference(model, held, "held-out")
    fmt = Int8Format("test", "uint8")
    results = quantize_within(model, fit, reference, 0.03, fmt, progress=False)
    dynamic = next(r for r in results if r.kind == "dynamic")
    note = next(n for n in dynamic.notes if n.startswith("activations smoothed before dynamic int8"))
    plain, smoothed = (float(v) for v in note.rsplit("error ", 1)[1].split(" -> "))
    assert smoothed < 0.03 < plain  # every node in int8 within the bound only once smoothed
    assert dynamic.model is not None and not dynamic.float_nodes
    assert any(n.name.endswith("_smoothed_mul") for n in dynamic.model.graph.node)
    assert dynamic.verification is not None and dynamic.verification.within(0.03)
