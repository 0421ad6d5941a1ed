"""A chain's stated multiply-adds match what the emitted graph costs, and no plan buys parameters
with speed: a candidate costing more multiply-adds than its layer is left out or refused."""

from __future__ import annotations

import numpy as np
import pytest

from tensorfold.graph.stats import model_stats
from tensorfold.passes import PassContext, RankSpec, get_pass
from tensorfold.passes.base import Choice
from tensorfold.passes.layers import find_layers
from tests.passes.single_node import conv_model, matmul_model, rewrite


def _flops(model, feeds) -> int:
    flops = model_stats(model, {k: list(v.shape) for k, v in feeds.items()}).flops
    assert flops
    return flops


def _stated_and_measured(model, feeds, method, rank):
    layer = find_layers(model)[0][0]
    result = rewrite(model, method, rank=rank)
    assert result.modified, result.skipped
    record = result.rewritten[0]
    stated = get_pass(method).macs_for(layer, Choice(record.method, tuple(record.ranks)))
    assert stated is not None
    # the layer spends layer.params multiply-adds per output position: the ratios must agree
    return stated / layer.params, _flops(result.model, feeds) / _flops(model, feeds)


# cp rewrites group-1 convs only: no grouped case for it
@pytest.mark.parametrize(("method", "groups"), [("tucker", 1), ("tucker", 2), ("cp", 1), ("tt", 1), ("tt", 2)])
@pytest.mark.parametrize("strides", [(1, 1), (2, 2), (2, 1)])
def test_conv_chain_macs_match_the_emitted_graph(method, groups, strides):
    weight = np.random.default_rng(0).standard_normal((8, 6, 3, 3))
    # 12x12 with pads 1 and a 3x3 kernel: every stride divides the input evenly, so positions at
    # the input's resolution are exactly prod(strides) per output position
    model, feeds = conv_model(weight, bias=True, groups=groups, strides=strides, pads=[1, 1, 1, 1], spatial=(12, 12))
    stated, measured = _stated_and_measured(model, feeds, method, 3)
    assert stated == pytest.approx(measured, rel=1e-9)


@pytest.mark.parametrize(("k", "n"), [(64, 48), (384, 384), (30, 20)])
@pytest.mark.parametrize("rank", [2, 16, 10_000])
def test_tt_matrix_macs_match_the_emitted_graph(k, n, rank):
    model, feeds = matmul_model(k, n, lead=(2, 7))
    stated, measured = _stated_and_measured(model, feeds, "tt", rank)
    assert stated == pytest.approx(measured, rel=1e-9)


def test_svd_chain_macs_are_its_params():
    model, feeds = matmul_model(64, 48)
    stated, measured = _stated_and_measured(model, feeds, "svd", 5)
    assert stated == pytest.approx(measured, rel=1e-9) and stated == pytest.approx(5 * (64 + 48) / (64 * 48))


def test_budget_and_auto_leave_out_chains_costing_more_than_the_layer():
    """A ViT's 384x384 MatMul: TT-matrices at high bond ranks hold fewer parameters than the layer
    but cost up to ~40x its multiply-adds; neither the budget nor auto may pick one."""
    model, _ = matmul_model(384, 384, lead=(1, 197))
    layer = find_layers(model)[0][0]
    for method in ("tt", "auto"):
        p = get_pass(method)
        everything = p.candidates(layer)
        costly = [c for c in everything if c.params < layer.params and p.costs_more(layer, p.ranks_of(c))]
        assert costly, f"{method}: the check would be vacuous"
        kept = p.candidates_of(layer, PassContext(progress=False))
        assert kept and not any(p.costs_more(layer, p.ranks_of(c)) for c in kept)
        assert len(p.candidates_of(layer, PassContext(progress=False, force=True))) == len(everything)
    # auto at a ratio just below 1: the pick must be cheaper than the layer in multiply-adds too
    result = get_pass("auto")(model, PassContext(spec=RankSpec(ratio=1.2), progress=False))
    assert result.modified
    auto = get_pass("auto")
    for record in result.rewritten:
        macs = auto.macs_for(layer, Choice(record.method, tuple(record.ranks)))
        assert macs is not None and macs <= layer.params


def test_an_explicit_costly_rank_is_refused_with_its_reason():
    model, _ = matmul_model(384, 384, lead=(1, 197))
    result = get_pass("tt")(model, PassContext(spec=RankSpec(rank=40), progress=False))
    assert not result.modified
    (skip,) = result.skipped
    assert "multiply-adds per output" in skip.reason and "--force" in skip.reason
    forced = get_pass("tt")(model, PassContext(spec=RankSpec(rank=40), progress=False, force=True))
    assert forced.modified
