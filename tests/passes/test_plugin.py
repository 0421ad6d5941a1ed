"""A method is a plug-in: a pass registered with an `auto_role` is what `auto` considers, with no
line of auto.py naming it."""

from __future__ import annotations

import numpy as np
import pytest

from tensorfold.passes import PASSES
from tensorfold.passes.factorize import Factorization
from tensorfold.passes.svd import SVDPass, svd_build, svd_candidates
from tensorfold.passes.tucker import tucker_build, tucker_params
from tests.passes.single_node import conv_model, gemm_model, output_error, rewrite


class HalfErrorSVD(SVDPass):
    """The SVD under another name, claiming half the SVD's error: auto must prefer it."""

    name = method = "svd-half"
    order = 50

    def method_candidates(self, layer):
        return [type(c)(self.method, c.ranks, c.params, c.error2 / 2) for c in svd_candidates(layer)]

    def method_build(self, layer, ranks, ctx):
        built = svd_build(layer, ranks)
        built.method = self.method
        return built


class Oracle(SVDPass):
    """A challenger that claims an exact fit at the winner's ranks (emitting the winner's chain)."""

    name = method = "oracle"
    order = 51
    auto_role = "challenger"
    declines = False

    def supports(self, layer):
        return None if layer.kind == "conv" and not layer.is_pointwise else "kxk convs only"

    def method_params(self, layer, ranks):  # what its (Tucker) chain holds and, at stride 1, costs
        return tucker_params(layer, ranks)

    def challenge(self, layer, params, ctx):
        if self.declines:
            return None
        tucker = tucker_build(layer, (4, 4), hooi_iters=5)
        return Factorization(self.method, [4, 4], reconstruct=lambda: layer.weight, emit=tucker.emit)


@pytest.fixture
def plugged(monkeypatch):
    def plug(cls):
        monkeypatch.setitem(PASSES, cls.name, cls)

    return plug


def test_auto_considers_a_registered_exact_method(plugged):
    model, feeds = gemm_model(48, 40)
    assert rewrite(model, "auto", ratio=2.0).rewritten[0].method in ("svd", "tt")
    plugged(HalfErrorSVD)
    result = rewrite(model, "auto", ratio=2.0)
    assert [r.method for r in result.rewritten] == ["svd-half"]
    assert output_error(model, result.model, feeds) < 1.0  # a real chain was written and runs


@pytest.mark.parametrize("declines", [False, True])
def test_auto_keeps_a_challenger_only_where_it_measures_better(plugged, monkeypatch, declines):
    rng = np.random.default_rng(0)
    model, _ = conv_model(rng.standard_normal((16, 16, 3, 3)), bias=True)
    plugged(Oracle)
    monkeypatch.setattr(Oracle, "declines", declines)
    record = rewrite(model, "auto", rank=4).rewritten[0]
    assert (record.method == "oracle") is not declines  # declined: tucker, or CP where it won
    assert (record.weight_error == 0.0) is not declines


def test_every_method_declares_how_auto_uses_it():
    from tensorfold.passes.factorize import FactorizePass

    roles = {name: cls.auto_role for name, cls in PASSES.items() if issubclass(cls, FactorizePass)}
    assert set(roles.values()) <= {"exact", "challenger", None}
    assert roles["auto"] is None  # it picks among the others
    assert {n for n, r in roles.items() if r == "exact"} >= {"svd", "tucker"}
