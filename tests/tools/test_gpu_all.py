"""tools/gpu_all.sh: on a machine without CUDA one line and exit 3; its parts run (on the CPU, at toy
size) so a lent GPU's minutes are not spent finding a bug."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _tool():
    spec = importlib.util.spec_from_file_location("gpu_all", ROOT / "tools" / "gpu_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(
    torch.cuda.is_available(),
    reason="the no-CUDA message is what this checks; here torch sees a GPU, so the script measures instead",
)
def test_without_cuda_one_line_and_exit_3(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), PY=sys.executable)
    done = subprocess.run(["bash", "tools/gpu_all.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 3
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA device here" in lines[0] and "--device cpu --quick" in lines[0]
    assert not out.exists()  # nothing measured, nothing written


def test_latency_and_recovery_speed_rows(tmp_path):
    """The latency and recovery parts on the demo CNN and a factorization of it, on the CPU."""
    from tensorfold.api import optimize

    tool = _tool()
    original = ROOT / "tensorfold" / "data" / "fmnist_cnn.onnx"
    factorized = tmp_path / "small.onnx"
    optimize(original, factorized, ratio=2, verify=False, progress=False)
    models = {"original": original, "factorized": factorized, "recovered": factorized}
    rows = tool.Rows(tmp_path)
    tool.latency(rows, models, ["cpu"], quick=True)
    tool.recovery_speed(rows, models, "fashion-mnist", "cpu", quick=True)
    written = [json.loads(line) for line in (tmp_path / "gpu_all.jsonl").read_text().splitlines()]
    assert written == rows.rows
    lat = [r for r in rows.rows if r["part"] == "latency"]
    assert {(r["model"], r["batch"]) for r in lat} == {(m, b) for m in ("original", "recovered") for b in (1, 32)}
    assert all(r["median_ms"] > 0 and r["speedup"] > 0 for r in lat)
    rec = {r["precision"]: r for r in rows.rows if r["part"] == "recovery"}
    assert set(rec) == set(tool.PRECISIONS)
    assert rec["fp32"]["steps_per_second"] > 0, rec["fp32"]
    text = "\n".join(tool.markdown(tool.probe(), rows.rows, "cmd", quick=True))
    assert "not a measurement" in text and "| cpu | fp32 | 16 |" in text and "no CUDA execution provider" in text


@pytest.mark.slow
def test_quick_run_end_to_end(tmp_path):
    """The whole script at toy size on the CPU (2 minutes here): all three parts, no failed row."""
    done = subprocess.run(
        [sys.executable, "tools/gpu_all.py", "--out", str(tmp_path), "--device", "cpu", "--quick"],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    text = (tmp_path / "gpu_all.md").read_text()
    assert "failed" not in text
    for part in ("## Latency", "## Recovery speed", "## Zoo row"):
        assert part in text
