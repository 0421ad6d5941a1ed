"""Recovery on the user's own data: a label-free detector, an image folder, several processes.

    .venv/bin/python tools/bench_recovery_scale.py [--parts label-free,folder,ddp] [--out FILE]

label-free: the real PP-OCRv4 text detector (RapidOCR 1.4.4) cut 2x with Tucker-2, recovered
  with `tensorfold recover` from a flat folder of unlabelled synthetic text pages (no labels, no
  class output: distilled by output matching, selected on the held-out output error). Judged on
  other pages never seen in training: `tensorfold verify` of the factorized and the recovered
  model against the original.
folder: Fashion-MNIST train images written as PNGs in class subfolders (the ImageFolder layout)
  against the same images from Debian's IDX files, the demo CNN cut 8x recovered the same way on
  each; test accuracy on the IDX test split.
ddp: the same recovery under `torchrun --nproc-per-node 1` and `2` (gloo, one thread per
  process): seconds per step and test accuracy.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tensorfold.bench.report import publish

PY = sys.executable


def tensorfold(*args, env=None, launcher=()) -> tuple[dict, float]:
    start = time.perf_counter()
    done = subprocess.run(
        [PY, *launcher, "-m", "tensorfold", *map(str, args), "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"tensorfold {' '.join(map(str, args))} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout), seconds


def label_free(tmp: Path, pages: int, steps: int, lr: float) -> list[str]:
    from PIL import Image

    from tensorfold.bench.real_models import fetch_rapidocr_model
    from tensorfold.bench.text_images import page_images, to_nchw

    det = fetch_rapidocr_model("det")
    folder = tmp / "pages"
    folder.mkdir()
    for i, img in enumerate(page_images(pages, size=(256, 256), seed=1)):
        Image.fromarray(img).save(folder / f"page{i:04d}.png")
    held = to_nchw(page_images(32, size=(256, 256), seed=2), (0.5,) * 3, (0.5,) * 3)
    np.savez(tmp / "held.npz", x=held)
    small, rec = tmp / "det.tucker2.onnx", tmp / "det.rec.onnx"
    opt, _ = tensorfold(
        "optimize", det, "-o", small, "--method", "tucker", "--ratio", 2, "--shape", "x:1,3,256,256", "--no-verify"
    )
    report, seconds = tensorfold(
        "recover",
        small,
        "--teacher",
        det,
        "--data",
        folder,
        "--normalize",
        "0.5,0.5",
        "-o",
        rec,
        "--max-steps",
        steps,
        "--batch-size",
        8,
        "--lr",
        lr,
        "--eval-every",
        max(1, steps // 6),
    )
    before, _ = tensorfold("verify", det, small, "--inputs", tmp / "held.npz")
    after, _ = tensorfold("verify", det, rec, "--inputs", tmp / "held.npz")
    evals = ", ".join(
        f"{e['step']}: {e['output_error']:.4f}"
        for e in json.loads((Path(str(rec) + ".ckpt") / "history.json").read_text())["evals"]
    )
    return [
        "## Label-free: PP-OCRv4 det cut 2x, recovered from unlabelled pages",
        "",
        f"`tensorfold optimize ch_PP-OCRv4_det_infer.onnx --method tucker --ratio 2` "
        f"({opt['params_before']:,} -> {opt['params_after']:,} params), then `tensorfold recover --teacher "
        f"ch_PP-OCRv4_det_infer.onnx --data pages/ --normalize 0.5,0.5 --max-steps {steps} --batch-size 8 "
        f"--lr {lr:g}` on a flat folder of {pages} synthetic 256x256 text pages (no labels).",
        "",
        "| | factorized | recovered |",
        "|---|---:|---:|",
        f"| output error on 32 other pages (`tensorfold verify`) | {before['max_relative_error']:.4f} | "
        f"{after['max_relative_error']:.4f} |",
        f"| held-out validation output error (recover's {report['validation']}) | "
        f"{report['val_before']['output_error']:.4f} | {report['val_after']['output_error']:.4f} |",
        "",
        f"{report['steps']} steps in {seconds:.0f} s (whole command; {report['seconds']:.0f} s in recover), "
        f"{report['features_matched']} factorized layers matched to the teacher's; stop: {report['stop']}. "
        f"Validation by step: {evals}. Outputs: {report['outputs']}.",
        "",
    ]


def _fmnist(n: int):
    from tensorfold.datasets import load_fashion_mnist

    x, y = load_fashion_mnist(split="train")
    return x[:n], y[:n]


def folder_vs_idx(tmp: Path, n: int, steps: int) -> list[str]:
    from PIL import Image

    from tensorfold.demo import demo_model_path

    x, y = _fmnist(n)
    root = tmp / "fmnist_png"
    for k in range(10):
        (root / str(k)).mkdir(parents=True)
    for i, (img, label) in enumerate(zip(x, y)):
        Image.fromarray(img).save(root / str(int(label)) / f"{i:05d}.png")
    np.savez(tmp / "fmnist.npz", x=x, y=y)
    teacher = demo_model_path()
    small = tmp / "cnn.tucker8.onnx"
    tensorfold("optimize", teacher, "-o", small, "--method", "tucker", "--ratio", 8, "--no-verify")
    rows = []
    for label, data in (("IDX (as an .npz of the same images)", tmp / "fmnist.npz"), ("PNG class folders", root)):
        report, seconds = tensorfold(
            "recover",
            small,
            "--teacher",
            teacher,
            "--data",
            data,
            "-o",
            tmp / f"rec_{data.stem}.onnx",
            "--max-steps",
            steps,
            "--batch-size",
            64,
        )
        acc = _test_accuracy(tmp / f"rec_{data.stem}.onnx")
        loaded = report["data"].replace(f"{tmp}/", "")
        rows.append(f"| {label} | {loaded} | {report['val_after']['accuracy']:.2%} | {acc:.2%} | {seconds:.0f} s |")
    return [
        "## An ImageFolder gives what the IDX loader gives",
        "",
        f"The first {n:,} Fashion-MNIST training images, once from Debian's IDX files and once written as "
        f"PNGs in class subfolders; the demo CNN cut 8x (`--method tucker --ratio 8`), `tensorfold recover "
        f"--max-steps {steps} --batch-size 64`, test accuracy on the 10,000 IDX test images.",
        "",
        "| data | loaded as | validation accuracy | test accuracy | time |",
        "|---|---|---:|---:|---:|",
        *rows,
        "",
    ]


def _test_accuracy(path: Path) -> float:
    from tensorfold.datasets import load_fashion_mnist, to_model_input
    from tensorfold.runtime.evaluation import evaluate_onnx

    x, y = load_fashion_mnist(split="test")
    return evaluate_onnx(path, to_model_input(x), y)


def ddp(tmp: Path, n: int, steps: int) -> list[str]:
    from tensorfold.demo import demo_model_path

    x, y = _fmnist(n)
    np.savez(tmp / "ddp.npz", x=x, y=y)
    teacher = demo_model_path()
    small = tmp / "ddp.tucker8.onnx"
    tensorfold("optimize", teacher, "-o", small, "--method", "tucker", "--ratio", 8, "--no-verify")
    rows = []
    for procs in (1, 2):
        out = tmp / f"ddp{procs}.onnx"
        report, seconds = tensorfold(
            "recover",
            small,
            "--teacher",
            teacher,
            "--data",
            tmp / "ddp.npz",
            "-o",
            out,
            "--max-steps",
            steps,
            "--batch-size",
            64,
            "--eval-every",
            steps,
            launcher=("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs)),
        )
        history = json.loads((Path(str(out) + ".ckpt") / "history.json").read_text())
        rows.append(
            f"| {procs} | {64 * procs} | {report['seconds'] / max(1, report['steps']):.3f} | "
            f"{report['seconds']:.0f} s | {_test_accuracy(out):.2%} | {history['loss'][-1]:.3f} |"
        )
    return [
        "## DistributedDataParallel on this machine (gloo, CPU)",
        "",
        f"`torchrun --standalone --nproc-per-node P -m tensorfold recover` of the demo CNN cut 8x on the first "
        f"{n:,} Fashion-MNIST training images, {steps} steps of `--batch-size 64` per process (torchrun sets "
        "one thread per process). Seconds per step include validation and checkpoints.",
        "",
        "| processes | samples per step | s per step | recover time | test accuracy | last loss |",
        "|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="label-free,folder,ddp")
    parser.add_argument("--pages", type=int, default=192)
    parser.add_argument("--steps", type=int, default=120, help="label-free recovery steps")
    parser.add_argument("--lr", type=float, default=5e-5, help="label-free learning rate")
    parser.add_argument("--images", type=int, default=10000, help="Fashion-MNIST images for folder and ddp")
    parser.add_argument("--fmnist-steps", type=int, default=300)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    parts = args.parts.split(",")
    lines = [
        f"Command: `.venv/bin/python tools/bench_recovery_scale.py --parts {args.parts}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, no GPU  ",
        f"Date: {datetime.date.today()}",
        "",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        if "label-free" in parts:
            lines += label_free(Path(tmp), args.pages, args.steps, args.lr)
        if "folder" in parts:
            lines += folder_vs_idx(Path(tmp), args.images, args.fmnist_steps)
        if "ddp" in parts:
            lines += ddp(Path(tmp), args.images, args.fmnist_steps)
    publish(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
