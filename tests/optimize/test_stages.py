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
