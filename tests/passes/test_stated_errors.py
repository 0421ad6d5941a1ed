"""Where a data-fitted factorization states its output error at build time (the loop then skips
measuring it), the statement is exact: it equals the error measured on the calibration statistics.
Over every registered method, on a matrix, a kxk conv and a grouped kxk conv."""

from __future__ import annotations

import numpy as np
import pytest

from tensorfold.decompose.data_aware import InputGram
from tensorfold.passes import METHODS, PassContext, get_pass
from tensorfold.passes.base import Choice
from tensorfold.passes.factorize import FactorizePass, layer_output_error2, layer_rows
from tensorfold.passes.layers import find_layers
from tests.passes.single_node import conv_model, gemm_model


def _with_statistics(model):
    layer = find_layers(model)[0][0]
    dim = layer_rows(layer, layer.weight)[0].shape[1]
    rng = np.random.default_rng(0)  # each group's inputs its own
    xs = [
        rng.standard_normal((600, dim)) @ np.diag(np.geomspace(1, 0.1 * (g + 1), dim)) + 0.3
        for g in range(layer.groups)
    ]
    layer.gram = InputGram(np.stack([x.T @ x for x in xs]), 600)
    return layer


@pytest.mark.parametrize("method", [m for m in METHODS if m != "auto"])
@pytest.mark.parametrize("kind", ["gemm", "conv", "grouped conv"])
def test_a_stated_output_error_is_the_measured_one(method, kind):
    weight = np.random.default_rng(1).standard_normal((12, 8 if kind == "conv" else 4, 3, 3))
    model = (
        gemm_model(24, 16, trans_b=1)[0]
        if kind == "gemm"
        else conv_model(weight, bias=False, groups=1 if kind == "conv" else 3)[0]
    )
    layer = _with_statistics(model)
    pass_ = get_pass(method)
    assert isinstance(pass_, FactorizePass)
    if pass_.supports(layer) is not None:  # e.g. svd on a kxk conv: nothing to state, and it says why
        assert pass_.supports(layer)
        return
    stated = 0
    for cand in pass_.candidates(layer)[::7]:
        built = pass_.build(layer, Choice(cand.method, cand.ranks), PassContext(progress=False))
        if built.output_error2 is not None:
            stated += 1
            assert built.output_error2 == pytest.approx(layer_output_error2(layer, built.reconstruct()), abs=1e-6)
    if method == "svd" or (kind == "gemm" and method in ("tucker", "cp")):
        assert stated  # the whitened SVD states its error
    if method == "tt" and kind != "gemm":
        assert stated  # a TT-conv's refitted last core states it, per group pooled
