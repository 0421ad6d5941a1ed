"""search nas and pipeline from the command line: outputs, measurements, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tensorfold.demo import demo_model_path
from tensorfold.onnxrt.sessions import make_session
from tensorfold.search.nas.latency import OpLatencyTable
from tensorfold.search.nas.space import NetConfig, Network, random_genotype
from tests.helpers.cli import assert_user_error, invoke
from tests.helpers.data import needs_data

DEMO = demo_model_path()

TINY = [
    "--train-size",
    "400",
    "--val-size",
    "200",
    "--proxy-steps",
    "5",
    "--final-steps",
    "60",
    "--channels",
    "4",
    "--layers",
    "3",
    "--threads",
    "1",
]


def test_op_latency_table_is_cached_on_disk(tmp_path):
    net = Network(random_genotype(np.random.default_rng(0)), NetConfig(channels=4, layers=3))
    table = OpLatencyTable(threads=1, cache_dir=tmp_path, runs=3)
    ms = table.network_ms(net, (1, 28, 28))
    assert ms > 0 and table.new > 5
    table.save()
    again = OpLatencyTable(threads=1, cache_dir=tmp_path, runs=3)
    assert again.network_ms(net, (1, 28, 28)) == ms and again.new == 0


@needs_data
def test_evolution_with_two_objectives_writes_and_measures_everything(tmp_path):
    out = tmp_path / "nas"
    code, text = invoke(
        "search",
        "nas",
        "--strategy",
        "evolution",
        "--objectives",
        "accuracy,latency",
        "--device",
        "rx580",
        "--budget-minutes",
        "2",
        "--max-candidates",
        "4",
        "--output-dir",
        out,
        "-o",
        tmp_path / "net.onnx",
        "--json",
        *TINY,
    )
    assert code == 0, text
    report = json.loads(text[text.index("{") :])
    assert report["strategy"] == "evolution (NSGA-II)" and report["candidates"] >= 1
    final = report["final"]
    assert 0.3 < final["test_accuracy"] <= 1 and final["params"] > 0 and final["flops"] > 0
    assert final["host_ms"] > 0 and final["device"] == "rx580" and final["device_ms"] > 0
    for name in ("model.onnx", "genotype.json", "candidates.json", "front.png", "report.json"):
        assert (out / name).exists(), name
    # two objectives: every Pareto point is written, its proxy-trained network runs
    front = json.loads((out / "front.json").read_text())
    assert front["objectives"] == ["accuracy", "latency"] and front["points"]
    for point in front["points"]:
        assert (out / f"point-{point['point']}.json").exists() and set(point["values"]) == {"accuracy", "latency"}
        got = make_session(point["model"]).run(None, {"input": np.zeros((1, 1, 28, 28), np.float32)})[0]
        assert got.shape == (1, 10)
    x = np.zeros((2, 1, 28, 28), np.float32)
    assert make_session(str(tmp_path / "net.onnx")).run(None, {"input": x})[0].shape == (2, 10)
    # the written genotype replays without a search
    code, text = invoke("search", "nas", "--genotype", out / "genotype.json", "--budget-minutes", "1", *TINY)
    assert code == 0, text
    assert "given" in text and json.loads((out / "genotype.json").read_text())["genotype"]["normal"]
    # a single network written into the same folder: the earlier front is not left to read as its own
    genotype = tmp_path / "g.json"
    genotype.write_text((out / "genotype.json").read_text())
    code, text = invoke(
        "search", "nas", "--genotype", genotype, "--budget-minutes", "1", "--output-dir", out, *TINY
    )  # fmt: skip
    assert code == 0, text
    assert not (out / "front.json").exists() and not (out / "front.png").exists()
    assert not list(out.glob("point-*")) and (out / "model.onnx").exists()


@needs_data
def test_darts_from_the_cli_reports_its_guard(tmp_path):
    code, text = invoke(
        "search", "nas", "--strategy", "darts", "--budget-minutes", "2", "--max-epochs", "2", "--json", *TINY
    )
    assert code == 0, text
    report = json.loads(text[text.index("{") :])
    assert report["darts"]["guard"] == "earlystop" and report["darts"]["epochs"] >= 1
    assert report["final"]["test_accuracy"] > 0.3


@needs_data
def test_pipeline_runs_every_stage(tmp_path):
    code, text = invoke(
        "pipeline",
        "--teacher",
        DEMO,
        "--strategy",
        "random",
        "--budget-minutes",
        "2",
        "--max-candidates",
        "3",
        "--proxy-steps",
        "5",
        "--train-size",
        "400",
        "--final-steps",
        "20",
        "--final-channels",
        "4",
        "--recover-steps",
        "5",
        "--threads",
        "1",
        "--output-dir",
        tmp_path / "p",
        "--json",
    )
    assert code == 0, text
    report = json.loads(text[text.index("{") :])
    stages = [s["stage"].split(" ")[0] for s in report["stages"]]
    assert stages[:4] == ["teacher", "NAS,", "decomposed", "recovered"]
    # int8 is a stage where the deploy search kept it; where it did not, a note says why and no
    # recovered.int8.onnx is written (it would be a copy of the float model)
    kept = report["stages"][-1]["stage"] == "recovered + int8"
    assert len(stages) == 4 + kept and (tmp_path / "p" / "recovered.int8.onnx").exists() == kept
    assert kept or any(n.startswith("int8 was not kept") for n in report["notes"])
    # the stages were written aside and moved into place: the report names where they are now,
    # and the recovery's checkpoints are not left behind
    assert all(Path(s["model"]).exists() for s in report["stages"])
    assert not (tmp_path / "p" / "recovered.onnx.ckpt").exists()
    # a hardware-aware decomposition that rewrites nothing says why and falls back to parameters
    fell_back = "by parameters" in report["stages"][2]["stage"]
    assert fell_back == any("rewrote no layer" in n for n in report["notes"])
    # 20 training steps on 400 images may leave the NAS model at chance (0.1) on some runs: the
    # stages must run and report, not learn; the teacher is the one trained model here
    assert all(0 <= s["test_accuracy"] <= 1 and s["host_ms"] > 0 for s in report["stages"])
    assert report["stages"][0]["test_accuracy"] > 0.85
    assert (tmp_path / "p" / "recovered.onnx").exists()
    # the plan's four numbers, every stage against the teacher: compression (params and bytes),
    # accuracy lost, speedup (CPU measured, RX 580 predicted), peak memory (measured)
    for s in report["stages"]:
        assert s["size_bytes"] > 0 and s["rx580_ms"] > 0 and s["peak_bytes"] > 0, s
    vs = report["against_teacher"]
    assert [r["stage"] for r in vs] == [s["stage"] for s in report["stages"][1:]]
    teacher, int8 = report["stages"][0], report["stages"][-1]
    assert vs[-1]["bytes_x"] == pytest.approx(teacher["size_bytes"] / int8["size_bytes"])
    assert vs[-1]["accuracy_loss_pt"] == pytest.approx(100 * (teacher["test_accuracy"] - int8["test_accuracy"]))
    assert vs[-1]["memory_saved"] == pytest.approx(1 - int8["peak_bytes"] / teacher["peak_bytes"])
    from dataclasses import fields

    from rich.console import Console

    from tensorfold.report import PipelineReport

    console = Console(record=True, width=200)
    PipelineReport(**{f.name: report[f.name] for f in fields(PipelineReport) if f.name in report}).render(console)
    shown = console.export_text()
    assert "against the teacher" in shown and "RX 580 speedup" in shown and "peak mem" in shown
    # the answer for the plan's RX 580: int8 only where it is not predicted slower there than recovered
    final, recovered = report["final"], report["stages"][-2]
    assert final["target"] == "rx580" and f"answer for rx580: {final['model']}" in shown
    not_kept = int8["stage"] == "recovered (int8 not kept)"  # its file holds a float model: never the answer
    slower = int8["rx580_ms"] > recovered["rx580_ms"] and not not_kept
    assert final["model"] == (recovered["model"] if slower or not_kept else int8["model"])
    assert slower == any(n.startswith("the answer for rx580") for n in report["notes"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--genotype", "BAD"], "unknown op 'warp'"),
        (["--device", "gameboy"], "unknown device 'gameboy'"),
        (["--objectives", "accuracy,beauty"], "unknown NAS objective(s) beauty"),
        (["--strategy", "darts", "--objectives", "accuracy,params"], "DARTS optimizes accuracy alone"),
        (["--budget-minutes", "0"], "--budget-minutes"),
        (["--teacher", str(DEMO.with_name("nope.onnx"))], "nope.onnx"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, args, message):
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps({"normal": [[["warp", 0], ["conv_3x3", 1]]], "reduce": [[["conv_3x3", 0], ["conv_3x3", 1]]]})
    )
    args = [str(bad) if a == "BAD" else a for a in args]
    code, text = invoke("search", "nas", *args)
    assert_user_error(code, text, message)


@needs_data
def test_a_budget_too_small_for_one_candidate_is_refused(tmp_path):
    code, text = invoke("search", "nas", "--budget-minutes", "0.001", "--proxy-steps", "500")
    assert_user_error(code, text, "the budget (0.0 min) is too small here")


def test_op_table_estimate_is_close_to_the_whole_graph_prediction(tmp_path):
    """Each block pays one call's fixed cost only once in the sum: the table agrees with the device
    model run on the whole exported network, less the adds and concatenations it leaves out."""
    from tensorfold.runtime.devices import get_device, predict_seconds
    from tensorfold.search.nas.space import to_onnx

    dev = get_device("rx580")
    net = Network(random_genotype(np.random.default_rng(3)), NetConfig())
    table = OpLatencyTable(device=dev, cache_dir=tmp_path)
    whole = predict_seconds(to_onnx(net), {"input": [1, 1, 28, 28]}, dev) * 1e3
    assert 0.7 * whole < table.network_ms(net, (1, 28, 28)) <= whole


def test_scorer_predicts_memory_and_constrains_it():
    """Every candidate carries its predicted peak memory; --max-memory-mb becomes a constraint
    value (<= 0 feasible) beside --max-latency."""
    from tensorfold.search.nas.scoring import Scorer

    rng = np.random.default_rng(0)
    data = (
        rng.random((32, 1, 28, 28), dtype=np.float32),
        rng.integers(0, 10, 32),
        rng.random((16, 1, 28, 28), dtype=np.float32),
        rng.integers(0, 10, 16),
    )
    table = OpLatencyTable(threads=1, runs=2)
    cfg = NetConfig(channels=4, layers=3)
    scorer = Scorer(cfg, data, ("accuracy", "memory"), 2, 0, table, None, max_memory_mb=1e-3)
    scored = scorer(random_genotype(rng))
    assert scored.metrics["memory"] > 1e-3 and scored.values[1] == scored.metrics["memory"]
    assert scored.user_attrs["constraints"] == [pytest.approx(scored.metrics["memory"] - 1e-3)]


def test_pipeline_refuses_an_unknown_target_before_any_work(tmp_path):
    code, text = invoke("pipeline", "--teacher", DEMO, "--target", "gameboy", "--output-dir", tmp_path / "p")
    assert_user_error(code, text, "--target gameboy: choose cpu (measured) or a device profile")
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize(
    "target, int8_ms, answer",
    [
        ("rx580", 3.0, "recovered.onnx"),  # predicted slower on the target: the float model is the answer
        ("rx580", 0.9, "recovered.int8.onnx"),
        ("cpu", 1.04, "recovered.int8.onnx"),  # measured: within 5% is noise, int8 stays
        ("cpu", 1.2, "recovered.onnx"),
    ],
)
def test_the_answer_follows_the_target(target, int8_ms, answer):
    from tensorfold.pipeline import final_stage

    key = "host_ms" if target == "cpu" else f"{target}_ms"
    stages = [
        {"stage": "recovered", "model": "recovered.onnx", key: 1.0},
        {"stage": "recovered + int8", "model": "recovered.int8.onnx", key: int8_ms},
    ]
    final, why = final_stage(stages, target)
    assert final["model"] == answer
    assert (why is None) == (answer == "recovered.int8.onnx")
    if why:
        assert why.startswith(f"the answer for {target} is recovered.onnx") and f"{int8_ms:.2f}x" in why


def test_the_int8_stage_says_when_int8_was_not_kept():
    from tensorfold.pipeline import int8_outcome

    kept = {"chosen": "input + int8 (qdq)", "candidates": []}
    assert int8_outcome(kept) == ("recovered + int8", None)
    slower = {
        "chosen": "input",
        "candidates": [
            {"name": "input", "max_error": 0.0, "within": True, "speedup": 1.0},
            {"name": "input + int8 (qdq)", "max_error": 0.012, "within": True, "speedup": 0.8},
        ],
    }
    stage, why = int8_outcome(slower)
    assert stage == "recovered (int8 not kept)"
    assert (
        why
        == "int8 was not kept: the search chose 'input' (input + int8 (qdq): held-out error 0.012 (within the bound), 0.80x the speed)"
    )


@pytest.mark.parametrize("target", ["cpu", "rx580"])
def test_a_float_model_the_int8_step_kept_is_never_the_answer(target):
    """Where the int8 step kept a float model, its file is no int8 model: the answer is the
    recovered one, whatever the timings say (a pipeline answered 'recovered.int8.onnx (int8 not kept)')."""
    from tensorfold.pipeline import INT8_NOT_KEPT, final_stage

    key = "host_ms" if target == "cpu" else f"{target}_ms"
    stages = [
        {"stage": "recovered", "model": "recovered.onnx", key: 1.0},
        {"stage": INT8_NOT_KEPT, "model": "recovered.int8.onnx", key: 0.97},
    ]
    assert final_stage(stages, target) == (stages[0], None)


def test_an_answer_less_accurate_and_slower_than_the_teacher_is_a_warning():
    from tensorfold.pipeline import worse_than_teacher

    teacher = {"model": "t.onnx", "test_accuracy": 0.91, "host_ms": 0.10, "params": 100_000}
    answer = {"model": "p/recovered.onnx", "test_accuracy": 0.78, "host_ms": 0.45, "params": 60_000}
    text = worse_than_teacher(teacher, answer, "cpu")
    assert text.startswith("warning:") and "13.0 points" in text and "0.22x its speed" in text
    assert worse_than_teacher(teacher, dict(answer, host_ms=0.05), "cpu") is None  # faster: a trade-off
    assert worse_than_teacher(teacher, dict(answer, test_accuracy=0.92), "cpu") is None


@needs_data
def test_a_search_split_larger_than_the_data_is_said(capsys):
    """--train-size 70000 --val-size 100000 were cut to 48000/12000 without a word."""
    from tensorfold.search.nas.scoring import load_split

    (tx, _, vx, _), _ = load_split("fashion-mnist", 70000, 100000, 0)
    assert (len(tx), len(vx)) == (48000, 12000)
    assert "trains on 48000 and validates on 12000, less than --train-size 70000" in capsys.readouterr().err
    load_split("fashion-mnist", 400, 100, 0)
    assert capsys.readouterr().err == ""
