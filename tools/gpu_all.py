"""Everything a lent GPU machine should measure, in one run of under 10 minutes (tools/gpu_all.sh).

    python3 tools/gpu_all.py --out DIR [--data fashion-mnist] [--device cuda] [--quick]

1. One full-width zoo row: ResNet-18 (width 1) trained on Fashion-MNIST on the GPU, Tucker at x16,
   recovered on the GPU, accuracy and int8 on that machine (tensorfold/bench/runner.py, the row
   `tensorfold bench --suite fashion-mnist` writes).
2. Latency of that row's original, factorized (recovered) and int8 models with onnxruntime on the
   CUDA execution provider and on the CPU provider of the same machine, at batch 1 and 32, each
   interleaved with the original (`tensorfold profile --compare`): medians and ratios.
3. Recovery speed of the factorized model (`tensorfold recover` on the GPU) at fp32, bf16 and fp16:
   steps per second from two runs of different lengths (the difference cancels the set-up).

Rows go to DIR/gpu_all.jsonl (one JSON object per line, as they finish) and DIR/gpu_all.md (the
tables docs/results/gpu-all.md takes). Without CUDA it says so in one line and exits 3, having
measured nothing; `--device cpu --quick` runs every part at toy size on the CPU, to check the
script itself (tests/tools/test_gpu_all.py), and its rows say so.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

NO_CUDA_EXIT = 3
PRECISIONS = ("fp32", "bf16", "fp16")


def probe() -> dict[str, Any]:
    """What this machine has: torch and its CUDA device, onnxruntime and its providers."""
    import onnxruntime as ort
    import torch

    cuda = torch.cuda.is_available()
    return {
        "date": str(datetime.date.today()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
    }


def no_cuda_message(env: dict[str, Any]) -> str:
    build = f"CUDA {env['torch_cuda']} build, no GPU visible" if env["torch_cuda"] else "a CPU-only build"
    return (
        f"gpu_all: no CUDA device here (torch {env['torch']}: {build}; onnxruntime {env['onnxruntime']} "
        f"providers: {', '.join(env['providers'])}): nothing measured. Run it on a machine with an NVIDIA GPU, "
        "or with --device cpu --quick to check the script itself."
    )


class Rows:
    """Rows appended to DIR/gpu_all.jsonl as they finish (an interrupted run keeps what it measured)."""

    def __init__(self, out: Path):
        self.path = out / "gpu_all.jsonl"
        self.rows: list[dict[str, Any]] = []

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(json.dumps(row), file=sys.stderr, flush=True)


def zoo_row(rows: Rows, work: Path, data: str, quick: bool) -> dict[str, Path]:
    """The zoo row (original, int8, Tucker x16 recovered, its int8); the models it wrote, by role."""
    from dataclasses import replace

    from tensorfold.bench.runner import Suite, run_suite, suite_from_options
    from tensorfold.bench.train import baseline

    if quick:
        suite = suite_from_options("smoke", models="resnet18", methods="tucker", ratios="4", steps=5, data=data)
        suite = replace(suite, recipe=replace(suite.recipe, train_limit=1000), test_limit=300, calibration=32)
    else:
        suite = suite_from_options(
            "fashion-mnist", models="resnet18", methods="tucker", ratios="16", epochs=8, steps=1000, data=data
        )
    assert isinstance(suite, Suite)
    cache = work / "baselines"
    for row in run_suite(suite, work / "zoo", cache, progress=False, log=lambda line: print(line, file=sys.stderr)):
        rows.add(dict(part="zoo", **{k: v for k, v in row.items() if not isinstance(v, (dict, list))}))
    ratio = f"x{suite.ratios[0]:g}"
    original, _ = baseline("resnet18", suite.width, suite.data, suite.recipe, cache, progress=False)
    models = work / "zoo" / "models"
    return {
        "original": original,
        "factorized": models / f"resnet18.tucker.{ratio}.onnx",
        "recovered": models / f"resnet18.tucker.{ratio}.rec.onnx",
        "recovered int8": models / f"resnet18.tucker.{ratio}.rec.int8.onnx",
        "original int8": models / "resnet18.int8.onnx",
    }


def latency(rows: Rows, models: dict[str, Path], providers: list[str], quick: bool) -> None:
    """Each model against the original on each provider, interleaved (tensorfold profile --compare)."""
    from tensorfold.api import profile

    for provider in providers:
        for role, path in models.items():
            if role == "factorized" or not path.exists():
                continue
            try:
                report = profile(
                    path,
                    provider=provider,
                    batches=(1, 32),
                    runs=5 if quick else 50,
                    warmup=2 if quick else 10,
                    compare_with=models["original"],
                )
            except Exception as exc:  # noqa: BLE001 - a provider that cannot run a model is a row, not a stop
                rows.add(dict(part="latency", provider=provider, model=role, error=str(exc).splitlines()[0][:300]))
                continue
            for batch, row in report.batches.items():
                rows.add(
                    dict(
                        part="latency",
                        provider=provider,
                        model=role,
                        batch=int(batch),
                        median_ms=row["latency"]["median_ms"],
                        original_median_ms=row["compare_latency"]["median_ms"],
                        speedup=row["speedup"],
                        params=report.params,
                    )
                )


def recovery_speed(rows: Rows, models: dict[str, Path], data: str, device: str, quick: bool) -> None:
    """Steps per second of `recover` at each precision: two runs of different lengths, so loading,
    the teacher's set-up and the final evaluation cancel. The training images go in as an unlabelled
    .npz, as a user's samples would (and the labelled split's test evaluation is not run)."""
    import numpy as np
    import onnx

    from tensorfold.datasets import load_data, prepare_inputs
    from tensorfold.recovery.config import RecoverConfig
    from tensorfold.recovery.run import recover

    short, long, batch = (1, 3, 16) if quick else (20, 220, 128)
    x = load_data(data, "train")[0][: 200 if quick else 20_000]
    name = onnx.load(str(models["original"]), load_external_data=False).graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="gpu-all-") as tmp:
        samples = Path(tmp) / "train.npz"
        np.savez(samples, **{name: prepare_inputs(x, [1, 1 if x.ndim == 3 else 3, -1, -1])})
        for precision in PRECISIONS:
            seconds = []
            try:
                for steps in (short, long):
                    start = time.perf_counter()
                    recover(
                        models["factorized"],
                        Path(tmp) / f"{precision}-{steps}.onnx",
                        teacher_path=models["original"],
                        data=str(samples),
                        cfg=RecoverConfig(
                            max_steps=steps, batch_size=batch, lr=1e-3, device=device, precision=precision, workers=0
                        ),
                        val_size=32 if quick else 1000,
                        progress=False,
                    )
                    seconds.append(time.perf_counter() - start)
            except Exception as exc:  # noqa: BLE001 - a precision the device lacks is a row, not a stop
                rows.add(
                    dict(part="recovery", device=device, precision=precision, error=str(exc).splitlines()[0][:300])
                )
                continue
            rows.add(
                dict(
                    part="recovery",
                    device=device,
                    precision=precision,
                    batch_size=batch,
                    steps_per_second=round((long - short) / max(seconds[1] - seconds[0], 1e-9), 2),
                    seconds=[round(s, 1) for s in seconds],
                    steps=[short, long],
                )
            )


def markdown(env: dict[str, Any], rows: list[dict[str, Any]], command: str, quick: bool) -> list[str]:
    gpu = env["gpu"] or "no GPU"
    lines = [
        "# One GPU run: CUDA provider latency, recovery precision, a full-width zoo row",
        "",
        f"Command: `{command}`  ",
        f"Machine: {gpu}; {env['machine']}; torch {env['torch']} (CUDA {env['torch_cuda']}), onnxruntime "
        f"{env['onnxruntime']} ({', '.join(env['providers'])})  ",
        f"Date: {env['date']}",
        "",
    ]
    if quick:
        lines += ["**A check of the script at toy size (--quick), not a measurement.**", ""]
    lines += ["## Latency (median of interleaved runs; speedup over the original)", ""]
    lines += ["| provider | model | batch | median ms | original ms | speedup |", "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        if r["part"] == "latency":
            if "error" in r:
                lines.append(f"| {r['provider']} | {r['model']} | - | failed: {r['error']} | | |")
            else:
                lines.append(
                    f"| {r['provider']} | {r['model']} | {r['batch']} | {r['median_ms']:.3f} "
                    f"| {r['original_median_ms']:.3f} | {r['speedup']:.2f}x |"
                )
    lines += ["", "## Recovery speed (`recover` on the factorized model)", ""]
    lines += ["| device | precision | batch | steps/s | vs fp32 |", "|---|---|---:|---:|---:|"]
    base = next((r["steps_per_second"] for r in rows if r["part"] == "recovery" and r.get("precision") == "fp32"), None)
    for r in rows:
        if r["part"] == "recovery":
            if "error" in r:
                lines.append(f"| {r['device']} | {r['precision']} | - | failed: {r['error']} | |")
            else:
                vs = f"{r['steps_per_second'] / base:.2f}x" if base else "-"
                lines.append(
                    f"| {r['device']} | {r['precision']} | {r['batch_size']} | {r['steps_per_second']:.1f} | {vs} |"
                )
    lines += ["", "## Zoo row (ResNet-18, Tucker)", ""]
    lines += [
        "| row | params | accuracy | params cut | latency ratio b1 (CPU provider) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r["part"] == "zoo":
            if "error" in r:
                lines.append(f"| {r['key']} | failed: {r['error']} | | | |")
            else:
                lines.append(
                    f"| {r['key']}{' int8' if r.get('int8') and not r['key'].endswith('int8') else ''} "
                    f"| {r.get('params', 0):,} | {r.get('accuracy', float('nan')):.4f} "
                    f"| {r.get('params_ratio', float('nan')):.2f}x | {r.get('latency_ratio_b1', float('nan')):.2f}x |"
                )
    if not any(p.startswith("CUDA") for p in env["providers"]):
        lines += [
            "",
            "onnxruntime here has no CUDA execution provider (the package is the CPU build): the latency "
            "table is the CPU provider of this machine only. `pip install onnxruntime-gpu` in its place "
            "and run again for CUDA EP rows.",
        ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_all.jsonl and gpu_all.md")
    parser.add_argument("--data", default="fashion-mnist", help="Fashion-MNIST: the name, or a folder of its IDX files")
    parser.add_argument("--device", default="cuda", help="torch device for training and recovery")
    parser.add_argument("--quick", action="store_true", help="toy sizes: checks the script, measures nothing")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)
    env = probe()
    if args.device.startswith("cuda") and env["gpu"] is None:
        print(no_cuda_message(env), file=sys.stderr)
        return NO_CUDA_EXIT
    args.out.mkdir(parents=True, exist_ok=True)
    rows = Rows(args.out)
    rows.add(dict(part="machine", **env))
    providers = ["cuda", "cpu"] if "CUDAExecutionProvider" in env["providers"] else ["cpu"]
    with tempfile.TemporaryDirectory(prefix="gpu-all-") as tmp:
        work = args.work or Path(tmp)
        models = zoo_row(rows, work, args.data, args.quick)
        latency(rows, models, providers, args.quick)
        recovery_speed(rows, models, args.data, args.device, args.quick)
    command = "bash tools/gpu_all.sh" if not args.quick else "python3 tools/gpu_all.py --device cpu --quick"
    text = "\n".join(markdown(env, rows.rows, command, args.quick)) + "\n"
    (args.out / "gpu_all.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
