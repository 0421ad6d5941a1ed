"""At full rank every exact method reproduces the layer in onnxruntime to float tolerance."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.passes.single_node import conv_model, gemm_model, matmul_model, output_error, rewrite

TOL = 2e-4
FULL = 10_000
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def conv_cases(draw, max_groups=3):
    groups = draw(st.integers(1, max_groups))
    o = groups * draw(st.integers(1, 4))
    i_g = draw(st.integers(2, 4))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    strides = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    dilations = [draw(st.integers(1, 2)), draw(st.integers(1, 2))]
    pads = [draw(st.integers(0, 2)) for _ in range(4)]
    bias = draw(st.booleans())
    auto_pad = draw(st.sampled_from([None, None, None, "SAME_UPPER", "SAME_LOWER", "VALID"]))
    if auto_pad and auto_pad.startswith("SAME"):
        dilations = [1, 1]  # onnxruntime rejects dilation with SAME padding
    weight = np.random.default_rng(draw(st.integers(0, 1000))).standard_normal((o, i_g, kh, kw))
    return dict(
        weight=weight,
        bias=bias,
        groups=groups,
        strides=strides,
        pads=pads,
        dilations=dilations,
        auto_pad=auto_pad,
        spatial=(9 + draw(st.integers(0, 3)), 9),
    )


def _assert_exact(case, method):
    model, feeds = conv_model(**case)
    result = rewrite(model, method, rank=FULL)
    assert result.modified, result.skipped
    assert output_error(model, result.model, feeds) < TOL


@SETTINGS
@given(conv_cases())
def test_tucker_full_rank_any_conv(case):
    _assert_exact(case, "tucker")


@SETTINGS
@given(conv_cases())
def test_tt_full_rank_conv(case):
    """Grouped convs too: one TT per group at shared bond ranks, every conv of the chain grouped."""
    _assert_exact(case, "tt")


@SETTINGS
@given(conv_cases())
def test_svd_full_rank_pointwise_conv(case):
    case["weight"] = case["weight"][:, :, :1, :1]
    _assert_exact(case, "svd")


@SETTINGS
@given(conv_cases(max_groups=1), st.integers(1, 4))
def test_cp_chain_exact_for_exact_factors(case, rank):
    """With the true CP factors of a kernel, the emitted chain (split strides/pads/dilations)
    reproduces the conv. ALS convergence itself is tested in tests/decompose."""
    from unittest import mock

    from tensorfold.decompose.cp import CP

    o, i, kh, kw = case["weight"].shape
    if kh * kw == 1:
        kh = 2  # a 1x1 kernel goes to the SVD, tested above
    rng = np.random.default_rng(rank)
    factors = [rng.standard_normal((d, rank)) for d in (o, i, kh, kw)]
    case["weight"] = np.einsum("ar,br,cr,dr->abcd", *factors)
    model, feeds = conv_model(**case)
    with mock.patch("tensorfold.passes.cp.cp_als", return_value=CP(factors, 0.0, 0, 0)):
        result = rewrite(model, "cp", rank=rank)
    assert result.modified
    assert [n.op_type for n in result.model.graph.node] == ["Conv"] * 4
    assert output_error(model, result.model, feeds) < TOL


@pytest.mark.parametrize("method", ["tucker", "tt"])
def test_conv1d_and_conv3d(method):
    rng = np.random.default_rng(0)
    for weight, spatial in ((rng.standard_normal((6, 4, 3)), (11,)), (rng.standard_normal((4, 3, 3, 1, 2)), (5, 6, 7))):
        model, feeds = conv_model(weight, bias=True, spatial=spatial, pads=[1] * (2 * (weight.ndim - 2)))
        result = rewrite(model, method, rank=FULL)
        assert result.modified
        assert output_error(model, result.model, feeds) < TOL


@SETTINGS
@given(
    st.integers(1, 12),
    st.integers(1, 12),
    st.integers(0, 1),
    st.integers(0, 1),
    st.sampled_from([1.0, 0.5]),
    st.sampled_from([1.0, 2.0]),
    st.sampled_from([None, "vector", "matrix"]),
    st.sampled_from(["svd", "tt", "tucker"]),
)
def test_gemm_full_rank(k, n, trans_a, trans_b, alpha, beta, bias, method):
    model, feeds = gemm_model(k, n, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta, bias=bias)
    result = rewrite(model, method, rank=FULL)
    assert result.modified
    assert output_error(model, result.model, feeds) < TOL


@pytest.mark.parametrize("lead", [(4,), (2, 5), (2, 3, 4)])
@pytest.mark.parametrize("method", ["svd", "tt"])
@pytest.mark.parametrize("k,n", [(12, 8), (64, 30), (7, 16)])
def test_matmul_batched_full_rank(lead, method, k, n):
    model, feeds = matmul_model(k, n, lead=lead)
    result = rewrite(model, method, rank=FULL)
    assert result.modified
    assert output_error(model, result.model, feeds) < TOL
