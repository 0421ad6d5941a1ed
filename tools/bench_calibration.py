"""Data-aware compression on real models with realistic held-out inputs (docs/results/calibration.md).

    .venv/bin/python tools/bench_calibration.py --out docs/results/calibration.md

Models: the PP-OCRv4 text detector and recognizer and the PP-OCR direction classifier (from the
rapidocr wheel, see bench/real_models.py) on printed-text images (bench/text_images.py), and the
Fashion-MNIST zoo ResNet-18 / MobileNetV2 (width 0.25, 3 epochs, cached by bench/train.py) on
Fashion-MNIST. Every model gets two disjoint sample sets: `fit` (calibration) and `held` (all
errors below are measured on it and nothing is fitted to it).

Parts:
  equal    plain (weight-fitted) vs calibrated at the same --ratio: held-out error, argmax
           agreement, task accuracy where there is one; time and peak memory of both CLI runs
  bound    --max-output-error 0.01 / 0.02 / 0.05: parameters reached, held-out error
(int8 alone vs factorized + int8 against onnxruntime's quantizer: tools/bench_deploy.py)
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from tensorfold.api import optimize
from tensorfold.bench.real_models import fetch_rapidocr_model
from tensorfold.bench.report import publish
from tensorfold.bench.text_images import line_images, page_images, to_nchw
from tensorfold.graph.io import load_model
from tensorfold.paths import cache_dir

OCR_MODELS = ("det", "cls", "rec")  # rapidocr model names; their samples: ocr_samples()
OCR_RATIO, ZOO_RATIO = 2.0, 4.0


def ocr_samples(name: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    if name == "det":
        return to_nchw(page_images(n, (320, 320), seed), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), None
    if name == "cls":  # half the lines turned by 180 degrees: the label the classifier predicts
        images, turned = line_images(n, (48, 192), seed, flip_share=0.5)
        return to_nchw(images, 0.5, 0.5), turned.astype(np.int64)
    images, _ = line_images(n, (48, 320), seed)
    return to_nchw(images, 0.5, 0.5), None


def zoo_model(name: str) -> Path:
    from tensorfold.bench.train import Recipe, baseline

    return baseline(name, 0.25, "fashion-mnist", Recipe(epochs=3), cache_dir() / "baselines", progress=False)[0]


def fmnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    from tensorfold.datasets import FASHION_MNIST_ROOT, load_fashion_mnist

    x, y = load_fashion_mnist(FASHION_MNIST_ROOT, split)
    return (x.astype(np.float32) / 255.0)[:, None], y


def accuracy(path, x: np.ndarray, y: np.ndarray) -> float:
    from tensorfold.onnxrt.batching import chunks
    from tensorfold.onnxrt.sessions import make_session

    model = load_model(path)
    session = make_session(model)
    name = model.graph.input[0].name
    preds = [session.run(None, feeds)[0] for feeds in chunks(model, {name: x}, max_batch=256)]
    pred = np.concatenate(preds).reshape(len(x), -1).argmax(axis=1)
    return float(np.mean(pred == y))


def cli_run(args: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one `tensorfold` CLI run in a fresh process."""
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so a child of this (large) process
    # would report the parent's peak
    code = (
        "import sys, time; from tensorfold.cli import main; t = time.perf_counter()\n"
        "try:\n    main(sys.argv[1:], standalone_mode=False)\nfinally:\n"
        "    hwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
        "    print('BENCH', time.perf_counter() - t, int(hwm.split()[1]) / 1024, file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    line = next((row for row in done.stderr.splitlines() if row.startswith("BENCH")), None)
    if done.returncode != 0 or line is None:
        raise SystemExit(f"tensorfold {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    _, seconds, mb = line.split()
    return float(seconds), float(mb)


def argmax_agreement(v) -> str:
    shares = [o.argmax_agreement for o in v.outputs if o.argmax_agreement is not None]
    return f"{min(shares):.1%}" if shares else "-"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="det,cls,rec,resnet18,mobilenetv2")
    ap.add_argument("--parts", default="equal,bound")
    ap.add_argument("--fit", type=int, default=32, help="calibration samples per model")
    ap.add_argument("--held", type=int, default=32, help="held-out samples per model (zoo: test images)")
    ap.add_argument("--method", default="tucker")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    parts = args.parts.split(",")
    equal, bound = [], []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for name in args.models.split(","):
            labels = task = None
            if name in OCR_MODELS:
                path = fetch_rapidocr_model(name)
                ratio = OCR_RATIO
                fit, _ = ocr_samples(name, args.fit, seed=1)
                held, labels = ocr_samples(name, args.held, seed=2)
                if labels is not None:
                    task = ("direction accuracy", labels)
            else:
                path = zoo_model(name)
                ratio = ZOO_RATIO
                x, _ = fmnist("train")
                fit = x[: args.fit]
                tx, ty = fmnist("test")
                held = tx[: args.held]
                task = ("test accuracy (10k)", None)
            fit_path, held_path = tmp / f"{name}.fit.npz", tmp / f"{name}.held.npz"
            np.savez(fit_path, x=fit)
            np.savez(held_path, x=held)

            def task_accuracy(model_path):
                if task is None:
                    return "-"
                if labels is not None:
                    return f"{accuracy(model_path, held, labels):.1%}"
                return f"{accuracy(model_path, tx, ty):.2%}"

            common = dict(method=args.method, inputs=str(held_path), progress=False)
            if "equal" in parts:
                runs = {}
                for label, extra in (
                    ("plain", {}),
                    ("calibrated", {"calibration": str(fit_path)}),
                    ("calibrated, no sensitivity", {"calibration": str(fit_path), "sensitivity": False}),
                ):
                    out = tmp / f"{name}.{label.replace(' ', '').replace(',', '-')}.onnx"
                    runs[label] = (optimize(path, out, ratio=ratio, **common, **extra), out)
                cli = {}
                for label, extra in (
                    ("plain", []),
                    ("calibrated", ["--calibration", str(fit_path)]),
                    ("calibrated, no sensitivity", ["--calibration", str(fit_path), "--no-sensitivity"]),
                ):
                    cli[label] = cli_run(
                        [
                            "optimize",
                            str(path),
                            "-o",
                            str(tmp / f"{name}.cli.onnx"),
                            "--method",
                            args.method,
                            "--ratio",
                            str(ratio),
                            "--inputs",
                            str(held_path),
                            *extra,
                        ]
                    )
                base = task_accuracy(path)
                for label, (report, out) in runs.items():
                    v = report.verification
                    seconds, mb = cli.get(label, (None, None))
                    equal.append(
                        f"| {name} | {label} | {ratio:g}x | {report.after.params:,} | "
                        f"{v.max_relative_error:.4f} | {argmax_agreement(v)} | {task_accuracy(out)} "
                        f"(original {base}) | " + (f"{seconds:.1f} s, {mb:.0f} MB |" if seconds else "- |")
                    )
                    print(equal[-1], flush=True)
            if "bound" in parts:
                for e in (0.01, 0.02, 0.05):
                    report = optimize(path, None, calibration=str(fit_path), max_output_error=e, **common)
                    v = report.verification
                    tried = ", ".join(f"{t['ratio']:.2f}x{'' if t['within'] else '*'}" for t in report.budget_search)
                    reached = (
                        f"{report.before.params:,} -> {report.after.params:,} "
                        f"({report.before.params / report.after.params:.2f}x)"
                        if report.layers
                        else "none within the bound (input kept; exact folds only)"
                    )
                    bound.append(
                        f"| {name} | {e:g} | {reached} | {v.max_relative_error:.4f} | {argmax_agreement(v)} | {tried} |"
                    )
                    print(bound[-1], flush=True)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    lines = [
        "# Data-aware compression: calibrated vs plain, on held-out real inputs",
        "",
        f"Command: `.venv/bin/python tools/bench_calibration.py {shlex.join(sys.argv[1:])}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared), {platform.node()}; "
        f"onnxruntime {__import__('onnxruntime').__version__}  ",
        f"Date: {now}",
        "",
        f"Every model: {args.fit} calibration samples to fit on, {args.held} other samples held out; all errors "
        "are on the held-out samples. Error = the largest relative L2 output error over the model's outputs; "
        "argmax = agreement of per-position argmax on class axes (the recognizer's 6,625-way per-position "
        "softmax, the classifiers' logits).",
        "",
    ]
    if equal:
        lines += [
            "## Plain vs calibrated at equal parameters",
            "",
            f"`--method {args.method} --ratio R` (the factorizable layers together hold R times fewer "
            "parameters), with and without `--calibration`; time and peak RSS of the whole CLI run "
            "(load, statistics, sensitivity probe, factorization, verification), one run each.",
            "",
            "| model | run | ratio | params after | held-out error | argmax agree | task accuracy | CLI time, peak RSS |",
            "|---|---|---|---|---|---|---|---|",
            *equal,
            "",
        ]
    if bound:
        lines += [
            "## `--max-output-error E`",
            "",
            "The bound is checked on the held-out share of the calibration samples inside the run (a quarter "
            "of them); the error column is on the separate held-out set (`--inputs`), so it may exceed E. "
            "Ratios tried in order; * = over the bound.",
            "",
            "| model | E | params | held-out error | argmax agree | ratios tried |",
            "|---|---|---|---|---|---|",
            *bound,
            "",
        ]
    publish(lines, args.out)


if __name__ == "__main__":
    main()
