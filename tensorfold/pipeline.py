"""The end of the user's plan in one call: architecture search -> final training distilled from a
teacher -> low-rank decomposition -> recovery, each stage's model kept and measured on the test split.

    from tensorfold.pipeline import run_pipeline
    report = run_pipeline(teacher="model.onnx", output_dir="pipe", budget_minutes=10)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tensorfold.errors import TensorfoldError
from tensorfold.report import PipelineReport


def _measure_stage(stage: str, path: Path, test, threads: int) -> dict:
    from tensorfold.graph.io import load_model
    from tensorfold.graph.stats import model_stats
    from tensorfold.runtime.evaluation import evaluate_onnx
    from tensorfold.runtime.latency import measure

    model = load_model(path)
    name = model.graph.input[0].name
    shape = [1, *test[0].shape[1:]]
    feeds = {name: test[0][:1]}
    stats = model_stats(model, {name: shape})
    return {"stage": stage, "model": str(path), "test_accuracy": evaluate_onnx(model, test[0], test[1], threads=threads),
            "params": stats.params, "flops": stats.flops,
            "host_ms": measure(model, feeds, "cpu", threads, warmup=5, runs=50).median}


def run_pipeline(*, teacher: str | os.PathLike, output_dir: str | os.PathLike, data: str = "fashion-mnist",
                 strategy: str = "evolution", budget_minutes: float = 10.0, device: str | None = None,
                 final_steps: int = 600, final_channels: int = 16, method: str = "auto", ratio: float = 2.0,
                 recover_steps: int = 300, threads: int = 0, seed: int = 0, hardware_aware: bool = True,
                 progress: bool = True, **nas_options) -> PipelineReport:
    """hardware_aware: the decomposition keeps a layer's chain only where it is faster on the CPU
    provider, and the model only if it is faster as a whole (see planning/hardware_aware.py)."""
    from tensorfold.api import optimize
    from tensorfold.datasets import load_data, prepare_inputs
    from tensorfold.recovery.finetune import RecoverConfig
    from tensorfold.recovery.run import recover
    from tensorfold.search.nas.run import IMAGE, search_nas

    from tensorfold.passes import METHODS
    from tensorfold.graph.io import load_model
    from tensorfold.outputs import check_output_dir, guard_inputs

    # everything that can be refused is refused before the output folder is made or anything runs
    if method not in METHODS:
        raise TensorfoldError(f"--method {method}: choose from {', '.join(METHODS)}")
    if not ratio > 1:
        raise TensorfoldError(f"--ratio must be > 1 (got {ratio:g})")
    load_model(teacher)
    with guard_inputs(teacher):
        out = check_output_dir(output_dir, create=False)
        if not Path(output_dir).parent.is_dir():
            raise TensorfoldError(f"--output-dir {out}: folder {out.parent} does not exist")
        out.mkdir(exist_ok=True)
    nas = search_nas(strategy=strategy, data=data, budget_minutes=budget_minutes, device=device, threads=threads,
                     teacher=teacher, output_dir=out / "nas", output=out / "nas.onnx", final_steps=final_steps,
                     final_channels=final_channels, seed=seed, progress=progress, **nas_options)
    factorized = out / "factorized.onnx"
    opt = optimize(out / "nas.onnx", factorized, method=method, ratio=ratio, progress=progress, seed=seed,
                   hardware_aware=hardware_aware, threads=threads)
    recovered = out / "recovered.onnx"
    rec = recover(factorized, recovered, teacher_path=out / "nas.onnx", data=data,
                  cfg=RecoverConfig(max_steps=recover_steps, seed=seed, threads=threads), progress=progress)
    x, y, _ = load_data(data, "test", IMAGE[1:], IMAGE[0])
    test = (prepare_inputs(x, [1, *IMAGE], None), np.asarray(y))
    stages = [_measure_stage("teacher", Path(teacher), test, threads),
              _measure_stage("NAS, distilled", out / "nas.onnx", test, threads),
              _measure_stage(f"decomposed ({method}, ratio {ratio:g})", factorized, test, threads),
              _measure_stage("recovered", recovered, test, threads)]
    nas_summary = {k: nas[k] for k in ("strategy", "candidates", "proxy", "search_seconds", "chosen")}
    return PipelineReport({
        "output_dir": str(out), "stages": stages, "nas": nas_summary,
        "optimize": {"layers_rewritten": len(opt.layers), "notes": opt.notes, "latency": opt.latency,
                     "verification": opt.verification.as_dict() if opt.verification else None},
        "recover": {k: rec[k] for k in ("steps", "stop", "seconds")}})
