"""What a check on random inputs says about real ones: one rewrite of a real model, its output
error on seeded random normal inputs (what `optimize` checks without --calibration/--inputs) and on
real inputs. Why optimize warns on every lossy rewrite checked on random inputs only.

    .venv/bin/python tools/bench_random_inputs.py [--model cls] [--ratio 2] [--samples 48]

PP-OCR models of RapidOCR 1.4.4 (det, cls, rec) on synthetic printed text (bench/text_images.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from tensorfold.api import optimize
from tensorfold.bench.real_models import fetch_rapidocr_model
from tensorfold.bench.text_images import ocr_inputs
from tensorfold.graph.io import load_model
from tensorfold.graph.verify import Reference


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cls", choices=("det", "cls", "rec"))
    parser.add_argument("--ratio", type=float, default=2.0)
    parser.add_argument("--samples", type=int, default=48)
    args = parser.parse_args(argv)
    path = fetch_rapidocr_model(args.model)
    original = load_model(path)
    real = {"x": ocr_inputs(args.model, args.samples, 0, page=256)}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "small.onnx"
        # as a user runs it: no --calibration, no --inputs, no --shape
        report = optimize(path, out, ratio=args.ratio, progress=False)
        small = load_model(out)
    ratio = report.eligible_params[0] / report.eligible_params[1]
    checked = report.verification
    assert checked is not None
    print(f"{args.model} --ratio {args.ratio:g} ({ratio:.2f}x of the factorizable layers)")
    print(f"  optimize's own check, {checked.inputs}: output error {checked.max_relative_error:.3f}")
    real_check = Reference(original, real, "real").verify(small)
    argmax = [o.argmax_agreement for o in real_check.outputs if o.argmax_agreement is not None]
    print(
        f"  {args.samples} real inputs: output error {real_check.max_relative_error:.3f}"
        + (f", argmax agreement {min(argmax):.1%}" if argmax else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
