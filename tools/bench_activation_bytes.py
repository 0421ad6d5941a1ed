"""The activations one training step keeps per sample, as the recovery batch is chosen by them
(recovery/memory.py), for the benchmark models on their benchmark inputs: docs/results/compress.md.

    .venv/bin/python tools/bench_activation_bytes.py [--models slanet,rec,det,cls,lstm-ocr]

Each model's inputs are bench_deploy's (two samples); the bytes are what autograd saves for
backward in one forward pass through the trainer's ONNX interpreter, per sample, parameters left
out; the batches are what `optimize --recover` (default 16) and `recover` (default 128) then train at.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_deploy import model_and_samples  # noqa: E402

from tensorfold.graph.io import load_model  # noqa: E402
from tensorfold.recovery.memory import budget_text, choose_batch, saved_bytes_per_sample  # noqa: E402
from tensorfold.recovery.onnx_torch import OnnxModule  # noqa: E402
from tensorfold.recovery.validation import tensors  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="slanet,rec,det,cls,lstm-ocr")
    args = parser.parse_args(argv)
    print(
        f"| model | input | activations a sample | optimize --recover batch | recover batch | (budget {budget_text()})"
    )
    print("|---|---|---:|---:|---:|")
    for name in args.models.split(","):
        path, fit, _, _ = model_and_samples(name, 2)
        arrays = [fit[k] for k in fit]
        _, per_sample = saved_bytes_per_sample(OnnxModule(load_model(path)), tensors(arrays, "cpu"))
        shape = "x".join(map(str, arrays[0].shape[1:]))
        batches = [choose_batch(None, default, per_sample).size for default in (16, 128)]
        print(f"| {name} | {shape} | {per_sample / 2**20:.0f} MiB | {batches[0]} | {batches[1]} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
