"""One-node ONNX models (Conv, Gemm, MatMul) and a helper that runs a pass and compares outputs."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tensorfold.graph.verify import compare_outputs
from tensorfold.onnxrt.sessions import make_session
from tensorfold.passes import PassContext, RankSpec, get_pass

OPSET = 17


def conv_model(
    weight: np.ndarray,
    *,
    bias: bool,
    groups: int = 1,
    strides=None,
    pads=None,
    dilations=None,
    auto_pad: str | None = None,
    spatial=(9, 9),
    batch: int = 2,
) -> tuple[onnx.ModelProto, dict]:
    o, i_g = weight.shape[:2]
    in_ch = i_g * groups
    inits = [numpy_helper.from_array(weight.astype(np.float32), "W")]
    inputs = ["x", "W"]
    if bias:
        inits.append(numpy_helper.from_array(np.linspace(-1, 1, o).astype(np.float32), "B"))
        inputs.append("B")
    attrs = {"group": groups}
    nd = weight.ndim - 2
    if strides is not None:
        attrs["strides"] = list(strides)
    if dilations is not None:
        attrs["dilations"] = list(dilations)
    if auto_pad:
        attrs["auto_pad"] = auto_pad
    elif pads is not None:
        attrs["pads"] = list(pads)
    node = helper.make_node("Conv", inputs, ["y"], name="conv", **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", in_ch, *spatial[:nd]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", o] + [None] * nd)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    rng = np.random.default_rng(1)
    return model, {"x": rng.standard_normal((batch, in_ch, *spatial[:nd])).astype(np.float32)}


def gemm_model(
    k: int,
    n: int,
    *,
    trans_a=0,
    trans_b=0,
    alpha=1.0,
    beta=1.0,
    bias: str | None = "vector",
    batch: int = 3,
    seed: int = 0,
) -> tuple[onnx.ModelProto, dict]:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "W")]
    inputs = ["x", "W"]
    if bias == "vector":
        inits.append(numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "C"))
        inputs.append("C")
    elif bias == "matrix":
        inits.append(numpy_helper.from_array(rng.standard_normal((batch, n)).astype(np.float32), "C"))
        inputs.append("C")
    node = helper.make_node("Gemm", inputs, ["y"], name="gemm", transA=trans_a, transB=trans_b, alpha=alpha, beta=beta)
    x_shape = [k, batch] if trans_a else [batch, k]
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, n])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    return model, {"x": rng.standard_normal(x_shape).astype(np.float32)}


def matmul_model(k: int, n: int, lead: tuple[int, ...] = (2, 5), seed: int = 0) -> tuple[onnx.ModelProto, dict]:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((k, n)).astype(np.float32)
    node = helper.make_node("MatMul", ["x", "W"], ["y"], name="matmul")
    dims = [f"d{i}" for i in range(len(lead))] + [k]
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims[:-1] + [n])],
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    return model, {"x": rng.standard_normal((*lead, k)).astype(np.float32)}


def run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    return make_session(model).run(None, feeds)


def rewrite(model: onnx.ModelProto, method: str, **spec):
    ctx = PassContext(spec=RankSpec(**spec), force=True, progress=False)
    return get_pass(method)(model, ctx)


def output_error(model: onnx.ModelProto, rewritten: onnx.ModelProto, feeds: dict) -> float:
    ref, got = run(model, feeds), run(rewritten, feeds)
    return compare_outputs(ref, got, ["y"])[0].relative_error
