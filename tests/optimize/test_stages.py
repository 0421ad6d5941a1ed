"""optimize's stages: what the report warns about."""

from __future__ import annotations


def test_a_bound_the_user_gave_is_the_one_warned_about():
    """--max-output-error 0.25 met at 0.235: no warning of the 0.05 default; over it, the bound's."""
    from types import SimpleNamespace

    from tensorfold.optimize.stages import _output_warnings

    def run(error, bound):
        report = SimpleNamespace(warnings=[], notes=[], layers=[1])
        check = SimpleNamespace(max_error=error, inputs="held-out", max_channel_error=error, noise_note=lambda b: None)
        _output_warnings(report, check, SimpleNamespace(calibration="cal.npz", inputs=None), bound)
        return report.warnings

    assert run(0.235, 0.25) == []
    assert run(0.27, 0.25) == ["output error 0.270 on held-out is above the bound 0.25"]
    assert run(0.07, None) == ["output error 0.070 on held-out is above 0.05"]


def test_the_written_model_is_timed_against_the_input(tmp_path, monkeypatch):
    """Every rewrite that is not hardware-aware is timed against the input file on the provider: the
    report's latency row, and a warning only where it is measurably slower."""
    from types import SimpleNamespace

    import tensorfold.runtime.latency as latency
    from tensorfold.api import optimize
    from tensorfold.demo import demo_model_path

    report = optimize(demo_model_path(), tmp_path / "a.onnx", method="svd", ratio=1.5, progress=False)
    lat = report.latency
    assert lat["target"] == "provider cpu (measured)" and lat["input_ms"] > 0 and lat["speedup"] > 0

    def timed(speedup):
        stats = SimpleNamespace(median=0.2)
        monkeypatch.setattr(latency, "compare", lambda *a, **k: SimpleNamespace(a=stats, b=stats, speedup=speedup))
        return optimize(demo_model_path(), method="svd", ratio=1.5, progress=False)

    slow = timed(0.5)
    assert slow.latency["speedup"] == 0.5
    assert any("slower than the input on cpu: 0.50x" in w for w in slow.warnings)
    assert not any("slower" in w for w in timed(0.98).warnings)  # within the noise margin
    kept = optimize(demo_model_path(), method="svd", rank=10_000, progress=False)  # nothing rewritten
    assert kept.latency is None
    unchecked = optimize(demo_model_path(), method="svd", ratio=1.5, verify=False, progress=False)
    assert unchecked.layers and unchecked.latency is None  # --no-verify runs neither model


def test_a_timing_at_a_defaulted_dynamic_dim_says_so(tmp_path):
    from tensorfold.api import optimize
    from tests.fixtures import torch_models

    block = torch_models.export_transformer_block(tmp_path)  # batch and sequence dynamic
    report = optimize(block, method="svd", ratio=1.5, progress=False)
    assert report.latency is not None
    assert any("dynamic dims, timed at 64" in n for n in report.notes)
    fixed = optimize(block, method="svd", ratio=1.5, shapes=("input:1,16,64",), progress=False)
    assert not any("dynamic dims" in n for n in fixed.notes)
