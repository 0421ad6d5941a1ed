"""Warm starts: every method's factor chain folds back into the dense layer it computes, over
strides, padding, dilation and groups (the chain and the folded layer give the same outputs), and
weights recovery trained elsewhere travel with it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given

from tensorfold.optimize.warm_start import chains, dense_equivalent, fold
from tensorfold.passes.layers import find_layers
from tests.passes.single_node import conv_model, gemm_model, matmul_model, output_error, rewrite
from tests.passes.test_full_rank import SETTINGS, conv_cases

TOL = 2e-4


def _folds_exactly(model, feeds, method, **spec):
    result = rewrite(model, method, **spec)
    assert result.modified, result.skipped
    weights = {t.name: t for t in result.model.graph.initializer}
    layers = {layer.name: layer for layer in find_layers(model)[0]}
    assert all(fold(layers[name], nodes, weights) is not None for name, nodes in chains(result.model).items())
    dense = dense_equivalent(result.model, model)
    assert len(dense.graph.node) == len(model.graph.node)  # the template's graph, new weights
    assert output_error(result.model, dense, feeds) < TOL


@SETTINGS
@given(conv_cases())
def test_tucker_and_svd_chains_fold_back_over_conv_geometry(case):
    model, feeds = conv_model(**case)
    _folds_exactly(model, feeds, "tucker", rank=2)
    pointwise, _ = conv_model(**{**case, "weight": case["weight"][:, :, :1, :1]})
    _folds_exactly(pointwise, feeds, "svd", rank=2)  # svd rewrites 1x1 convs


@SETTINGS
@given(conv_cases(max_groups=1))
def test_cp_and_tt_chains_fold_back(case):
    model, feeds = conv_model(**case)
    _folds_exactly(model, feeds, "cp", rank=3)
    _folds_exactly(model, feeds, "tt", rank=2)


@pytest.mark.parametrize("trans_b, alpha, beta", [(0, 1.0, 1.0), (1, 0.5, 2.0)])
@pytest.mark.parametrize("method", ["svd", "tt"])
def test_gemm_chains_fold_back(trans_b, alpha, beta, method):
    model, feeds = gemm_model(24, 16, trans_b=trans_b, alpha=alpha, beta=beta)
    _folds_exactly(model, feeds, method, rank=3)


@pytest.mark.parametrize("method", ["svd", "tt"])
def test_matmul_chains_on_token_sequences_fold_back(method):
    model, feeds = matmul_model(24, 16, lead=(2, 5))
    _folds_exactly(model, feeds, method, rank=3)


def test_trained_weights_outside_chains_travel_and_the_template_is_untouched():
    model, feeds = gemm_model(12, 8, bias="vector")
    before = model.SerializeToString()
    result = rewrite(model, "svd", rank=2)
    for tensor in result.model.graph.initializer:  # a "trained" bias: the chain's last factor reads C
        if tensor.name == "C":
            tensor.raw_data = (np.frombuffer(tensor.raw_data, np.float32) + 1).astype(np.float32).tobytes()
    dense = dense_equivalent(result.model, model)
    assert output_error(result.model, dense, feeds) < TOL
    assert model.SerializeToString() == before
