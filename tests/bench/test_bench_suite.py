"""The benchmark suite end to end on a tiny subset, report generation, and resume."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from tensorfold.bench.report import load_rows, markdown, pareto, write_report
from tensorfold.bench.runner import SUITES, Suite, run_suite
from tensorfold.cli import main
from tests.helpers.data import needs_data


def _tiny():
    cfg = dict(SUITES["smoke"])
    cfg.update(recipe=replace(cfg["recipe"], train_limit=1000), test_limit=300, steps=3, calibration=32)
    return Suite(**cfg, label="test")


@needs_data
def test_smoke_suite_report_and_resume(tmp_path):
    out = tmp_path / "results"
    rows = run_suite(_tiny(), out, tmp_path / "cache", progress=False, log=lambda m: None)
    keys = {r["key"] for r in rows}
    assert keys == {
        "resnet18/w0.125/original",
        "resnet18/w0.125/original/int8",
        "resnet18/w0.125/tucker/x4",
        "resnet18/w0.125/tucker/x4/int8",
    }
    row = next(r for r in rows if r["key"] == "resnet18/w0.125/tucker/x4")
    for field in (
        "params_ratio",
        "flops_ratio",
        "accuracy",
        "accuracy_loss",
        "latency_ratio_b1",
        "size_ratio",
        "command",
        "date",
        "machine",
        "onnxruntime",
    ):
        assert field in row
    assert row["params_ratio"] > 2 and row["peak_memory_mb_b32"] > 0
    lines = (out / "rows.jsonl").read_text().splitlines()
    # resume: a finished suite adds nothing; a lost row is recomputed alone
    run_suite(_tiny(), out, tmp_path / "cache", progress=False, log=lambda m: None)
    assert (out / "rows.jsonl").read_text().splitlines() == lines
    (out / "rows.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    logged = []
    run_suite(_tiny(), out, tmp_path / "cache", progress=False, log=logged.append)
    assert len(logged) == 2 and all("tucker/x4" in m for m in logged)  # the pair (float and int8) redone
    keys = [json.loads(line)["key"] for line in (out / "rows.jsonl").read_text().splitlines()]
    assert sorted(keys) == sorted(set(keys))  # the float row measured again replaced its old line
    row = json.loads((out / "rows.jsonl").read_text().splitlines()[-1])
    # a row's ratio is of its own comparison, whose timing of the original it carries
    assert row["original_latency_ms_b1"] > 0 and row["test_samples"] == 300
    # --steps 0: the compressed model as it is, no recovery
    plain = run_suite(replace(_tiny(), steps=0), tmp_path / "plain", tmp_path / "cache", progress=False, log=print)
    assert next(r for r in plain if r["key"] == "resnet18/w0.125/tucker/x4")["recover_steps"] == 0
    info = write_report(out, tmp_path / "report")
    assert Path(info["markdown"]).read_text().count("| tucker |") == 2
    assert json.loads(Path(info["json"]).read_text()) and info["plots"]


def test_report_from_stored_rows(tmp_path):
    base = {
        "model": "vgg16",
        "width": 0.25,
        "label": "x",
        "date": "2026-01-01T00:00:00",
        "machine": "m",
        "onnxruntime": "1",
        "torch": "2",
        "baseline_train": {"data": "d", "recipe": {"epochs": 1}, "device": "cpu", "train_seconds": 1},
    }
    rows = [
        dict(
            base,
            key="a",
            method="original",
            ratio=1,
            int8=False,
            params_ratio=1,
            flops_ratio=1,
            size_ratio=1,
            accuracy=0.9,
            accuracy_loss=0,
            latency_ratio_b1=1,
            latency_ratio_b32=1,
        ),
        dict(
            base,
            key="b",
            method="tucker",
            ratio=8,
            int8=False,
            params_ratio=8,
            flops_ratio=5,
            size_ratio=7.5,
            accuracy=0.88,
            accuracy_loss=0.02,
            compressed_accuracy=0.5,
            latency_ratio_b1=1.4,
            latency_ratio_b32=2.0,
        ),
        dict(base, key="c", method="cp", ratio=8, int8=False, error="boom"),
    ]
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    text = markdown(load_rows(tmp_path))
    assert "### vgg16" in text and "failed: boom" in text and "88.00%" in text
    assert pareto([(1, 0.9), (8, 0.88), (4, 0.8)]) == [(1, 0.9), (8, 0.88)]
    info = write_report(tmp_path, tmp_path / "out")
    assert info["rows"] == 3 and len(info["plots"]) == 1


def test_bench_bad_input(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["bench", "--models", "alexnet", "-o", str(tmp_path)])
    assert result.exit_code == 2 and "unknown model" in result.output
    result = runner.invoke(main, ["bench", "report", str(tmp_path / "none")])
    assert result.exit_code == 2 and "no benchmark rows" in result.output
    for args, message in (
        (["--ratios", "0.5,4"], "each ratio must be > 1 (got 0.5)"),
        (["--epochs", "0"], "0 is not in the range x>=1"),
    ):
        result = runner.invoke(main, ["bench", "-o", str(tmp_path / "new"), *args])
        assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "new").exists()


@needs_data
def test_a_width_that_cannot_be_trained_here_is_refused_before_any_work(tmp_path):
    """--width 100 made ResNet-18 110 billion parameters; the kernel killed the run at 23 GB."""
    from tensorfold.bench.train import training_bytes

    small, full = (training_bytes("resnet18", w, 1, (28, 28), 128) for w in (0.25, 1.0))
    assert 0 < small < full < 2**32  # full width: some GB, as trained on the benchmark's GPU
    result = CliRunner().invoke(main, ["bench", "-o", str(tmp_path / "wide"), "--width", "100"])
    assert result.exit_code == 2 and "needs about" in result.output and "smaller --width" in result.output
    assert not (tmp_path / "wide").exists()


def test_a_row_cut_short_is_left_out_of_the_report_and_a_bad_line_is_named(tmp_path):
    from tensorfold.errors import TensorfoldError

    (tmp_path / "rows.jsonl").write_text('{"key": "a"}\n{"key": "b", "acc')
    assert [r["key"] for r in load_rows(tmp_path)] == ["a"]
    assert (tmp_path / "rows.jsonl").read_text().endswith('"acc')  # the report writes nothing into the results
    (tmp_path / "rows.jsonl").write_text('{"key": "a"}\n{"key": "b", "acc\n{"key": "c"}\n')
    with pytest.raises(TensorfoldError, match="line 2 is not a benchmark row"):
        load_rows(tmp_path)


@pytest.mark.parametrize("name,params", [("resnet18", 11_172_810), ("vgg16", 14_722_890), ("mobilenetv2", 2_236_106)])
def test_zoo_models_build_export_and_factorize(tmp_path, name, params):
    import torch

    from tensorfold.api import optimize
    from tensorfold.bench.zoo import build
    from tensorfold.export import export_onnx

    assert sum(p.numel() for p in build(name).parameters()) == params  # the known full-width sizes
    small = build(name, width=0.125).eval()
    path = export_onnx(small, torch.randn(1, 1, 28, 28), tmp_path / f"{name}.onnx")
    report = optimize(path, tmp_path / "o.onnx", method="tucker", ratio=4, progress=False)
    assert report.layers and report.verification.max_relative_error < 1.5
