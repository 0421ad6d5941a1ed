"""Recovery training the factor chains alone against training every weight, on the same candidate
(docs/results/recovery-trained-weights.md).

    .venv/bin/python tools/bench_recover_trained_weights.py [--models cls,minilm-l3,det,vit,resnet18] [--out FILE]

For each model, `optimize MODEL --calibration C --ratio R --recover STEPS [--recover-data D]` twice
in this process, `--train all` then `--train chains`: the same factorized candidate (the calibration
fit is seeded), the same data, the same search over learning rates. Printed: the rate each chose,
the held-out error before and after recovery, the wall time of the call and its peak resident
memory (VmHWM, reset before each call). Inputs as tools/bench_recover_in_optimize.py draws them
(PP-OCR on synthetic text, MiniLM-L3 on licence sentences, the Fashion-MNIST zoo's ResNet-18) and
the ViT-S on photo crops as tools/bench_recover_memory.py does.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_recover_in_optimize import model_path, samples  # noqa: E402

from tensorfold.api import optimize  # noqa: E402
from tensorfold.bench.report import publish  # noqa: E402

# model -> (ratio, steps, calibration samples, extra unlabelled samples): each cut far enough that
# recovery has something to win back, each run a few minutes here
SETUPS = {
    "cls": (1.6, 100, 64, 512),
    "minilm-l3": (1.3, 100, 64, 512),
    "det": (1.5, 100, 64, 256),
    "vit": (1.2, 20, 64, 0),
    "resnet18": (5.0, 300, 256, 2048),
}


def peak_mb() -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 1024


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as fh:  # Linux: VmHWM starts again from the current RSS
        fh.write("5")


def inputs(name: str, n: int, extra: int, tmp: Path) -> tuple[Path, Path, Path | None]:
    if name == "vit":
        from bench_recover_memory import inputs as vit_inputs

        model, cal = vit_inputs("vit", tmp)
    else:
        model, cal = model_path(name), tmp / "cal.npz"
        np.savez(cal, **samples(name, n, 0))
    more = None
    if extra:
        more = tmp / "more.npz"
        np.savez(more, **samples(name, extra, 1, skip=n))
    return Path(model), cal, more


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(SETUPS))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines = [
        f"Command: `.venv/bin/python tools/bench_recover_trained_weights.py --models {args.models}` "
        f"(commit {commit}, {platform.machine()}, {datetime.date.today()})",
        "",
        "| model | ratio | steps | --train | rate | held-out error before | after | seconds | peak RSS |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for name in args.models.split(","):
        ratio, steps, n, extra = SETUPS[name]
        with tempfile.TemporaryDirectory(prefix="tensorfold-trained-") as tmp:
            model, cal, more = inputs(name, n, extra, Path(tmp))
            for which in ("all", "chains"):
                reset_peak()
                start = time.perf_counter()
                report = optimize(
                    model,
                    None,
                    calibration=str(cal),
                    ratio=ratio,
                    recover=steps,
                    recover_data=str(more) if more else None,
                    train=which,
                    class_outputs=("output",) if name == "resnet18" else (),
                    progress=False,
                )
                seconds = time.perf_counter() - start
                rec = report.recovery or {}
                lines.append(
                    f"| {name} | {ratio:g}x | {steps} | {which} | {rec.get('lr', float('nan')):.2g} "
                    f"| {rec.get('before', float('nan')):.4f} | {rec.get('after', float('nan')):.4f} "
                    f"| {seconds:.0f} | {peak_mb() / 1024:.2f} GB |"
                )
                print(lines[-1], f"\n  rate: {rec.get('lr_from')}\n  {rec.get('trained')}", file=sys.stderr, flush=True)
    publish(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
