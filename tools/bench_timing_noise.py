"""How far apart do copies of one model time in one interleaved run? What the deploy search's
speed margin and its extra rounds for small models rest on (calibration/deploy.py).

    .venv/bin/python tools/bench_timing_noise.py [--model demo] [--copies 4] [--repeats 3]

Times `--copies` copies of one model round-robin (runtime.latency.measure_interleaved, all
threads, batch 1), `--repeats` times at 15 rounds (the search's first pass) and at 300 (its most),
and prints each copy's median against the first copy's: 1.00 everywhere would be no noise.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from tensorfold.demo import demo_model_path
from tensorfold.graph.io import load_model
from tensorfold.onnxrt.inputs import random_inputs
from tensorfold.runtime.latency import measure_interleaved


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo", help="an .onnx path, or demo for the built-in CNN")
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    model = load_model(demo_model_path() if args.model == "demo" else args.model)
    feeds = random_inputs(model, None, 0)
    for rounds in (15, 300):
        spread = []
        for _ in range(args.repeats):
            stats = measure_interleaved([(model, feeds)] * args.copies, threads=args.threads, rounds=rounds)
            ratios = [stats[0].median / s.median for s in stats]
            spread += ratios[1:]
            print(f"{rounds} rounds: median {stats[0].median:.4f} ms; copies against the first: "
                  + ", ".join(f"{r:.3f}" for r in ratios))  # fmt: skip
        print(
            f"{rounds} rounds: copies read {min(spread):.2f}-{max(spread):.2f}x of the first ({np.ptp(spread):.1%} apart)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
