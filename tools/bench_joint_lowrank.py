"""Would one low-rank factorization shared by the layers that read the same input (a BERT block's
Q, K and V projections) beat a factorization per layer at the same parameters?

    .venv/bin/python tools/bench_joint_lowrank.py [--model minilm-l3] [--samples 64]

For every group of Gemm/MatMul layers reading one tensor, in the data norm of that tensor's
calibration statistics (decompose.data_aware: the exact output error of a replacement):
- separate: each layer's whitened SVD, ranks given greedily by relative output error removed per
  parameter (what the budget search does);
- joint: the whitened SVD of [W_1 / e_1, W_2 / e_2, ...] (each weight scaled to unit output
  energy e_i, so every layer counts alike), one (K x R) factor shared and R x N_i per layer.
Both report the mean relative output error of the group's layers at the same parameter count.
Layer-level only: how the errors carry through softmax and the rest of the model is not measured.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).parent))
from bench_recover_in_optimize import model_path, samples  # noqa: E402

from tensorfold.calibration.data import Samples  # noqa: E402
from tensorfold.calibration.stats import collect_input_grams  # noqa: E402
from tensorfold.decompose.data_aware import WhitenedSVD  # noqa: E402
from tensorfold.passes.layers import find_layers  # noqa: E402


def separate_error(fits: list[WhitenedSVD], widths: list[int], k: int, budget: int) -> tuple[float, list[int]]:
    """Mean relative output error with ranks chosen greedily within `budget` parameters."""
    totals = [f.spectrum.sum() for f in fits]
    ranks, used = [0] * len(fits), 0
    while True:
        options = [
            (fits[i].spectrum[ranks[i]] / totals[i] / (k + widths[i]), i)
            for i in range(len(fits))
            if ranks[i] < len(fits[i].s) and used + k + widths[i] <= budget
        ]
        if not options:
            break
        _, i = max(options)
        ranks[i] += 1
        used += k + widths[i]
    return float(np.mean([f.spectrum[r:].sum() / t for f, r, t in zip(fits, ranks, totals)])), ranks


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm-l3")
    parser.add_argument("--samples", type=int, default=64)
    args = parser.parse_args(argv)
    model = onnx.load(str(model_path(args.model)))
    layers, _ = find_layers(model)
    inputs = {i.name for i in model.graph.input}
    arrays = {k: v for k, v in samples(args.model, args.samples, 0).items() if k in inputs}
    grams = collect_input_grams(model, layers, Samples(arrays, args.model))
    groups: dict[str, list] = {}
    for layer in layers:
        if layer.kind in ("gemm", "matmul"):
            groups.setdefault(layer.node.input[0], []).append(layer)
    factorizable = sum(layer.params for layer in layers)
    print(f"{args.model}: {args.samples} calibration samples, {factorizable:,} factorizable parameters")
    print("| group | layers | share of factorizable | params kept | separate: error (ranks) | joint: error (rank) |")
    print("|---|---|---:|---:|---|---|")
    found = 0
    for tensor, group in groups.items():
        if len(group) < 2:
            continue
        found += 1
        gram = grams[group[0].name].group(0)
        weights = [layer.weight.astype(np.float64) for layer in group]
        k, widths = weights[0].shape[0], [w.shape[1] for w in weights]
        fits = [WhitenedSVD(w, gram) for w in weights]
        joint = WhitenedSVD(
            np.concatenate([w / np.sqrt(f.spectrum.sum()) for w, f in zip(weights, fits)], axis=1), gram
        )
        full = sum(w.size for w in weights)
        for frac in (0.25, 0.4, 0.5, 0.6, 0.75):
            budget = int(full * frac)
            err, ranks = separate_error(fits, widths, k, budget)
            r = min(budget // (k + sum(widths)), len(joint.s))
            joint_err = float(joint.spectrum[r:].sum() / len(weights))
            print(
                f"| {tensor[-48:]} | {len(group)} | {full / factorizable:.1%} | {frac:.2f} | "
                f"{err:.4f} {ranks} | {joint_err:.4f} ({r}) |"
            )
    if not found:
        print("no two Gemm/MatMul layers read one tensor in this model")
    return 0


if __name__ == "__main__":
    sys.exit(main())
