"""Hardware-aware optimization: rewrite only where the chain is faster; never return a slower model."""

import numpy as np
import onnx
import pytest

from tensorfold.api import optimize
from tensorfold.demo import demo_model_path
from tensorfold.runtime.latency import compare
from tests.passes.single_node import conv_model


def _low_rank_conv(tmp_path, channels=256, rank=16, spatial=16):
    rng = np.random.default_rng(0)
    core = rng.standard_normal((rank, rank, 3, 3))
    u, v = (
        np.linalg.qr(rng.standard_normal((channels, rank)))[0],
        np.linalg.qr(rng.standard_normal((channels, rank)))[0],
    )
    w = np.einsum("oa,abhw,ib->oihw", u, core, v)
    model, feeds = conv_model(w, bias=True, pads=[1, 1, 1, 1], spatial=(spatial, spatial), batch=1)
    path = tmp_path / "conv.onnx"
    onnx.save(model, path)
    return path, feeds


def test_predicted_faster_chain_is_taken(tmp_path):
    path, _ = _low_rank_conv(tmp_path)
    report = optimize(
        path, tmp_path / "o.onnx", method="tucker", hardware_aware=True, device="rx580", max_error=0.05, progress=False
    )
    assert report.layers and report.layers[0].ranks == [16, 16]
    assert report.latency["speedup"] > 1.0
    assert report.verification.max_relative_error < 1e-4


def test_no_faster_chain_keeps_the_input(tmp_path):
    """On the demo CNN (batch 1) the RX 580 model predicts every chain slower: launches dominate."""
    report = optimize(
        demo_model_path(),
        tmp_path / "o.onnx",
        method="tucker",
        ratio=4,
        hardware_aware=True,
        device="rx580",
        progress=False,
    )
    assert not report.layers
    assert report.latency["speedup"] == 1.0
    assert all("hardware-aware" in s.reason for s in report.skipped if s.op == "Conv" and s.node.endswith("4/Conv"))


def test_speedup_target(tmp_path):
    path, _ = _low_rank_conv(tmp_path)
    report = optimize(path, tmp_path / "o.onnx", method="tucker", device="rx580", speedup=1.2, progress=False)
    assert report.latency["speedup"] >= 1.2 - 1e-6
    report = optimize(path, tmp_path / "o.onnx", method="tucker", device="rx580", speedup=1000, progress=False)
    assert any("out of reach" in n for n in report.notes)


@pytest.mark.slow
def test_measured_result_is_no_slower(tmp_path):
    """Measured on the CPU provider: an independent interleaved comparison after the run."""
    path, feeds = _low_rank_conv(tmp_path, channels=256, rank=16, spatial=32)
    out = tmp_path / "o.onnx"
    report = optimize(path, out, method="auto", hardware_aware=True, provider="cpu", progress=False)
    cmp = compare(onnx.load(out), onnx.load(path), feeds, runs=40)
    assert cmp.speedup >= 0.9  # the output is not slower than the input, 10% noise allowed
    assert report.latency["speedup"] >= 1.0


class _Result:
    def __init__(self, name):
        self.name, self.model, self.modified, self.notes = name, name, True, []


class _Target:
    def __init__(self, target_ms, reach_after=99):
        self.target_ms, self.out_of_reach, self.asked, self._reach = target_ms, False, [], reach_after

    def plan(self):
        self.asked.append(self.target_ms)
        self.out_of_reach = len(self.asked) > self._reach
        return _Result(f"plan{len(self.asked)}")


def test_a_missed_target_is_re_planned_and_the_fastest_kept():
    from tensorfold.planning.hardware_aware import _close_the_loop

    target = _Target(target_ms=10.0)  # base 15 ms: 1.5x asked
    measured = {"plan1": 1.35, "plan2": 1.45, "plan3": 1.40}
    first = _Result("plan0")
    result, ratio = _close_the_loop(
        lambda m, c: target.plan(), None, None, target, lambda m: measured[m], 15.0, first, 1.2
    )
    assert [round(15.0 / t, 3) for t in target.asked] == [1.875, 2.083, 2.155]  # asks for proportionally more
    assert result.name == "plan2" and ratio == 1.45
    assert len(result.notes) == 2 and "re-planned" in result.notes[0]
    assert target.target_ms == 10.0  # restored for the report


def test_a_met_or_unreachable_target_is_not_re_planned():
    from tensorfold.planning.hardware_aware import _close_the_loop

    target = _Target(target_ms=10.0)
    first = _Result("plan0")
    assert _close_the_loop(lambda m, c: target.plan(), None, None, target, None, 15.0, first, 1.47) == (first, 1.47)
    target.out_of_reach = True
    assert _close_the_loop(lambda m, c: target.plan(), None, None, target, None, 15.0, first, 1.1) == (first, 1.1)
    assert target.asked == []


def test_unreachable_target_takes_least_error_within_slack(tmp_path):
    path, _ = _low_rank_conv(tmp_path)
    report = optimize(path, tmp_path / "o.onnx", method="tucker", device="rx580", speedup=1000, progress=False)
    assert any("least error within 3%" in n for n in report.notes)


def test_measured_is_timed_per_call_and_kept_only_past_the_noise(tmp_path, monkeypatch):
    """With --inputs the timings run one call of the batch the report labels (a batch of 8 was
    timed as "batch 1"), and a measured gain within the timing noise (1.01x) writes no lossy model."""
    from tensorfold.graph.stats import model_stats
    from tensorfold.runtime.latency_model import SPEED_MARGIN, Measured

    path, feeds = _low_rank_conv(tmp_path, channels=64, rank=4, spatial=8)
    inputs = tmp_path / "x.npz"
    np.savez(inputs, x=np.concatenate([feeds["x"]] * 16))
    timed = []

    def ms(self, model, shapes, feeds=None):
        timed.append(None if feeds is None else {k: v.shape for k, v in feeds.items()})
        return model_stats(model, shapes).flops / 1e6 + 0.01

    monkeypatch.setattr(Measured, "ms", ms)
    monkeypatch.setattr(Measured, "speedup", lambda self, c, b, shapes, feeds=None: 1 + SPEED_MARGIN / 3)
    report = optimize(
        path, tmp_path / "o.onnx", method="tucker", hardware_aware=True, provider="cpu", inputs=inputs, progress=False
    )
    assert {"x": (1, 64, 8, 8)} in timed and not any(t and t["x"][0] > 1 for t in timed)
    assert not report.layers and report.latency["speedup"] == 1.0
    assert any("not faster by 3%" in n for n in report.notes)
