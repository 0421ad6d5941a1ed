"""Spelled-out LayerNorms and GELUs run fused in the trainer: same outputs and gradients as the
graph's own ops, fewer bytes saved for backward, and never fused where another node reads inside."""

from __future__ import annotations

import math
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from tensorfold.onnxrt.sessions import make_session
from tensorfold.recovery.fusion import FUSED_GELU, FUSED_LAYER_NORM
from tensorfold.recovery.memory import saved_bytes_per_sample
from tensorfold.recovery.onnx_torch import OnnxModule
from tests.fixtures import torch_models

D = 8


def _const(name, value):
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def _model(nodes, inits, opset=13, outputs=("y",)):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, D])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _layer_norm(opset=13, square="Pow", affine=True, mean_also_out=False, axes=(-1,)):
    """x @ W, then LayerNorm spelled out as torch < opset 17 exports it, then @ W2."""
    rng = np.random.default_rng(0)
    inits = [
        _const("W", rng.standard_normal((D, D))),
        _const("W2", rng.standard_normal((D, D))),
        _const("two", 2.0),
        _const("eps", 1e-5),
        _const("gamma", rng.uniform(0.5, 1.5, D)),
        _const("beta", rng.standard_normal(D)),
    ]

    def reduce(x, out):
        if opset >= 18:
            return helper.make_node("ReduceMean", [x, "axes"], [out])
        return helper.make_node("ReduceMean", [x], [out], axes=list(axes))

    if opset >= 18:
        inits.append(numpy_helper.from_array(np.asarray(axes, dtype=np.int64), "axes"))
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"]),
        reduce("h", "mu"),
        helper.make_node("Sub", ["h", "mu"], ["d"]),
        helper.make_node("Pow", ["d", "two"], ["sq"])
        if square == "Pow"
        else helper.make_node("Mul", ["d", "d"], ["sq"]),
        reduce("sq", "var"),
        helper.make_node("Add", ["var", "eps"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["sd"]),
        helper.make_node("Div", ["d", "sd"], ["n"]),
    ]
    last = "n"
    if affine:
        nodes += [helper.make_node("Mul", ["n", "gamma"], ["s"]), helper.make_node("Add", ["s", "beta"], ["a"])]
        last = "a"
    nodes.append(helper.make_node("MatMul", [last, "W2"], ["y"]))
    return _model(nodes, inits, opset, ("y", "mu") if mean_also_out else ("y",))


def _gelu(order="torch", inner="Div"):
    """x @ W, then the erf GELU in one of the orders exporters write it, then @ W2."""
    rng = np.random.default_rng(1)
    inits = [
        _const("W", rng.standard_normal((D, D))),
        _const("W2", rng.standard_normal((D, D))),
        _const("c", math.sqrt(2) if inner == "Div" else 1 / math.sqrt(2)),
        _const("one", 1.0),
        _const("half", 0.5),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"]),
        helper.make_node(inner, ["h", "c"], ["a"]),
        helper.make_node("Erf", ["a"], ["e"]),
        helper.make_node("Add", ["one", "e"], ["p"]),
    ]
    if order == "torch":  # (x * (1 + erf)) * 0.5
        nodes += [helper.make_node("Mul", ["h", "p"], ["m"]), helper.make_node("Mul", ["m", "half"], ["g"])]
    elif order == "half-first":  # (x * 0.5) * (1 + erf): BERT's
        nodes += [helper.make_node("Mul", ["h", "half"], ["m"]), helper.make_node("Mul", ["m", "p"], ["g"])]
    else:  # x * ((1 + erf) * 0.5)
        nodes += [helper.make_node("Mul", ["half", "p"], ["m"]), helper.make_node("Mul", ["h", "m"], ["g"])]
    nodes.append(helper.make_node("MatMul", ["g", "W2"], ["y"]))
    return _model(nodes, inits)


def _gradients(module: OnnxModule, x: torch.Tensor, capture=()):
    module.zero_grad()
    result = module(x, capture=capture)
    outputs, feats = result if capture else (result, {})
    (sum((o**2).mean() for o in outputs) + sum(f.abs().mean() for f in feats.values())).backward()
    return [o.detach() for o in outputs], {k: p.grad.clone() for k, p in module.params.items() if p.grad is not None}


def _check_exact(model: onnx.ModelProto, expect: list[str], shape=(4, 3, D)):
    """The fused ops are `expect`; the module gives onnxruntime's outputs and, fused or not, the
    same gradients."""
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing may fall back to onnxruntime
        module = OnnxModule(model)
    assert module.fused_ops == expect
    want = make_session(model).run(None, {"x": x})
    got, grads = _gradients(module, torch.from_numpy(x))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w, rtol=1e-4, atol=1e-5)
    as_written = OnnxModule(model, fused=False)
    assert as_written.fused_ops == []
    _, plain = _gradients(as_written, torch.from_numpy(x))
    assert grads.keys() == plain.keys() and grads
    for k in grads:
        torch.testing.assert_close(grads[k], plain[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("square", ["Pow", "Mul"])
@pytest.mark.parametrize("affine", [True, False])
def test_spelled_out_layer_norm_runs_as_one_op(opset, square, affine):
    _check_exact(_layer_norm(opset, square, affine), [FUSED_LAYER_NORM])


def test_layer_norm_over_other_axes_is_fused_and_exact():
    _check_exact(_layer_norm(axes=(1,)), [FUSED_LAYER_NORM])
    _check_exact(_layer_norm(axes=(1, 2)), [FUSED_LAYER_NORM])


@pytest.mark.parametrize("order", ["torch", "half-first", "half-last"])
@pytest.mark.parametrize("inner", ["Div", "Mul"])
def test_erf_gelu_runs_as_one_op(order, inner):
    _check_exact(_gelu(order, inner), [FUSED_GELU])


def test_a_pattern_whose_inside_is_read_elsewhere_is_left_op_by_op():
    """The mean is also a graph output: fusing would lose it."""
    _check_exact(_layer_norm(mean_also_out=True), [])


def test_a_different_constant_is_not_a_gelu():
    model = _gelu()
    for t in model.graph.initializer:
        if t.name == "half":
            t.CopyFrom(_const("half", 0.4))
    _check_exact(model, [])


def test_capturing_a_value_inside_a_fused_pattern_runs_the_graph_as_written():
    model = _layer_norm()
    module = OnnxModule(model)
    x = torch.from_numpy(np.random.default_rng(3).standard_normal((2, 3, D)).astype(np.float32))
    outputs, feats = module(x, capture=("sd", "h"))
    assert set(feats) == {"sd", "h"}
    d = feats["h"] - feats["h"].mean(-1, keepdim=True)
    torch.testing.assert_close(feats["sd"], torch.sqrt((d * d).mean(-1, keepdim=True) + 1e-5))
    _, fused = module(x, capture=("h",))
    torch.testing.assert_close(fused["h"], feats["h"])


def test_a_transformer_exported_before_opset_17_saves_less_for_backward(tmp_path):
    """torch's own export of a LayerNorm + GELU block at opset 14: both fused, outputs and gradients
    unchanged, and autograd keeps fewer bytes a sample."""
    block, example = torch_models.build_transformer_block()
    path = tmp_path / "block14.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            block.eval(),
            (example,),
            str(path),
            dynamo=False,
            opset_version=14,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
        )
    model = onnx.load(path)
    _check_exact(model, [FUSED_LAYER_NORM, FUSED_LAYER_NORM, FUSED_GELU], shape=(3, 16, 64))
    x = (torch.randn(4, 16, 64),)
    _, fused = saved_bytes_per_sample(OnnxModule(model), x)
    _, plain = saved_bytes_per_sample(OnnxModule(model, fused=False), x)
    assert fused < 0.85 * plain
