"""What `optimize --recover` sees on its first candidate: the rate probe's reading, and whole runs at
given rates (docs/results/compress.md, "The probe's path starts half a decade up").

    .venv/bin/python tools/bench_first_candidate_rates.py [--models det,cls,rec,minilm-l3,vit]
        [--rates 3.2e-6,3.2e-5,1e-4,3.2e-4] [--bound 0.05] [--steps 100] [--extra N]

For each model, `optimize MODEL --calibration C --max-output-error BOUND --recover STEPS
--recover-data D` as tools/bench_recover_in_optimize.py runs it (the same samples), stopped where the
search would choose its rate: the step probe's reading is printed, then each of --rates trains the
first candidate for the whole run from the same start and its best validation error is printed
(no --rates: the probe alone). The ViT-S runs on 64 photo crops, without further data, as
tools/bench_recover_memory.py draws them.
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

import tensorfold.optimize.recovery as optimize_recovery  # noqa: E402
from tensorfold.api import optimize  # noqa: E402

# model -> (calibration samples, further samples): the goal rows' settings in compress.md
SETUPS = {"det": (128, 512), "cls": (1024, 2048), "rec": (256, 1024), "minilm-l3": (256, 676), "vit": (64, 0)}


class _Stop(Exception):
    """The search reached its rate choice: everything this tool asks is printed."""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="det,cls,rec,minilm-l3,vit")
    parser.add_argument("--rates", default="", help="comma-separated; empty: the probe alone")
    parser.add_argument("--bound", type=float, default=0.05)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--extra", type=int, help="further samples (default: the model's in SETUPS)")
    args = parser.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",") if r]
    unknown = set(args.models.split(",")) - set(SETUPS)
    if unknown:
        parser.error(f"--models: unknown {sorted(unknown)}; choose from {', '.join(SETUPS)}")

    def runs(module, run, metric="output_error", probe=None):  # stands in for lr_finder.rate_by_runs
        print(f"  probe (best single step): {probe}", flush=True)
        start = {k: v.detach().clone() for k, v in module.state_dict().items()}
        for rate in rates:
            module.load_state_dict(start)
            began = time.perf_counter()
            result = run(rate)
            best = result.best or {}
            print(
                f"  rate {rate:g}: validation {metric} {best.get(metric, float('nan')):.4f} at step "
                f"{best.get('step')} ({time.perf_counter() - began:.0f} s; {result.stop})",
                flush=True,
            )
        raise _Stop

    optimize_recovery.rate_by_runs = runs
    for name in args.models.split(","):
        print(name, flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            if name == "vit":
                from bench_recover_memory import inputs as vit_inputs

                model, calib = vit_inputs("vit", Path(tmp))
                more = None
            else:
                n, extra = SETUPS[name]
                extra = args.extra if args.extra is not None else extra
                model, calib = model_path(name), Path(tmp) / "calibration.npz"
                np.savez(calib, **samples(name, n, 0))
                more = Path(tmp) / "more.npz"
                np.savez(more, **samples(name, extra, 1, skip=n))
            try:
                optimize(
                    model,
                    None,
                    calibration=str(calib),
                    max_output_error=args.bound,
                    recover=args.steps,
                    recover_data=str(more) if more else None,
                    progress=False,
                )
                print("  no candidate was recovered (the plain answer is as far as the search goes)", flush=True)
            except _Stop:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
