"""What `optimize --recover` reaches within a held-out bound, beside the same search without it
(docs/results/compress.md).

    .venv/bin/python tools/bench_recover_in_optimize.py [--models cls,det,rec] [--bounds 0.02,0.05]
        [--steps 100] [--out FILE]

The PP-OCR models (RapidOCR 1.4.4) on synthetic printed text (bench/text_images.py): --samples
calibration samples each (pages at 256x256 for det, lines for cls and rec), the default held-out
share (a quarter) judging every candidate. minilm-l3 (paraphrase-MiniLM-L3-v2, a 3-layer BERT
sentence encoder from a pinned wheel) on English sentences of Debian's licence texts
(bench/text_tokens.py, 64 tokens; 932 distinct sentences, then ~19k of the Python documentation);
lstm-ocr (ddddocr's CRNN: convs, a bidirectional LSTM, an 8210-class Gemm) on grayscale text lines
64x256. resnet18 and mobilenetv2: the Fashion-MNIST zoo (width 0.25, 3 epochs, bench/train.py's
cache) on test images (calibration) and train images (--recover-data), their class logits judged by
argmax too, and the written model's test accuracy on the test images not calibrated on. For each bound: `optimize MODEL --calibration
samples.npz --max-output-error B` and the same with `--recover STEPS --recover-data more.npz`
(--extra further unlabelled samples, drawn apart from the calibration ones: 64 samples alone
overfit in a few epochs); the factorizable layers' compression reached, the held-out error, the
parameters, and the wall time of the call.
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_calibration import accuracy, fmnist, zoo_model  # noqa: E402

from tensorfold.api import optimize  # noqa: E402
from tensorfold.bench.real_models import DDDDOCR, MINILM_L3, fetch_rapidocr_model, fetch_wheel_model  # noqa: E402
from tensorfold.bench.report import publish  # noqa: E402
from tensorfold.bench.text_images import gray_line_inputs, ocr_inputs  # noqa: E402
from tensorfold.bench.text_tokens import ALL_LICENCES, token_samples  # noqa: E402
from tensorfold.graph.io import load_model  # noqa: E402
from tensorfold.graph.model import count_params  # noqa: E402

ZOO = ("resnet18", "mobilenetv2")


def samples(name: str, n: int, part: int, skip: int = 0) -> dict[str, np.ndarray]:
    """The model's inputs: OCR images drawn by seed `part`; for MiniLM, sentences of one shuffled
    pool from position `skip` (calibration and extra data never share one)."""
    if name == "minilm-l3":
        return token_samples(n, 0, skip=skip, licences=ALL_LICENCES)
    if name == "lstm-ocr":
        return {"input1": gray_line_inputs(n, part)}
    if name in ZOO:  # calibration: the first test images; more data: train images
        x, _ = fmnist("test" if part == 0 else "train")
        return {"input": x[:n]}
    return {"x": ocr_inputs(name, n, part, page=256)}


def model_path(name: str) -> Path:
    if name in ZOO:
        return zoo_model(name)
    if name in ("minilm-l3", "lstm-ocr"):
        return fetch_wheel_model(MINILM_L3 if name == "minilm-l3" else DDDDOCR, name)
    return fetch_rapidocr_model(name)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cls,det,rec")
    parser.add_argument("--bounds", default="0.02,0.05")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--extra", type=int, default=512, help="unlabelled samples for --recover-data")
    parser.add_argument("--samples", type=int, default=64, help="calibration samples (a quarter held out)")
    parser.add_argument("--batch-size", type=int, help="default: optimize's (16, lowered to fit memory)")
    parser.add_argument("--no-warm-start", action="store_true", help="every candidate factorized from the input model")
    parser.add_argument("--train", default="chains", choices=["chains", "all"], help="which weights recovery trains")
    parser.add_argument("--lr", type=float, help="--recover's rate (default: optimize's choice on the first candidate)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    lines = [
        "# Recovery inside optimize: what a held-out bound reaches with and without it",
        "",
        f"Command: `.venv/bin/python tools/bench_recover_in_optimize.py --models {args.models} "
        f"--bounds {args.bounds} --steps {args.steps} --extra {args.extra} --samples {args.samples}"
        f"{f' --batch-size {args.batch_size}' if args.batch_size else ''}{' --train all' if args.train == 'all' else ''}"
        f"{' --no-warm-start' if args.no_warm_start else ''}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, no GPU  ",
        f"Date: {datetime.date.today()}",
        "",
        "| model | bound | run | factorizable compression | params | held-out error | seconds | recovered candidates | rate | test accuracy |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            model = model_path(name)
            calib = Path(tmp) / f"{name}.npz"
            np.savez(calib, **samples(name, args.samples, 0))
            more = Path(tmp) / f"{name}_more.npz"
            np.savez(more, **samples(name, args.extra, 1, skip=args.samples))
            if name in ZOO:  # the test images not calibrated on
                tx, ty = (part[args.samples :] for part in fmnist("test"))
                lines.append(
                    f"| {name} | - | the input model | 1.00x | {count_params(load_model(model)):,} | - | - | - | - "
                    f"| {accuracy(model, tx, ty):.2%} |"
                )
            for bound in (float(b) for b in args.bounds.split(",")):
                for recover in (None, args.steps):
                    start = time.perf_counter()
                    written = Path(tmp) / f"{name}-{bound:g}-{recover}.onnx"
                    report = optimize(
                        model,
                        written if name in ZOO else None,
                        calibration=str(calib),
                        max_output_error=bound,
                        recover=recover,
                        recover_data=str(more) if recover else None,
                        batch_size=args.batch_size,
                        warm_start=not args.no_warm_start,
                        **({"train": args.train, "lr": args.lr} if recover else {}),
                        class_outputs=("output",) if name in ZOO else (),
                        progress=False,
                    )
                    seconds = time.perf_counter() - start
                    ratio = report.eligible_params[0] / max(report.eligible_params[1], 1)
                    error = report.verification.max_error if report.verification else float("nan")
                    run = f"--recover {recover} + {args.extra}" if recover else "plain"
                    refined = [t for t in report.budget_search or [] if "before_recovery" in t]
                    lr = f"{report.recovery['lr']:g}" if report.recovery else "-"
                    lines.append(
                        f"| {name} | {bound:g} | {run} | {ratio:.2f}x | {report.after.params:,} | {error:.4f} "
                        f"| {seconds:.0f} | {len(refined) if recover else '-'} | {lr} "
                        f"| {f'{accuracy(written, tx, ty):.2%}' if name in ZOO else '-'} |"
                    )
                    print(lines[-1], file=sys.stderr, flush=True)
                    if report.verification and report.verification.interval:  # how far the held-out share could move it
                        lo, hi = report.verification.interval
                        print(
                            f"  held-out error's 90% bootstrap interval: {lo:.4f}-{hi:.4f}", file=sys.stderr, flush=True
                        )
                    for trial in report.budget_search or []:  # every candidate, for the reading
                        print("  trial", json.dumps(trial), file=sys.stderr, flush=True)
                    if report.recovery:  # how the rate was found (each rate's validation error)
                        print("  rate:", report.recovery["lr_from"], file=sys.stderr, flush=True)
    publish(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
