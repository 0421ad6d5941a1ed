"""Mixed precision: units scored by the output error of quantizing each alone, then the fewest worst
units returned to float until the bound holds; and the whole search on a real (demo) CNN."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tensorfold.demo import demo_model_path
from tensorfold.graph.io import load_model
from tensorfold.graph.normalize import normalize
from tensorfold.graph.verify import OutputCheck, Reference, Verification
from tensorfold.quantize.formats import format_for
from tensorfold.quantize.mixed import Unit, keep_within, score_units
from tensorfold.quantize.within_bound import quantize_within
from tests.helpers.data import smooth_images


class FakeReference:
    """Each node costs a known error when quantized; errors add in quadrature."""

    def __init__(self, costs: dict[str, float]):
        self.costs = costs
        self.calls = 0

    def verify(self, excluded):
        self.calls += 1
        err = float(np.sqrt(sum(c**2 for n, c in self.costs.items() if n not in excluded)))
        return Verification("passed", "fake", [OutputCheck("y", "float", relative_error=err)])


def test_scores_find_the_bad_node_inside_a_block_and_selection_holds_the_bound():
    costs = {f"n{i}": 0.001 for i in range(64)}
    costs["n37"] = 0.5  # one node quantized alone wrecks the output
    costs["n3"] = 0.04
    ref = FakeReference(costs)
    build = lambda excluded: excluded  # noqa: E731 - the fake reference reads the excluded set itself
    units = score_units(build, ref, list(costs), {"n3": "fragile"}, bound=0.05)
    assert units[0].nodes == ("n37",) and units[0].error == pytest.approx(0.5)
    assert any(u.nodes == ("n3",) and u.why == "fragile" for u in units)
    result = keep_within(build, ref, 0.05, units)
    assert result.verification.within(0.05)
    assert set(result.float_nodes) == {"n37"}  # n3's 0.04 fits beside the rest
    result = keep_within(build, ref, 0.02, units)
    assert set(result.float_nodes) == {"n37", "n3"}


def test_nothing_goes_back_to_float_when_everything_fits():
    ref = FakeReference({"a": 0.01, "b": 0.01})
    units = [Unit(("a",), 0.01), Unit(("b",), 0.01)]
    result = keep_within(lambda ex: ex, ref, 0.05, units)
    assert result.float_nodes == {} and ref.calls == 1


def test_an_unreachable_bound_gives_no_model():
    ref = FakeReference({"a": 0.3})
    ref.costs["<input>"] = 0.2  # error no float node can remove
    result = keep_within(lambda ex: ex, ref, 0.05, [Unit(("a",), 0.36)])
    assert result.model is None


@pytest.fixture(scope="module")
def demo():
    model, _ = normalize(load_model(demo_model_path()))
    return model


def test_quantize_within_on_the_demo_cnn(demo):
    fit = {"input": smooth_images(16, 0)}
    reference = Reference(load_model(demo_model_path()), {"input": smooth_images(8, 1)}, "held")
    (loose,) = quantize_within(
        demo, fit, reference, 0.5, format_for("cpu", "x86_64", {"avx512_vnni"}), methods=("minmax",), progress=False
    )
    assert loose.model is not None and loose.float_nodes == {}
    assert loose.fusion.kernels.get("QLinearConv", 0) >= 3 and not loose.fusion.slow_spots
    bound = 0.5 * loose.verification.max_error  # half of what full int8 costs: some nodes must go back
    (tight,) = quantize_within(
        demo, fit, reference, bound, format_for("cpu", "x86_64", {"avx512_vnni"}), methods=("minmax",), progress=False
    )
    if tight.model is not None:
        assert tight.verification.within(bound) and tight.float_nodes
        assert all("output error" in why for why in tight.float_nodes.values())
        onnx.checker.check_model(tight.model)
    else:
        assert tight.notes


def test_an_onnxruntime_without_the_calibration_cache_calibrates_every_time(demo, monkeypatch):
    from tensorfold.quantize import static

    monkeypatch.setattr(static, "_has_calibration_cache", lambda: False)
    fit = {"input": smooth_images(8, 0)}
    with static.StaticQuantizer(demo, fit, format_for("cpu", "x86_64", {"avx512_vnni"})) as q:
        assert q.ranges("minmax") is None
        model = q.quantize("minmax", frozenset())
    assert any(n.op_type == "QLinearConv" or n.op_type == "QuantizeLinear" for n in model.graph.node)


def test_an_int8_candidate_with_every_weight_node_in_float_is_dropped():
    """openWakeWord's melspectrogram: its 'int8' kept all four weight nodes float, 1.04 MiB as before."""
    from tensorfold.quantize.within_bound import Int8Result, _in_name_only

    fmt = format_for("cpu", "x86_64", {"avx512_vnni"})
    check = Verification("passed", "held", [OutputCheck("y", "float", relative_error=0.01)])
    named = Int8Result("static", fmt, onnx.ModelProto(), check, float_nodes={"conv": "why", "mm": "why"})
    _in_name_only(named, {"conv", "mm"})
    assert named.model is None and "every weight node stayed in float" in named.notes[0]
    real = Int8Result("static", fmt, onnx.ModelProto(), check, float_nodes={"mm": "why"})
    _in_name_only(real, {"conv", "mm"})
    assert real.model is not None and not real.notes
