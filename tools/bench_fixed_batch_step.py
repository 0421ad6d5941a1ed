"""One training step (forward and backward) of a fixed-batch export through the trainer's ONNX
interpreter, run in slices of its batch and on the whole batch at once (recovery/onnx_torch.py:
whole batches where the export gives the same results): docs/design-decisions.md, compress.md.

    .venv/bin/python tools/bench_fixed_batch_step.py [--model lstm-ocr] [--batch 16] [--repeats 3]

lstm-ocr is ddddocr's CRNN (exported with batch 1, time-major scores) on grayscale text lines.
Median seconds of --repeats steps each way, after one step each to warm up.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

import onnx
import torch

from tensorfold.bench.real_models import DDDDOCR, fetch_wheel_model
from tensorfold.bench.text_images import gray_line_inputs
from tensorfold.recovery.onnx_torch import OnnxModule


def step_seconds(module: OnnxModule, x: torch.Tensor, whole: bool) -> float:
    module.zero_grad()
    start = time.perf_counter()
    outputs = module(x) if whole else module._sliced((x,), ())
    sum(o.float().pow(2).mean() for o in outputs if o.is_floating_point()).backward()
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lstm-ocr", choices=["lstm-ocr"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    module = OnnxModule(onnx.load(str(fetch_wheel_model(DDDDOCR, args.model))))
    x = torch.from_numpy(gray_line_inputs(args.batch, seed=1))
    times = {}
    for whole in (False, True):
        step_seconds(module, x, whole)  # warm-up (and, whole, the one check of the layouts)
        times[whole] = statistics.median(step_seconds(module, x, whole) for _ in range(args.repeats))
    print(
        f"Command: `.venv/bin/python tools/bench_fixed_batch_step.py --model {args.model} --batch {args.batch} "
        f"--repeats {args.repeats}`  \nMachine: {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, torch {torch.__version__}; date {datetime.date.today()}\n\n"
        f"| run | step seconds (median of {args.repeats}) |\n|---|---:|\n"
        f"| in slices of the export's batch ({module.fixed_batch}) | {times[False]:.2f} |\n"
        f"| whole batch of {args.batch} (layouts {module._batch_layouts.get(())}) | {times[True]:.2f} |\n"
        f"\nwhole / slices: {times[True] / times[False]:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
