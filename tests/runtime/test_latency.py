"""The latency harness: the shape of its reports, not their numbers."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from tensorfold.cli import main
from tensorfold.demo import demo_model_path
from tensorfold.limits import PROFILED_RUNS
from tensorfold.runtime.latency import by_op_type, compare, measure, measure_interleaved, node_profile, with_batch
from tests.passes.single_node import conv_model


@pytest.fixture(scope="module")
def tiny():
    return conv_model(np.random.default_rng(0).standard_normal((8, 4, 3, 3)), bias=True, pads=[1, 1, 1, 1])


def test_measure_and_compare(tiny):
    model, feeds = tiny
    stats = measure(model, feeds, runs=7, warmup=1)
    assert len(stats.runs_ms) == 7 and 0 < stats.min <= stats.median <= stats.p90
    cmp = compare(model, model, feeds, runs=6, warmup=1)
    assert len(cmp.ratios) == 6 and cmp.speedup > 0


def test_measure_interleaved_times_every_model_every_round(tiny):
    model, feeds = tiny
    big, big_feeds = conv_model(np.ones((32, 4, 3, 3)), bias=False, pads=[1, 1, 1, 1], spatial=(64, 64), batch=1)
    stats = measure_interleaved([(model, feeds), (big, big_feeds)], rounds=5, warmup=1)
    assert [len(s.runs_ms) for s in stats] == [5, 5]
    assert stats[1].median > stats[0].median  # 32x more work per pixel, 50x more pixels


def test_node_profile(tiny):
    model, feeds = tiny
    times = node_profile(model, feeds, runs=3)
    assert any(t.op == "Conv" for t in times)
    assert sum(t.share for t in times) == pytest.approx(1.0)
    # onnxruntime's NCHWc conv runs as layout reorders around the conv: on a tiny model and a busy
    # host either may take the most time
    assert by_op_type(times)[0][0] in ("Conv", "ReorderInput", "ReorderOutput")


def test_with_batch():
    x = {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}
    assert with_batch(x, 5)["x"].shape == (5, 3)
    assert with_batch(x, 1)["x"].shape == (1, 3)


def _cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def test_profile_cli_json(tmp_path):
    code, out = _cli("profile", demo_model_path(), "--batch", "1", "--batch", "4", "--runs", "5", "--json")
    assert code == 0, out
    info = json.loads(out)
    assert set(info["batches"]) == {"1", "4"}
    assert {"min_ms", "median_ms", "p90_ms"} <= set(info["batches"]["1"]["latency"])
    assert info["ops"] and info["nodes"] and info["params"] > 0 and info["flops"] > 0
    assert info["graph_nodes"][0]["op"] == "Conv" and info["graph_nodes"][0]["params"] > 0
    assert info["profiled_runs"] == 5  # --runs, up to PROFILED_RUNS
    code, out = _cli("profile", demo_model_path(), "--runs", "40")
    assert code == 0, out
    assert f"mean of {PROFILED_RUNS} calls" in " ".join(out.split())  # the table title, however wrapped


def test_profile_compare_and_device(tmp_path):
    small = tmp_path / "small.onnx"
    assert _cli("optimize", demo_model_path(), "-o", small, "--method", "tucker", "--ratio", "3")[0] == 0
    code, out = _cli("profile", small, "--compare", demo_model_path(), "--runs", "6", "--json")
    assert code == 0, out
    row = json.loads(out)["batches"]["1"]
    assert row["speedup"] > 0 and "compare_latency" in row
    code, out = _cli("profile", small, "--compare", demo_model_path(), "--device", "rx580", "--json")
    assert code == 0, out
    row = json.loads(out)["batches"]["1"]
    assert row["predicted_ms"] > 0 and row["predicted_speedup"] > 0


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--provider", "dml"], "onnxruntime-directml"),
        (["--device", "rx590"], "unknown device"),
        (["--runs", "0"], "--runs"),
    ],
)
def test_profile_bad_input(args, expected):
    code, out = _cli("profile", demo_model_path(), *args)
    assert code == 2 and out.startswith("error: ") and expected in out and len(out.strip().splitlines()) == 1


def test_profile_refuses_a_model_too_large_for_memory(monkeypatch):
    monkeypatch.setattr("tensorfold.runtime.latency.available_memory_bytes", lambda: 1000)
    code, out = _cli("profile", demo_model_path())
    assert code == 2 and "GiB" in out


@pytest.mark.parametrize("batches, warned", [((), False), (("--batch", "4"), True)])
def test_profile_times_a_fixed_batch_model_at_its_batch(tmp_path, tiny, batches, warned):
    """A model exported with a fixed batch (here 2) cannot run at another: profile times it at its
    own batch instead of failing in onnxruntime, and says so when --batch asked for another."""
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(tiny[0])
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    dim.Clear()
    dim.dim_value = 2
    onnx.save(model, tmp_path / "fixed.onnx")
    code, out = _cli("profile", str(tmp_path / "fixed.onnx"), *batches, "--runs", "3", "--warmup", "1", "--json")
    assert code == 0, out
    info = json.loads(out)
    assert set(info["batches"]) == {"2"} and info["input_shapes"]["x"][0] == 2
    assert any("fixed at 2" in w for w in info["warnings"]) == warned


def test_node_profile_leaves_out_the_cold_first_call(tiny, monkeypatch):
    """The checked first call's kernels are not averaged in: the per-node times of the warm calls
    add up to about one call, not to a cold call spread over the warm ones."""
    import tensorfold.runtime.latency as latency

    model, feeds = tiny
    real = latency._run_checked

    def cold(session, feeds):  # a first call that takes far longer, as a cold one does
        for _ in range(50):
            real(session, feeds)

    monkeypatch.setattr(latency, "_run_checked", cold)
    warm = sum(t.mean_ms for t in node_profile(model, feeds, runs=5))
    monkeypatch.setattr(latency, "_run_checked", real)
    plain = sum(t.mean_ms for t in node_profile(model, feeds, runs=5))
    assert warm < 3 * plain  # 50 calls in the "first" one, averaged in, would read ~10x
