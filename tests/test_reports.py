"""Reports are dataclasses, and their JSON is the dict the command's core returned: the same keys in
the same order, keys a run leaves out left out (and null ones kept), whatever Python callers read."""

from __future__ import annotations

import copy
import io

import pytest
from rich.console import Console

from tensorfold.graph.verify import OutputCheck, Verification
from tensorfold.report import NasReport, ProfileReport, RankSearchReport, RecoverReport, VerifyReport

RECOVER = {
    "peers": [],
    "student": "small.onnx",
    "teacher": "model.onnx",
    "generations": [{"accuracy": 0.9, "teacher_agreement": 0.95}],
    "output": "r.onnx",
    "data": "Fashion-MNIST train",
    "train_size": 240,
    "val_size": 60,
    "validation": "60 samples held out of the training data",
    "metric": "accuracy",
    "outputs": "class scores logits (KD, argmax agreement)",
    "world_size": 1,
    "config": {"max_steps": 2, "precision": "fp32"},
    "features_matched": 1,
    "trained": "the factor chains' 1,200 of 5,000 weights trained (--train all: every weight)",
    "val_before": {"accuracy": 0.8, "teacher_agreement": 0.9},
    "val_after": {"accuracy": 0.9, "teacher_agreement": 0.95},
    "best": {"accuracy": 0.9, "step": 2},
    "test_accuracy": {"student_before": 0.81, "student_after": 0.9, "teacher": 0.92},
    "steps": 2,
    "stop": "max steps",
    "checkpoints": "r.onnx.ckpt",
    "history": "r.onnx.ckpt/history.json",
    "plot": None,
    "seconds": 8.7,
}

RANKS = {
    "model": "model.onnx",
    "study": "model-params-error",
    "storage": "memory",
    "objectives": ["params", "error"],
    "directions": ["minimize", "minimize"],
    "space": {"mode": "per-layer", "layers": 4, "methods": ["svd", "tucker"]},
    "evaluation": {"inputs": "random (seed 0)"},
    "baseline": {"params": 1000.0, "error": 0.0},
    "trials": {"total": 3, "this_run": 3, "complete": 2, "failed": 1, "infeasible": 0},
    "failures": [{"trial": 2, "reason": "ValueError: no"}],
    "seconds_per_trial": {"median": 0.5, "mean": 0.6},
    "hypervolume": 0.25,
    "front": [{"point": 1, "trial": 0, "values": {"params": 500.0, "error": 0.01}, "verified": True}],
    "inputs": "random (seed 0)",
    "seconds": 2.0,
    "interrupted": False,
}

NAS = {
    "strategy": "random",
    "objectives": ["accuracy"],
    "data": "Fashion-MNIST train",
    "budget_minutes": 1,
    "search_seconds": 3.5,
    "candidates": 2,
    "proxy": "accuracy after 5 SGD steps",
    "threads": 1,
    "budget": {"budget_s": 60.0, "notes": ["small budget"]},
    "space": {"channels": 4},
    "latency": {"device": None},
    "darts": None,
    "chosen": {"number": 0},
    "front": [{"number": 0}],
    "final": {
        "genotype_text": "normal: ...",
        "test_accuracy": 0.7,
        "params": 1234,
        "flops": 56789,
        "host_ms": 0.1,
        "steps": 20,
        "distilled_from": None,
    },
    "seconds": 6.3,
}


def _with(d: dict, **extra) -> dict:
    return {**copy.deepcopy(d), **extra}


def _ranks_written(plot: str | None, interrupted: bool = False) -> dict:
    """With --output-dir the search adds "plot", and "interrupted" after it."""
    return {
        **{k: v for k, v in copy.deepcopy(RANKS).items() if k != "interrupted"},
        "plot": plot,
        "interrupted": interrupted,
    }


def _render(report) -> str:
    buf = io.StringIO()
    report.render(Console(file=buf, width=200))
    return buf.getvalue()


@pytest.mark.parametrize(
    "cls, d",
    [
        (RecoverReport, RECOVER),
        (RecoverReport, {"rank": 1, "world_size": 2, "output": None, "steps": 4, "stop": "max steps"}),
        (RankSearchReport, RANKS),  # no --output-dir: no "plot" key
        (RankSearchReport, _ranks_written("p/front.png", interrupted=True)),
        (RankSearchReport, _ranks_written(None)),  # a front written with no completed trial to plot
        (NasReport, _with(NAS, output="nas.onnx")),
        (NasReport, _with(NAS, front_points=2, model="n/model.onnx", plot=None)),
    ],
)
def test_the_json_is_the_dict_the_core_returned(cls, d):
    report = cls.from_dict(copy.deepcopy(d))
    assert list(report.as_dict().items()) == list(d.items())
    if getattr(report, "rank", 0) == 0:  # other ranks' reports are never shown
        assert _render(report)


def test_python_callers_read_fields():
    rec = RecoverReport.from_dict(copy.deepcopy(RECOVER))
    assert rec.rank == 0 and rec.val_after["accuracy"] == 0.9 and rec.steps == 2
    assert "validation accuracy (selects)" in _render(rec)
    assert RecoverReport.from_dict({"rank": 1, "world_size": 2, "output": None, "steps": 4, "stop": "x"}).rank == 1
    ranks = RankSearchReport.from_dict(_with(RANKS, interrupted=True))
    assert ranks.interrupted and ranks.front[0]["verified"]
    with pytest.raises(TypeError):  # a key the report does not know is an error, not dropped
        RankSearchReport.from_dict(_with(RANKS, surprise=1))
    timed = RankSearchReport.from_dict(
        _with(
            RANKS,
            objectives=["latency", "error"],
            evaluation={"latency": "cpu (measured)"},
            baseline={"latency": 2.0, "error": 0.0},
            front=[],
        )
    )
    assert "error on random (seed 0); latency cpu (measured), one call" in " ".join(_render(timed).split())


def test_profile_leaves_out_what_a_run_did_not_measure():
    common = dict(
        model="m.onnx",
        params=10,
        flops=100,
        size_bytes=40,
        provider=None,
        device="a100",
        batches={"1": {"flops": 100, "predicted_ms": 0.5}},
        input_shapes={"x": [1, 3]},
        shapes_from="--shape",
        warnings=[],
        graph_nodes=[],
    )
    predicted = ProfileReport(**common)
    assert list(predicted.as_dict()) == list(common)
    measured = ProfileReport(
        **common, compare={"model": "b.onnx"}, ops=[], nodes=[], peak_rss_mb=12.0, profiled_runs=10
    )
    assert list(measured.as_dict())[-5:] == ["compare", "ops", "nodes", "peak_rss_mb", "profiled_runs"]


def test_verify_report_is_the_verification():
    v = Verification("passed", "random (seed 0)", [OutputCheck("y", "float", 0.1, 0.2, nonfinite=3)])
    report = VerifyReport.of(v)
    assert report.as_dict() == v.as_dict() and report.broken == ["y (3 NaN/Inf values)"]
    assert "relative error 1.000e-01" in _render(report)


def test_a_recovery_not_kept_for_its_argmax_disagreement_says_so():
    """The larger of error and disagreement decides, as the bound does: where the recovered model's
    relative error is lower but more argmaxes changed, the table must not read as a better model
    thrown away."""
    from tensorfold.report.optimize import _after

    by_error = {"max_relative_error": 0.05, "max_disagreement": 0.0, "recovered_not_kept": 0.07}
    by_error["recovered_not_kept_disagreement"] = 0.0
    assert _after(by_error) == "0.0500 (recovered 0.0700: not kept)"
    by_agreement = {**by_error, "recovered_not_kept": 0.04, "recovered_not_kept_disagreement": 0.0625}
    text = _after(by_agreement)
    assert text == "0.0500 (recovered 0.0400, argmax disagreement 6.2% against 0.0%: not kept)"


def test_the_float_nodes_listed_are_the_written_candidates():
    """A ViT wrote the dynamic int8 candidate (0 nodes left in float) and the report listed the
    static one's 291 float nodes under a bare "int8:", as if they were in the written model."""
    from tensorfold.report.optimize import _render_deploy

    rows = [
        {"name": name, "params": 10, "size_bytes": 10, "outputs": [], "max_error": 0.01, "speedup": 1.5}
        | {"within": True, "int8": {"float_nodes": nodes}}
        for name, nodes in (("int8", {"/a/Add": "input of a LayerNormalization"}), ("int8 (dynamic)", {}))
    ]
    deploy = {"objective": "latency", "chosen": "int8 (dynamic)", "candidates": rows, "latency": None}
    console = Console(record=True, width=200)
    _render_deploy(deploy, console)
    assert "/a/Add" not in console.export_text()
    deploy["chosen"] = "int8"
    console = Console(record=True, width=200)
    _render_deploy(deploy, console)
    assert "int8: 1 node(s) left in float: /a/Add" in console.export_text()
