"""int8 within a bound on a MatMul-heavy model (a transformer block): the dynamic candidate is built
first, and where it is within the bound and at least as fast as fully quantized static int8, the
static search stops at its first calibration method."""

from __future__ import annotations

import numpy as np
import pytest

from tensorfold.graph.io import load_model
from tensorfold.graph.verify import Reference
from tensorfold.onnxrt.batching import one_call
from tensorfold.quantize.formats import format_for
from tensorfold.quantize.within_bound import Timing, quantize_within
from tensorfold.runtime import latency
from tensorfold.runtime.latency import LatencyStats
from tests.fixtures.torch_models import export_transformer_block

FMT = format_for("cpu", "x86_64", {"avx512_vnni"})


@pytest.fixture(scope="module")
def block(tmp_path_factory):
    model = load_model(export_transformer_block(tmp_path_factory.mktemp("block")))
    x = np.random.default_rng(0).standard_normal((24, 16, 64)).astype(np.float32)
    fit, held = {"input": x[:16]}, {"input": x[16:]}
    return model, fit, Reference(model, held, "held"), Timing("cpu", 1, one_call(model, held))


def timed_as(monkeypatch, static_ms: float, dynamic_ms: float) -> list[int]:
    """timed_for_budget reads the static model at `static_ms`, the dynamic one at `dynamic_ms`."""
    calls = []

    def fake(models, provider="cpu", threads=0, rounds=15):
        calls.append(len(models))
        return [LatencyStats([static_ms] * 5), LatencyStats([dynamic_ms] * 5)], 5

    monkeypatch.setattr(latency, "timed_for_budget", fake)
    return calls


def bound_between(block) -> float:
    """A bound the dynamic candidate meets fully quantized and static int8 does not."""
    model, fit, reference, _ = block
    static, dynamic = quantize_within(model, fit, reference, 1.0, FMT, methods=("minmax",), progress=False)
    assert dynamic.verification.max_error < 0.5 * static.verification.max_error
    return float(np.sqrt(dynamic.verification.max_error * static.verification.max_error))


def test_a_static_search_that_cannot_beat_the_dynamic_candidate_is_not_run(block, monkeypatch):
    model, fit, reference, timing = block
    bound = bound_between(block)
    calls = timed_as(monkeypatch, static_ms=1.0, dynamic_ms=1.0)  # as fast: static could only lose
    static, dynamic = quantize_within(model, fit, reference, bound, FMT, progress=False, timing=timing)
    assert calls == [2]
    assert static.model is None and list(static.calibration_errors) == ["minmax"]  # one calibration
    assert (
        static.notes[0].startswith("not searched: fully quantized, static int8 ran")
        and "1.00x the speed" in static.notes[0]
    )
    assert dynamic.model is not None and dynamic.float_nodes == {} and dynamic.verification.within(bound)


def test_a_faster_static_int8_is_searched_as_before(block, monkeypatch):
    model, fit, reference, timing = block
    bound = bound_between(block)
    calls = timed_as(monkeypatch, static_ms=0.5, dynamic_ms=1.0)
    static, dynamic = quantize_within(model, fit, reference, bound, FMT, progress=False, timing=timing)
    assert calls == [2]
    assert set(static.calibration_errors) == {"minmax", "percentile", "entropy"}
    assert static.trials and not any("not searched" in n for n in static.notes)
    if static.model is not None:
        assert static.float_nodes and static.verification.within(bound)
    assert dynamic.model is not None


def test_a_dynamic_candidate_over_the_bound_settles_nothing(block, monkeypatch):
    model, fit, reference, timing = block
    calls = timed_as(monkeypatch, static_ms=1.0, dynamic_ms=1.0)
    static, _ = quantize_within(model, fit, reference, 1e-6, FMT, methods=("minmax", "percentile"), timing=timing)
    assert calls == [] and set(static.calibration_errors) == {"minmax", "percentile"}


def test_a_static_model_within_the_bound_is_kept_though_the_search_is_settled(block, monkeypatch):
    model, fit, reference, timing = block
    timed_as(monkeypatch, static_ms=2.0, dynamic_ms=1.0)
    static, dynamic = quantize_within(model, fit, reference, 1.0, FMT, progress=False, timing=timing)
    assert static.model is not None and static.float_nodes == {} and list(static.calibration_errors) == ["minmax"]
    assert "calibrated with minmax only" in static.notes[-1] and dynamic.model is not None


def test_a_calibration_failing_after_the_first_is_skipped_and_times_nothing_again(block, monkeypatch):
    """MiniLM-L3: minmax calibrates, percentile fails; the speed check ran once, on minmax's model."""
    from tensorfold.errors import TensorfoldError
    from tensorfold.quantize.static import StaticQuantizer

    model, fit, reference, timing = block
    calls = timed_as(monkeypatch, static_ms=0.5, dynamic_ms=1.0)
    quantize = StaticQuantizer.quantize

    def failing(self, method="minmax", exclude=frozenset()):
        if method == "percentile":
            raise TensorfoldError("int8 calibration (percentile) failed: no histogram")
        return quantize(self, method, exclude)

    monkeypatch.setattr(StaticQuantizer, "quantize", failing)
    static, _ = quantize_within(model, fit, reference, bound_between(block), FMT, progress=False, timing=timing)
    assert calls == [2] and set(static.calibration_errors) == {"minmax", "entropy"}
    assert any("percentile calibration skipped" in n for n in static.notes)


def test_a_dynamic_candidate_that_keeps_nodes_in_float_settles_the_static_search_too(block, monkeypatch):
    """MiniLM-L3 at 0.05: dynamic int8 needs 4 nodes in float; static int8, fully quantized, is slower."""
    model, fit, reference, timing = block
    _, full = quantize_within(model, fit, reference, 1.0, FMT, methods=("minmax",), progress=False)
    bound = 0.6 * full.verification.max_error
    calls = timed_as(monkeypatch, static_ms=1.0, dynamic_ms=1.0)
    static, dynamic = quantize_within(model, fit, reference, bound, FMT, progress=False, timing=timing)
    assert dynamic.model is not None and dynamic.float_nodes and dynamic.verification.within(bound)
    assert calls == [2] and static.model is None and "not searched" in static.notes[0]


def test_weight_nodes_are_those_that_read_a_weight(block):
    """The block's shape Gathers and its two attention-score MatMuls read no weight: a candidate that
    keeps the six weight MatMuls in float is int8 in name only."""
    from tensorfold.quantize.within_bound import weight_nodes

    model = block[0]
    assert sorted(weight_nodes(model)) == sorted(
        n.name for n in model.graph.node if n.op_type == "MatMul" and "/attn/MatMul" not in n.name
    )
    assert len(weight_nodes(model)) == 6
