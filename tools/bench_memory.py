"""Predicted peak memory (runtime.memory) beside onnxruntime's measured peak on this host.

    .venv/bin/python tools/bench_memory.py [--width 0.5] [--batches 1,32] [--out FILE]

For the zoo models (seeded random weights; memory does not depend on training) and the demo CNN,
at each batch: the prediction (weights + the largest live activation set + that node's im2col
workspace) and what loading the model into onnxruntime's CPU provider and one call add to a fresh
process's peak resident memory (VmHWM; the imports not counted).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

from tensorfold.bench.report import publish


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--models", default="resnet18,resnet50,vgg16,mobilenetv2")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    import onnx
    import torch

    from tensorfold.bench.zoo import build
    from tensorfold.demo import demo_model_path
    from tensorfold.export import export_onnx
    from tensorfold.runtime.memory import measured_peak_bytes, predict_memory

    batches = [int(b) for b in args.batches.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        models = [("demo CNN", demo_model_path())]
        for name in args.models.split(","):
            torch.manual_seed(0)
            path = Path(tmp) / f"{name}.onnx"
            export_onnx(build(name, width=args.width).eval(), torch.zeros(1, 1, 28, 28), path)
            models.append((f"{name} w{args.width:g}", path))
        for label, path in models:
            model = onnx.load(str(path))
            inp = model.graph.input[0]
            dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
            for batch in batches:
                shape = [batch, *dims[1:]]
                pred = predict_memory(model, {inp.name: shape})
                x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
                got = measured_peak_bytes(path, {inp.name: x})
                mb = 1 << 20
                ratio = f"{got / pred.total_bytes:.2f}" if got else "-"
                rows.append(
                    f"| {label} | {batch} | {pred.weights_bytes / mb:.1f} | {pred.activations_bytes / mb:.1f} | "
                    f"{pred.workspace_bytes / mb:.1f} | {pred.total_bytes / mb:.1f} | "
                    f"{got / mb if got else float('nan'):.1f} | {ratio} |"
                )
    lines = [
        f"Command: `.venv/bin/python tools/bench_memory.py --width {args.width:g} --batches {args.batches}`  ",
        f"Machine: {platform.machine()}, Python {platform.python_version()}, onnxruntime CPU provider, one thread  ",
        f"Date: {datetime.date.today()}",
        "",
        "| model | batch | weights MB | live activations MB | workspace MB | predicted MB | measured MB "
        "| measured / predicted |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
    ]
    publish(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
