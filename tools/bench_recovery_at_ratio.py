"""One `optimize --recover` candidate at a fixed ratio, recovered by several learning rates and
losses: the held-out error each reaches (docs/results/compress.md, "The rate").

    .venv/bin/python tools/bench_recovery_at_ratio.py --model cls --ratio 1.5 --steps 300 \
        --variants both:1e-4,both:1e-3,both:auto [--samples 256] [--extra 2048] [--out FILE]

The model's calibration samples and further unlabelled ones as in bench_recover_in_optimize.py
(PP-OCR on synthetic printed text, MiniLM-L3 on licence sentences). First `optimize MODEL
--calibration samples.npz --ratio R` (the candidate unrecovered), then for each variant
LOSS:RATE[:FEATURE_WEIGHT] the same with `--recover STEPS --recover-data more.npz --lr RATE` (RATE
`auto`: no --lr, the first candidate's whole runs choose it). LOSS is RecoverConfig.distill: both
(the default: KD on class scores and the relative error on other outputs, plus each factor chain's
output toward the original layer's), hinton (no chain term), feature (chain term and the outputs'
relative error), none (the outputs' relative error alone). The loss is not an optimize option: this
tool sets it on the recoverer each candidate trains with. --flat-rates trains every tensor at the
rate (no per-tensor scale, recovery/finetune.scaled_groups): the A/B of docs/results/compress.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import tensorfold.optimize.recovery as optimize_recovery
import tensorfold.recovery.finetune as finetune
from tensorfold.api import optimize
from tensorfold.bench.report import publish

sys.path.insert(0, str(Path(__file__).parent))
from bench_recover_in_optimize import model_path, samples  # noqa: E402  # the same inputs as that benchmark

# the loss every Recoverer made from now on trains with (RecoverConfig fields); set per variant
LOSS: dict[str, object] = {}
_INIT = optimize_recovery.Recoverer.__init__


def _init_with_loss(self, *args, **kwargs):
    _INIT(self, *args, **kwargs)
    for field, value in LOSS.items():
        setattr(self.cfg, field, value)


optimize_recovery.Recoverer.__init__ = _init_with_loss  # type: ignore[method-assign]  # a benchmark's knob, not an option


def _one_group(params):
    """--flat-rates: every tensor at the rate (AdamW as it was before finetune.scaled_groups)."""
    return [{"params": list(params), "scale": 1.0}]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cls", help="cls, rec, det or minilm-l3")
    parser.add_argument("--ratio", type=float, default=1.5)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--variants", default="both:1e-4,both:1e-3,both:auto")
    parser.add_argument("--samples", type=int, default=256, help="calibration samples (a quarter held out)")
    parser.add_argument("--extra", type=int, default=2048, help="unlabelled samples for --recover-data")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--flat-rates", action="store_true", help="no per-tensor rate scale (finetune.scaled_groups): the A/B of it"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.flat_rates:
        finetune.scaled_groups = _one_group  # a benchmark's knob, not an option
    lines = [
        f"Command: `.venv/bin/python tools/bench_recovery_at_ratio.py --model {args.model} --ratio {args.ratio:g} "
        f"--steps {args.steps} --variants {args.variants} --samples {args.samples} --extra {args.extra} "
        f"--batch-size {args.batch_size}{' --flat-rates' if args.flat_rates else ''}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, no GPU  ",
        f"Date: {datetime.date.today()}",
        "",
        "| model | ratio | loss | rate | held-out error | factorizable params | seconds | rate chosen by |",
        "|---|---:|---|---|---:|---:|---:|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        model = model_path(args.model)
        calib, more = Path(tmp) / "calib.npz", Path(tmp) / "more.npz"
        np.savez(calib, **samples(args.model, args.samples, 0))
        np.savez(more, **samples(args.model, args.extra, 1, skip=args.samples))
        common = dict(calibration=str(calib), ratio=args.ratio, batch_size=args.batch_size, progress=False)
        start = time.perf_counter()
        plain = optimize(model, None, **common)
        lines.append(
            f"| {args.model} | {args.ratio:g} | unrecovered | - | {plain.verification.max_error:.4f} "
            f"| {plain.eligible_params[1]:,} | {time.perf_counter() - start:.0f} | - |"
        )
        print(lines[-1], file=sys.stderr, flush=True)
        for variant in args.variants.split(","):
            loss, rate, *weight = variant.split(":")
            LOSS.clear()
            LOSS.update(distill=loss, **({"feature_weight": float(weight[0])} if weight else {}))
            start = time.perf_counter()
            report = optimize(
                model,
                None,
                recover=args.steps,
                recover_data=str(more),
                lr=None if rate == "auto" else float(rate),
                **common,
            )
            how = report.recovery or {}
            lines.append(
                f"| {args.model} | {args.ratio:g} | {loss}{' x' + weight[0] if weight else ''} | {how.get('lr', 0):g} "
                f"| {report.verification.max_error:.4f} | {report.eligible_params[1]:,} "
                f"| {time.perf_counter() - start:.0f} | {how.get('lr_from', '-')} |"
            )
            print(lines[-1], file=sys.stderr, flush=True)
    publish(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
