"""The sensitivity probe: one session with the probed weight fed in measures what rebuilding the
model with that layer factorized shows, and it holds no model copy per layer."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pytest

from tensorfold.calibration.data import load_samples
from tensorfold.calibration.sensitivity import measure_sensitivity
from tensorfold.calibration.stats import collect_input_grams
from tensorfold.demo import demo_model_path
from tensorfold.graph.io import load_model
from tensorfold.graph.normalize import normalize as normalize_model
from tensorfold.graph.verify import Reference
from tensorfold.passes import PassContext, get_pass
from tensorfold.passes.base import Choice
from tensorfold.passes.layers import ensure_node_names, find_layers
from tests.helpers.data import smooth_images


@dataclass
class _Only:
    """A planner that rewrites one layer at the given ranks (what the probe used to build)."""

    name: str
    choice: Choice
    reasons: dict[str, str] = field(default_factory=dict)

    def __call__(self, pass_, layers, ctx):
        return {layer.name: (self.choice if layer.name == self.name else None) for layer in layers}, []


@pytest.mark.parametrize("method", ["tucker", "auto"])
def test_the_streamed_probe_measures_what_a_rebuilt_model_shows(tmp_path, method):
    np.savez(tmp_path / "fit.npz", x=smooth_images(24, 0))
    original = load_model(demo_model_path())
    model = normalize_model(original)[0]
    ensure_node_names(model)
    samples = load_samples(tmp_path / "fit.npz", original)
    layers, _ = find_layers(model)
    ctx = PassContext(progress=False, stats=collect_input_grams(model, layers, samples))
    reference = Reference(original, samples.take(np.arange(8)).arrays, "probe")
    pass_ = get_pass(method)
    measured = measure_sensitivity(pass_, model, ctx, reference)
    kinds = {layer.name: layer.kind for layer in layers}
    assert len(measured) >= 3 and "gemm" in {kinds[n] for n in measured}  # a transB weight among them
    for name, s in measured.items():
        assert s.probe is not None
        rebuilt = pass_(model, replace(ctx, planner=_Only(name, s.probe)))
        assert [r.node for r in rebuilt.rewritten] == [name]
        check = reference.verify(rebuilt.model)
        assert s.model_error == pytest.approx(check.max_relative_error, rel=1e-3, abs=1e-5)
        assert s.model_error > 0


def test_the_probe_samples_spread_over_the_file():
    """The first 8 samples of a file grouped by kind all came from one kind (magika's files)."""
    from tensorfold.calibration.data import Samples
    from tensorfold.calibration.sensitivity import PROBE_SAMPLES, probe_reference

    model = load_model(demo_model_path())
    images = smooth_images(40, 0)
    probe = probe_reference(model, Samples({"input": images}, "s.npz"))
    used = np.concatenate([call["input"] for call in probe.calls])
    assert len(used) == PROBE_SAMPLES
    assert np.array_equal(used[0], images[0]) and np.array_equal(used[-1], images[-1])
    few = probe_reference(model, Samples({"input": images[:3]}, "s.npz"))
    assert sum(len(call["input"]) for call in few.calls) == 3
