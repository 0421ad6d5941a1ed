"""Where the plain bound search's error jumps, and what moves it (docs/results/compress.md, "Next":
MiniLM-L3's cliff at 0.05).

    .venv/bin/python tools/bench_budget_cliff.py [--model minilm-l3] [--bounds 0.05,0.02]
        [--ratios 1.215,1.242] [--exclude NODE ...] [--gain-clips 10] [--probe-samples 8]

On the calibration samples tools/bench_recover_in_optimize.py draws (256 for MiniLM-L3):
- each of --ratios, `optimize --calibration C --ratio R`: the held-out error, and the layers whose
  ranks differ from the previous ratio's (rank and the layer's own output error);
- each of --bounds, `optimize --calibration C --max-output-error B [--exclude NODE]`, once per
  --gain-clips value and --probe-samples value (calibration/sensitivity.py's GAIN_CLIP and
  PROBE_SAMPLES, set for the run): the reach, the parameters and every ratio the search tried.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_recover_in_optimize import model_path, samples  # noqa: E402

import tensorfold.calibration.sensitivity as sensitivity  # noqa: E402
from tensorfold.api import optimize  # noqa: E402


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm-l3")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--bounds", default="0.05,0.02")
    parser.add_argument("--ratios", default="1.215,1.242")
    parser.add_argument("--exclude", action="append", default=[], help="a node left whole (repeatable)")
    parser.add_argument("--gain-clips", default=str(sensitivity.GAIN_CLIP))
    parser.add_argument("--probe-samples", default=str(sensitivity.PROBE_SAMPLES))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model, calib = model_path(args.model), Path(tmp) / "calibration.npz"
        np.savez(calib, **samples(args.model, args.samples, 0))
        previous: dict[str, tuple] = {}
        for ratio in _floats(args.ratios):
            report = optimize(model, None, calibration=str(calib), ratio=ratio, progress=False)
            error = report.verification.max_error if report.verification else float("nan")
            print(f"--ratio {ratio:g}: held-out error {error:.4f}", flush=True)
            layers = {layer.node: (layer.ranks, layer.output_error, layer.weight_error) for layer in report.layers}
            for node, (ranks, own, weight) in layers.items():
                if previous and previous.get(node, (None,))[0] != ranks:
                    was = previous.get(node, ("whole",))[0]
                    print(
                        f"  {node}: ranks {was} -> {ranks} (its own output error {own:.3f}, weight error {weight:.2f})",
                        flush=True,
                    )
            previous = layers
        for clip in _floats(args.gain_clips):
            for probe_samples in (int(v) for v in _floats(args.probe_samples)):
                sensitivity.GAIN_CLIP, sensitivity.PROBE_SAMPLES = clip, probe_samples
                for bound in _floats(args.bounds):
                    start = time.perf_counter()
                    report = optimize(
                        model,
                        None,
                        calibration=str(calib),
                        max_output_error=bound,
                        exclude=tuple(args.exclude),
                        progress=False,
                    )
                    error = report.verification.max_error if report.verification else float("nan")
                    print(
                        f"bound {bound:g}, gain clip {clip:g}, probe samples {probe_samples}"
                        f"{', excluding ' + ','.join(args.exclude) if args.exclude else ''}: "
                        f"{report.after.params:,} parameters, held-out error {error:.4f} "
                        f"({time.perf_counter() - start:.0f} s)",
                        flush=True,
                    )
                    for trial in report.budget_search or []:
                        print(f"  ratio {trial['ratio']:.3f}: {trial['max_relative_error']:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
