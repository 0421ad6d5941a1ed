"""Which int8 format is fast here, and where a model's int8 error comes from (docs/results/int8-formats.md).

    .venv/bin/python tools/bench_int8_formats.py --out docs/results/int8-formats.md

On PP-OCRv4 det (rapidocr wheel) with printed pages (bench/text_images.py), 16 to calibrate and 16
held out:
  formats  S8S8 QDQ (what tensorfold wrote before), U8S8 QDQ per-channel and per-tensor, U8S8
           QOperator, dynamic: held-out error, kernels onnxruntime fused, speed against float
           (batch 1, one thread, every model timed round-robin in one run)
  blocks   the model's held-out error with only ten consecutive quantizable nodes quantized, for
           every ten in graph order (why quantize/mixed.py scores units by the model's output)
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_calibration import ocr_samples  # noqa: E402

from tensorfold.bench.real_models import fetch_rapidocr_model  # noqa: E402
from tensorfold.bench.report import publish  # noqa: E402
from tensorfold.graph.io import load_model  # noqa: E402
from tensorfold.graph.normalize import normalize  # noqa: E402
from tensorfold.graph.verify import Reference  # noqa: E402
from tensorfold.quantize.formats import Int8Format, has_vnni  # noqa: E402
from tensorfold.quantize.fusion import fused_kernels  # noqa: E402
from tensorfold.quantize.static import StaticQuantizer  # noqa: E402
from tensorfold.runtime.latency import measure_interleaved  # noqa: E402

FORMATS = {
    "QDQ S8S8 per-channel": Int8Format("s8s8", "int8"),
    "QDQ U8S8 per-channel": Int8Format("u8s8", "uint8"),
    "QDQ U8S8 per-tensor": Int8Format("u8s8 pt", "uint8", per_channel=False),
}


def main():
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--block", type=int, default=10)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    original = load_model(fetch_rapidocr_model("det"))
    fit, _ = ocr_samples("det", args.samples, seed=1)
    held, _ = ocr_samples("det", args.samples, seed=2)
    model, _ = normalize(original)
    reference = Reference(original, {"x": held}, "held-out pages")
    rows = []
    for label, fmt in FORMATS.items():
        with StaticQuantizer(model, {"x": fit}, fmt) as q:
            rows.append((label, q.quantize("minmax")))
            if label == "QDQ U8S8 per-channel":
                # the same calibration ranges written as QOperator (QLinearConv nodes in the file)
                activations, weights = fmt.ort_types()
                rows.append(
                    (
                        "QOperator U8S8 per-channel",
                        q._written(
                            "QOperator",
                            lambda dst: quantize_static(
                                str(q.source),
                                dst,
                                None,
                                quant_format=QuantFormat.QOperator,
                                per_channel=True,
                                activation_type=activations,
                                weight_type=weights,
                                calibration_cache_path=str(q.ranges("minmax")),
                            ),
                        ),
                    )
                )
                rows.append(
                    (
                        "dynamic (ConvInteger)",
                        q._written(
                            "dynamic",
                            lambda dst: __import__(
                                "onnxruntime.quantization", fromlist=["quantize_dynamic"]
                            ).quantize_dynamic(str(q.source), dst, weight_type=QuantType.QInt8, per_channel=True),
                        ),
                    )
                )
                quantizable = [
                    n.name for n in q.model.graph.node if n.op_type in set(QLinearOpsRegistry) | set(QDQRegistry)
                ]
                blocks = []
                for start in range(0, len(quantizable), args.block):
                    alone = set(quantizable[start : start + args.block])
                    check = reference.verify(q.quantize("minmax", frozenset(quantizable) - alone))
                    blocks.append(f"| {start}-{start + len(alone) - 1} | {check.max_error:.4f} |")
                    print(blocks[-1], flush=True)
    call = {"x": held[:1]}
    stats = measure_interleaved([(original, call)] + [(m, call) for _, m in rows], threads=1, rounds=args.rounds)
    table = []
    for (label, m), st in zip(rows, stats[1:]):
        fusion = fused_kernels(m)
        kernels = ", ".join(f"{n} {k}" for k, n in sorted(fusion.kernels.items(), key=lambda kv: -kv[1])) or "none"
        table.append(
            f"| {label} | {reference.verify(m).max_error:.4f} | {stats[0].median / st.median:.2f}x | "
            f"{kernels}; QuantizeLinear left: {fusion.quantize_nodes} |"
        )
        print(table[-1], flush=True)
    import onnxruntime

    lines = [
        "# int8 formats and where the error comes from (PP-OCRv4 det)",
        "",
        f"Command: `.venv/bin/python tools/bench_int8_formats.py {shlex.join(sys.argv[1:])}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared), AVX-512 VNNI: "
        f"{'yes' if has_vnni() else 'no'}; onnxruntime {onnxruntime.__version__}  ",
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d}",
        "",
        f"{args.samples} printed pages (320x320) to calibrate (MinMax), {args.samples} others held out; every "
        "node quantized. Speed = float median / this median, batch 1, one thread, all timed round-robin in "
        f"one run ({args.rounds} rounds); kernels = what onnxruntime's optimized graph holds.",
        "",
        "| format | held-out error | speed | int8 kernels after optimization |",
        "|---|---|---|---|",
        *table,
        "",
        f"## Only {args.block} nodes quantized at a time",
        "",
        "The model's held-out error with only these quantizable nodes (graph order) in int8, U8S8 QDQ. "
        "The stem's nodes, though their own tensors carry no more rounding noise than later ones, cost "
        "the most: mixed precision scores units by this, not by local noise.",
        "",
        "| nodes | held-out error |",
        "|---|---|",
        *blocks,
        "",
    ]
    publish(lines, args.out)


if __name__ == "__main__":
    main()
