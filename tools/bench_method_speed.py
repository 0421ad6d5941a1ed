"""Every method's optimize time beside Tucker's, on one model, measured side by side.

    .venv/bin/python tools/bench_method_speed.py [--width 0.5] [--ratio 4] [--repeats 3] [--out FILE]

Exports the zoo ResNet-18 at --width (seeded random weights: decomposition time does not depend on
training; width 0.5 is 2.8M parameters) and times `tensorfold.api.optimize(method=M, ratio=R,
verify=False)` for each method in a fresh process per run, the methods interleaved run by run
(so a busy host slows them alike). Quality, outside the timed call: the mean relative weight error
of the rewritten layers and the relative output error on random normal input (seed 0). Also the demo CNN at --energy 1 and --rank 100000 (auto), which
must take seconds. Reports medians and the ratio to Tucker's median.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from tensorfold.bench.report import publish

RUN = textwrap.dedent("""
    import json, sys, time
    from tensorfold.api import optimize
    path, out, args = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    start = time.perf_counter()
    report = optimize(path, out, progress=False, verify=False, **args)
    seconds = time.perf_counter() - start
    from tensorfold.api import compare      # quality, outside the timed call
    errors = [r.weight_error for r in report.layers]
    print(json.dumps({"seconds": seconds, "params": report.after.params,
                      "weight_error": sum(errors) / len(errors) if errors else 0.0,
                      "output_error": compare(path, out).max_relative_error}))
""")


def run(path: Path, out: Path, args: dict) -> dict:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", RUN, str(path), str(out), json.dumps(args)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--ratio", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    import torch

    from tensorfold.bench.zoo import build
    from tensorfold.demo import demo_model_path
    from tensorfold.export import export_onnx

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "resnet18.onnx"
        export_onnx(build("resnet18", width=args.width).eval(), torch.zeros(1, 1, 28, 28), model)
        cases = [(m, model, {"method": m, "ratio": args.ratio}) for m in ("tucker", "svd", "auto", "tt", "cp")]
        cases += [
            (f"demo auto {k}", demo_model_path(), {"method": "auto", k: v})
            for k, v in (("energy", 1.0), ("rank", 100_000))
        ]
        times: dict[str, list[float]] = {name: [] for name, _, _ in cases}
        params: dict[str, int] = {}
        quality: dict[str, tuple[float, float]] = {}
        for _ in range(args.repeats):
            for name, path, kwargs in cases:
                got = run(path, Path(tmp) / "out.onnx", kwargs)
                times[name].append(got["seconds"])
                params[name] = got["params"]
                quality[name] = (got["weight_error"], got["output_error"])
    tucker = statistics.median(times["tucker"])
    lines = [
        f"Command: `.venv/bin/python tools/bench_method_speed.py --width {args.width:g} --ratio {args.ratio:g} "
        f"--repeats {args.repeats}`  ",
        f"Machine: {platform.machine()}, Python {platform.python_version()}, one BLAS thread per run  ",
        f"Date: {datetime.date.today()}  ",
        f"Model: zoo ResNet-18 width {args.width:g} (seeded random weights), `optimize --ratio {args.ratio:g} "
        "--no-verify` in a fresh process per run, methods interleaved run by run.",
        "",
        "| method | median s (optimize call) | ratio to tucker | params after | mean layer weight error "
        "| output error |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, values in times.items():
        med = statistics.median(values)
        ratio = f"{med / tucker:.2f}x" if not name.startswith("demo") else "-"
        weight, output = quality[name]
        lines.append(f"| {name} | {med:.2f} | {ratio} | {params[name]:,} | {weight:.4f} | {output:.4f} |")
    publish(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
