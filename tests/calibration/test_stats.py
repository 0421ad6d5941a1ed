"""Layer input statistics: the im2col patches reproduce the conv exactly (stride, pads, dilation,
groups, auto_pad, 1-D and 2-D), and the streamed Grams equal the Gram of all patches at once."""

import numpy as np
import pytest

from tensorfold.calibration.data import Samples
from tensorfold.calibration.stats import collect_input_grams, conv_patches
from tensorfold.onnxrt.sessions import make_session
from tensorfold.passes.layers import find_layers
from tests.passes.single_node import conv_model, gemm_model

CASES = [
    dict(shape=(6, 4, 3, 3)),
    dict(shape=(6, 4, 3, 3), strides=(2, 2), pads=(1, 0, 2, 1)),
    dict(shape=(6, 4, 3, 2), dilations=(2, 1), pads=(2, 1, 2, 1)),
    dict(shape=(8, 2, 3, 3), groups=2, strides=(1, 2)),
    dict(shape=(6, 4, 3, 3), auto_pad="SAME_UPPER", strides=(2, 2)),
    dict(shape=(6, 4, 2, 2), auto_pad="SAME_LOWER"),
    dict(shape=(5, 3, 1, 1), strides=(2, 2)),
    dict(shape=(6, 4, 5), strides=(2,), pads=(2, 1), spatial=(17,)),
]


@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
def test_patches_reproduce_the_conv(case):
    case = dict(case)
    shape = case.pop("shape")
    groups = case.get("groups", 1)
    w = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    model, feeds = conv_model(w, bias=False, **case)
    y = make_session(model).run(None, feeds)[0]
    layers, _ = find_layers(model)
    per = conv_patches(feeds["x"], w.shape, groups, layers[0].attrs)
    out_g = shape[0] // groups
    parts = [p @ wg.reshape(out_g, -1).T for p, wg in zip(per, np.split(w, groups, axis=0))]
    got = np.concatenate(parts, axis=1).reshape(y.shape[0], *y.shape[2:], shape[0])
    np.testing.assert_allclose(np.moveaxis(got, -1, 1), y, rtol=1e-4, atol=1e-4)


def test_streamed_grams_equal_one_big_gram():
    w = np.random.default_rng(1).standard_normal((6, 4, 3, 3)).astype(np.float32)
    model, _ = conv_model(w, bias=True, pads=(1, 1, 1, 1), batch=1)
    x = np.random.default_rng(2).standard_normal((11, 4, 9, 9)).astype(np.float32)
    layers, _ = find_layers(model)
    grams = collect_input_grams(model, layers, Samples({"x": x}, "test"))
    patches = conv_patches(x, w.shape, 1, layers[0].attrs)[0].astype(np.float64)
    np.testing.assert_allclose(grams["conv"].grams[0], patches.T @ patches, rtol=1e-4, atol=1e-3)
    assert grams["conv"].count == len(patches)


def test_gemm_with_trans_a_uses_the_features():
    model, feeds = gemm_model(5, 3, trans_a=1)
    layers, _ = find_layers(model)
    grams = collect_input_grams(model, layers, Samples({"x": feeds["x"]}, "test"))
    rows = feeds["x"].T.astype(np.float64)
    np.testing.assert_allclose(grams["gemm"].grams[0], rows.T @ rows, rtol=1e-5)


def test_layers_reading_one_input_share_its_gram_not_their_fits():
    """Q/K/V-style MatMuls on one tensor (and a conv of another shape beside them) get the Gram
    each would get alone, summed once; each layer keeps its own InputGram (fits are per weight)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.standard_normal((8, n)).astype(np.float32), f"W{n}") for n in (4, 5, 6)]
    nodes = [helper.make_node("MatMul", ["x", f"W{n}"], [f"y{n}"], name=f"mm{n}") for n in (4, 5, 6)]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info(f"y{n}", TensorProto.FLOAT, ["N", n]) for n in (4, 5, 6)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((7, 8)).astype(np.float32)
    layers, _ = find_layers(model)
    grams = collect_input_grams(model, layers, Samples({"x": x}, "test"))
    expect = x.astype(np.float64).T @ x.astype(np.float64)
    for name in ("mm4", "mm5", "mm6"):
        np.testing.assert_allclose(grams[name].grams[0], expect, rtol=1e-5)
        assert grams[name].count == 7
    assert grams["mm4"].grams is grams["mm6"].grams  # summed once
    assert grams["mm4"] is not grams["mm6"] and grams["mm4"].fits is not grams["mm6"].fits
