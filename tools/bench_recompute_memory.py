"""Peak memory and time of one training step through the ONNX interpreter with and without
`--recompute-segments` (activation checkpointing), on PP-OCR rec (docs/results/compress.md).

    .venv/bin/python tools/bench_recompute_memory.py [--segments 0,4,8,16] [--batch 16]

Each segment count runs in a fresh process (peak resident memory only grows within one): the
normalized model, one no-grad forward to settle the allocator, then one forward + backward on
--batch text lines; it prints the peak the step added and its seconds.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

STEP = """
import resource, sys, time, onnx, torch
from tensorfold.bench.real_models import fetch_rapidocr_model
from tensorfold.bench.text_images import ocr_inputs
from tensorfold.graph.normalize import normalize
from tensorfold.recovery.onnx_torch import OnnxModule

segments, batch = int(sys.argv[1]), int(sys.argv[2])
model, _ = normalize(onnx.load(str(fetch_rapidocr_model("rec"))))
x = torch.from_numpy(ocr_inputs("rec", batch, 0, page=256))
module = OnnxModule(model)
module.checkpoint_segments = segments
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
with torch.no_grad():
    module(x)
before, start = peak(), time.perf_counter()
loss = sum((o.float() ** 2).mean() for o in module(x) if o.is_floating_point())
loss.backward()
print(f"| {segments} | +{peak() - before:.2f} GB | {time.perf_counter() - start:.1f} |")
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--segments", default="0,4,8,16")
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args(argv)
    print("| --recompute-segments | peak memory the step adds | step seconds |\n|---:|---:|---:|")
    for segments in args.segments.split(","):
        done = subprocess.run(
            [sys.executable, "-W", "ignore", "-c", STEP, segments, str(args.batch)], capture_output=True, text=True
        )
        print(done.stdout.strip() or f"| {segments} | failed: {done.stderr.strip().splitlines()[-1]} | |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
