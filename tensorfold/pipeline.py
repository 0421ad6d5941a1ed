"""The end of the user's plan in one call: architecture search -> final training distilled from a
teacher -> low-rank decomposition -> recovery, each stage's model kept and measured on the test split.

    from tensorfold.pipeline import run_pipeline
    report = run_pipeline(teacher="model.onnx", output_dir="pipe", budget_minutes=10)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from tensorfold.errors import TensorfoldError
from tensorfold.report import PipelineReport

# the device the user's plan targets (shared/DESIGN.md): its latency is predicted, never measured here
TARGET_DEVICE = "rx580"


def _measure_stages(stages: list[tuple[str, Path]], test, threads: int, target: str = TARGET_DEVICE) -> list[dict]:
    """For every stage's model: test accuracy, params, file bytes, FLOPs, batch-1 latency measured on
    the CPU provider (all stages timed round-robin in one loop, so a burst of load on a shared host
    hits them alike) and predicted for the RX 580, and the peak memory one batch-1 call adds to a
    fresh onnxruntime process (runtime.memory.measured_peak_bytes). A `target` device other than the
    RX 580 (and the CPU provider) is predicted too, as TARGET_ms."""
    from tensorfold.graph.io import load_model
    from tensorfold.graph.model import count_params
    from tensorfold.graph.stats import model_stats
    from tensorfold.runtime.devices import get_device
    from tensorfold.runtime.evaluation import evaluate_onnx
    from tensorfold.runtime.latency import measure_interleaved
    from tensorfold.runtime.latency_model import Predicted
    from tensorfold.runtime.memory import measured_peak_bytes

    predicted = {name: Predicted(get_device(name)) for name in dict.fromkeys([TARGET_DEVICE, target]) if name != "cpu"}
    rows, timed = [], []
    for stage, path in stages:
        model = load_model(path)
        name = model.graph.input[0].name
        shapes = {name: [1, *test[0].shape[1:]]}
        stats = model_stats(model, shapes)
        data = Path(str(path) + ".data")
        rows.append(
            {
                "stage": stage,
                "model": str(path),
                "test_accuracy": evaluate_onnx(model, test[0], test[1], threads=threads),
                "params": count_params(model),  # int8 weights count too
                "size_bytes": Path(path).stat().st_size + (data.stat().st_size if data.exists() else 0),
                "flops": stats.flops,
                **{f"{name}_ms": round(device.ms(model, shapes), 4) for name, device in predicted.items()},
                "peak_bytes": measured_peak_bytes(path, {name: test[0][:1]}),
            }
        )
        timed.append((model, {name: test[0][:1]}))
    for row, stats in zip(rows, measure_interleaved(timed, "cpu", threads, warmup=5, rounds=50)):
        row["host_ms"] = stats.median
    return rows


INT8_NOT_KEPT = "recovered (int8 not kept)"


def int8_outcome(deploy: dict | None) -> tuple[str, str | None]:
    """The int8 stage's name, and why int8 was not kept where the deploy search (calibration/deploy.py)
    chose the float model: int8 over the bound, or slower on the CPU provider."""
    chosen = (deploy or {}).get("chosen", "")
    if "int8" in chosen:
        return "recovered + int8", None
    tried = [c for c in (deploy or {}).get("candidates", []) if "int8" in c["name"]]
    detail = "; ".join(
        f"{c['name']}: held-out error {c['max_error']:.3g} ({'within' if c['within'] else 'over'} the bound)"
        + (f", {c['speedup']:.2f}x the speed" if c.get("speedup") is not None else "")
        for c in tried
    )
    return INT8_NOT_KEPT, f"int8 was not kept: the search chose '{chosen}'" + (f" ({detail})" if detail else "")


def final_stage(stages: list[dict], target: str) -> tuple[dict, str | None]:
    """The pipeline's answer for its target: the last stage (int8), unless it is slower there than the
    stage before it (recovered), and then that one, with why. On the RX 580 the int8 model is
    predicted 3x slower than the float one (no fast int8 on Polaris, and every Quantize/Dequantize
    node is one more kernel: docs/results/pipeline.md), while it runs faster on the CPU provider.
    The CPU provider is measured: there int8 must be 5% slower to lose (timing noise)."""
    last, before = stages[-1], stages[-2]
    if last["stage"] == INT8_NOT_KEPT:  # its file holds the float model the deploy search kept, not int8
        return before, None
    key = "host_ms" if target == "cpu" else f"{target}_ms"
    if last[key] <= before[key] * (1.05 if target == "cpu" else 1.0):
        return last, None
    how = "measured on the CPU provider" if target == "cpu" else "predicted"
    return before, (
        f"the answer for {target} is {before['model']} ({before['stage']}): '{last['stage']}' is "
        f"{last[key] / before[key]:.2f}x its latency there ({how}); {last['model']} is kept for other targets"
    )


def worse_than_teacher(teacher: dict, answer: dict, target: str) -> str | None:
    """A warning when the answer is both less accurate than the teacher and slower on the target:
    then the teacher itself is the better model to deploy (a QA run's NAS network, too small for its
    budget, lost points and speed both, and the report said nothing)."""
    key = "host_ms" if target == "cpu" else f"{target}_ms"
    if answer["test_accuracy"] >= teacher["test_accuracy"] or answer[key] < teacher[key]:
        return None
    return (
        f"warning: the answer {answer['model']} is less accurate than the teacher "
        f"({100 * (teacher['test_accuracy'] - answer['test_accuracy']):.1f} points) and slower on {target} "
        f"({teacher[key] / answer[key]:.2f}x its speed), with {answer['params']:,} parameters against "
        f"{teacher['params']:,}: the teacher is the better model to deploy (more --budget-minutes may change that)"
    )


def against_teacher(stages: list[dict]) -> list[dict]:
    """Each later stage against the first (the teacher): the plan's four numbers. Compression in
    parameters and in file bytes (int8 weights are a quarter of the bytes), accuracy lost in points,
    speedup measured on the CPU provider and predicted for the RX 580, peak memory saved."""
    base = stages[0]
    out = []
    for s in stages[1:]:
        peak = s.get("peak_bytes")
        out.append(
            {
                "stage": s["stage"],
                "params_x": base["params"] / max(s["params"], 1),
                "bytes_x": base["size_bytes"] / max(s["size_bytes"], 1),
                "accuracy_loss_pt": 100 * (base["test_accuracy"] - s["test_accuracy"]),
                "cpu_speedup": base["host_ms"] / s["host_ms"],
                f"{TARGET_DEVICE}_speedup": base[f"{TARGET_DEVICE}_ms"] / s[f"{TARGET_DEVICE}_ms"],
                "memory_saved": (1 - peak / base["peak_bytes"]) if peak and base.get("peak_bytes") else None,
            }
        )
    return out


# what a pipeline writes in its --output-dir (outputs.OutputFolder: nothing else there is touched)
OUTPUT_NAMES = (
    "nas",
    "nas.onnx",
    "factorized.onnx",
    "recovered.onnx",
    "recovered.onnx.ckpt",
    "calibration.npz",
    "recovered.int8.onnx",
    "*.onnx.data",
)


def run_pipeline(
    *,
    teacher: str | os.PathLike,
    output_dir: str | os.PathLike,
    data: str = "fashion-mnist",
    strategy: str = "evolution",
    budget_minutes: float = 10.0,
    device: str | None = None,
    final_steps: int | None = None,
    final_channels: int = 16,
    method: str = "auto",
    ratio: float = 2.0,
    recover_steps: int = 300,
    threads: int = 0,
    seed: int = 0,
    hardware_aware: bool = True,
    target: str = TARGET_DEVICE,
    progress: bool = True,
    **nas_options,
) -> PipelineReport:
    """hardware_aware: the decomposition keeps a layer's chain only where it is faster on the CPU
    provider, and the model only if it is faster as a whole (see planning/hardware_aware.py).
    target: the device the answer is for ("cpu": the CPU provider, measured; else a device profile,
    predicted): the int8 stage is the answer only where it is not slower there (final_stage)."""
    from tensorfold.graph.io import load_model
    from tensorfold.outputs import OutputFolder, guard_inputs
    from tensorfold.passes import METHODS
    from tensorfold.recovery.checkpoints import checkpoint_folder
    from tensorfold.search.nas.artifacts import OUTPUT_NAMES as NAS_NAMES

    # everything that can be refused is refused before the output folder is made or anything runs
    if method not in METHODS:
        raise TensorfoldError(f"--method {method}: choose from {', '.join(METHODS)}")
    if not ratio > 1:
        raise TensorfoldError(f"--ratio must be > 1 (got {ratio:g})")
    if target != "cpu":
        from tensorfold.runtime.devices import DEVICES

        if target not in DEVICES:
            raise TensorfoldError(
                f"--target {target}: choose cpu (measured) or a device profile: {', '.join(sorted(DEVICES))}"
            )
    load_model(teacher)
    # the teacher and the data are inputs for the whole run: no stage may write onto or into them
    with guard_inputs(teacher, data):
        # staged: the stages are written aside and moved into place together at the end, so a run that
        # fails or is interrupted leaves the folder as it was (an earlier run's models not mixed with
        # this one's); there is nothing to resume from
        folder = OutputFolder(output_dir, "--output-dir", OUTPUT_NAMES, staged=True).check()
        if not folder.path.absolute().parent.is_dir():
            raise TensorfoldError(f"--output-dir {folder.path}: folder {folder.path.parent} does not exist")
        # the stages' own folders too, before any work
        OutputFolder(folder.path / "nas", "--output-dir", NAS_NAMES).check()
        checkpoint_folder(folder.path / "recovered.onnx.ckpt").check()
        with folder.open().writing():
            report = _run(
                folder,
                teacher=teacher,
                data=data,
                strategy=strategy,
                budget_minutes=budget_minutes,
                device=device,
                final_steps=final_steps,
                final_channels=final_channels,
                method=method,
                ratio=ratio,
                recover_steps=recover_steps,
                threads=threads,
                seed=seed,
                hardware_aware=hardware_aware,
                target=target,
                progress=progress,
                **nas_options,
            )
            # the recovery's checkpoints served this run only; an earlier run's files this one did
            # not write again (its int8 model, when this run kept none) would read as this run's
            shutil.rmtree(folder.file("recovered.onnx.ckpt"), ignore_errors=True)
            folder.commit(stale=OUTPUT_NAMES)
            return report


def _run(
    folder,
    *,
    teacher,
    data,
    strategy,
    budget_minutes,
    device,
    final_steps,
    final_channels,
    method,
    ratio,
    recover_steps,
    threads,
    seed,
    hardware_aware,
    target,
    progress,
    **nas_options,
) -> PipelineReport:
    from tensorfold.api import optimize, recover, search_nas
    from tensorfold.datasets import load_data, prepare_inputs
    from tensorfold.graph.io import load_model
    from tensorfold.outputs import atomic_path
    from tensorfold.recovery.config import RecoverConfig
    from tensorfold.search.nas.options import IMAGE

    final = folder.path  # where the stages land once the run succeeds (they are written aside until then)
    nas_model = folder.file("nas.onnx")
    nas = search_nas(
        strategy=strategy,
        data=data,
        budget_minutes=budget_minutes,
        device=device,
        threads=threads,
        teacher=teacher,
        output_dir=folder.file("nas"),
        output=nas_model,
        final_steps=final_steps,
        final_channels=final_channels,
        seed=seed,
        progress=progress,
        **nas_options,
    )
    factorized = folder.file("factorized.onnx")
    opt = optimize(
        nas_model,
        factorized,
        method=method,
        ratio=ratio,
        progress=progress,
        seed=seed,
        hardware_aware=hardware_aware,
        threads=threads,
    )
    decomposition = f"{method}, ratio {ratio:g}" + (", hardware-aware" if hardware_aware else "")
    notes = []
    if hardware_aware and not opt.layers:
        # a NAS-sized network's layers are too small for a chain to be faster on the CPU: say so,
        # and cut the parameters instead (the stage is then smaller, not faster)
        why = sorted({s.reason for s in opt.skipped if s.reason.startswith("hardware-aware")}) or opt.notes[-1:]
        notes.append(
            f"hardware-aware decomposition rewrote no layer ({'; '.join(why)}); fell back to "
            f"--ratio {ratio:g} by parameters"
        )
        opt = optimize(nas_model, factorized, method=method, ratio=ratio, progress=progress, seed=seed, threads=threads)
        decomposition = f"{method}, ratio {ratio:g}, by parameters"
    recovered = folder.file("recovered.onnx")
    folder.file("recovered.onnx.ckpt")
    rec = recover(
        factorized,
        recovered,
        teacher_path=nas_model,
        data=data,
        cfg=RecoverConfig(max_steps=recover_steps, seed=seed, threads=threads),
        progress=progress,
    )
    # int8 on top, calibrated on training images (static QDQ, per channel)
    train_x, _, _ = load_data(data, "train", IMAGE[1:], IMAGE[0])
    calibration = folder.file("calibration.npz")
    with atomic_path(calibration, suffix=".npz") as tmp:
        np.savez(tmp, **{load_model(recovered).graph.input[0].name: prepare_inputs(train_x[:256], [1, *IMAGE], None)})
    int8 = folder.file("recovered.int8.onnx")
    quantized = optimize(
        recovered, int8, method="none", int8=True, calibration=calibration, progress=progress, seed=seed
    )
    int8_stage, why = int8_outcome(quantized.deploy)
    if why:
        notes.append(why)
    measured = [
        ("teacher", Path(teacher)),
        ("NAS, distilled", nas_model),
        (f"decomposed ({decomposition})", factorized),
        ("recovered", recovered),
    ]
    if int8_stage == INT8_NOT_KEPT:
        int8.unlink()  # it would be a copy of recovered.onnx under an int8 name (and timed as a stage of its own)
    else:
        measured.append((int8_stage, int8))
    x, y, _ = load_data(data, "test", IMAGE[1:], IMAGE[0])
    test = (prepare_inputs(x, [1, *IMAGE], None), np.asarray(y))
    stages = _measure_stages(measured, test, threads, target)
    for stage in stages:  # the paths the user will find them at
        stage["model"] = str(final / Path(stage["model"]).name) if stage["stage"] != "teacher" else stage["model"]
    answer, why = final_stage(stages, target)
    if why:
        notes.append(why)
    if (worse := worse_than_teacher(stages[0], answer, target)) is not None:
        notes.append(worse)
    return PipelineReport(
        output_dir=str(final),
        stages=stages,
        against_teacher=against_teacher(stages),
        final={"target": target, "stage": answer["stage"], "model": answer["model"]},
        nas={
            "strategy": nas.strategy,
            "candidates": nas.candidates,
            "proxy": nas.proxy,
            "search_seconds": nas.search_seconds,
            "chosen": nas.chosen,
        },
        notes=notes,
        optimize={
            "layers_rewritten": len(opt.layers),
            "notes": opt.notes,
            "latency": opt.latency,
            "verification": opt.verification.as_dict() if opt.verification else None,
        },
        recover={"steps": rec.steps, "stop": rec.stop, "seconds": rec.seconds},
    )
