"""Pass-suite speed: Tucker on a ResNet-50-sized model vs the floor (just the SVDs of its unfoldings).

    .venv/bin/python tools/bench_pass_speed.py [--ratio 4] [--out docs/results/pass-speed.md]

Exports a ResNet-50 (25.6M params, seeded random weights: speed does not depend on training)
to a temp folder, then measures in fresh subprocesses (so peak memory is the run's own):
  floor     - np.linalg.svd of the mode-0 and mode-1 unfoldings of every Conv weight, and of every
              Gemm weight, nothing else;
  optimize  - tensorfold.api.optimize(method="tucker", ratio=R) end to end (load, normalize, budget,
              HOSVD+HOOI, emit, checker, save), without and with onnxruntime verification.
Each is run 3 times; medians are reported, with the ratio to the floor's median.
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

FLOOR = textwrap.dedent("""
    import json, resource, sys, time
    import numpy as np, onnx
    from onnx import numpy_helper
    model = onnx.load(sys.argv[1])
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    mats = []
    for n in model.graph.node:
        if n.op_type in ("Conv", "Gemm") and n.input[1] in weights:
            w = weights[n.input[1]].astype(np.float64)
            if w.ndim == 2:
                mats.append(w)
            else:
                mats.append(w.reshape(w.shape[0], -1))
                mats.append(np.moveaxis(w, 1, 0).reshape(w.shape[1], -1))
    t = time.perf_counter()
    for m in mats:
        if sys.argv[2] == "svd":
            np.linalg.svd(m, full_matrices=False)
        else:   # the spectra HOSVD needs, from the Gram matrix of each unfolding's smaller side
            np.linalg.eigh(m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m)
    secs = time.perf_counter() - t
    print(json.dumps({"seconds": secs, "matrices": len(mats),
                      "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""")

OPTIMIZE = textwrap.dedent("""
    import json, resource, sys, time
    from tensorfold.api import optimize
    t = time.perf_counter()
    r = optimize(sys.argv[1], sys.argv[2], method="tucker", ratio=float(sys.argv[3]), verify=sys.argv[4] == "1",
                 progress=False)
    secs = time.perf_counter() - t
    print(json.dumps({"seconds": secs, "layers": len(r.layers), "params_before": r.before.params,
                      "params_after": r.after.params, "flops_before": r.before.flops, "flops_after": r.after.flops,
                      "max_rel_error": r.verification.max_relative_error if r.verification else None,
                      "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
""")


def _run(code: str, *args) -> dict:
    # one BLAS thread for every run: on a shared 2-core machine OpenBLAS threads spin against
    # other jobs and a single SVD can take 20x longer; single-threaded timings are stable and fair
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], check=True, capture_output=True, text=True, env=env
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ratio", type=float, default=4.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import torch

    from tensorfold.bench.models import resnet50
    from tensorfold.export import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "resnet50.onnx", Path(tmp) / "resnet50.tucker.onnx"
        torch.manual_seed(0)
        export_onnx(resnet50(), torch.randn(1, 3, 224, 224), src)
        rows = {"floor": [], "gram floor": [], "optimize": [], "optimize+verify": []}
        for _ in range(args.repeats):
            rows["floor"].append(_run(FLOOR, src, "svd"))
            rows["gram floor"].append(_run(FLOOR, src, "gram"))
            rows["optimize"].append(_run(OPTIMIZE, src, dst, args.ratio, 0))
            rows["optimize+verify"].append(_run(OPTIMIZE, src, dst, args.ratio, 1))
            print({k: round(v[-1]["seconds"], 2) for k, v in rows.items()}, file=sys.stderr)
    floor = statistics.median(r["seconds"] for r in rows["floor"])
    last = rows["optimize+verify"][-1]
    lines = [
        "# Pass-suite speed: Tucker-2 on ResNet-50 vs the SVD floor",
        "",
        f"Command: `.venv/bin/python tools/bench_pass_speed.py --ratio {args.ratio:g}`  ",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}  ",
        f"Date: {datetime.date.today().isoformat()}  ",
        f"Model: ResNet-50 (torchvision layout, seeded random weights), {last['params_before']:,} params, "
        f"input 1x3x224x224; `--method tucker --ratio {args.ratio:g}` -> {last['params_after']:,} params, "
        f"{last['layers']} layers rewritten, output rel. error on random input {last['max_rel_error']:.3f}.",
        "",
        f"Medians of {args.repeats} runs, each in a fresh process with one BLAS thread "
        "(OPENBLAS_NUM_THREADS=1); peak = max RSS of that process.",
        "",
        "| run | median s | ratio to floor | peak MB |",
        "|---|---:|---:|---:|",
    ]
    for name, runs in rows.items():
        med = statistics.median(r["seconds"] for r in runs)
        lines.append(f"| {name} | {med:.2f} | {med / floor:.2f}x | {max(r['peak_mb'] for r in runs):.0f} |")
    lines += [
        "",
        "floor = `np.linalg.svd` of the mode-0 and mode-1 unfoldings of every Conv weight and of every "
        "Gemm weight (float64), nothing else. gram floor = `np.linalg.eigh` of the Gram matrix (smaller side) of each of "
        "those unfoldings (what tensorfold's HOSVD uses instead of the SVD: same leading subspaces, "
        "far cheaper for wide unfoldings). optimize = load, normalize (BN folding), global rank budget, "
        "HOSVD + up to 5 HOOI sweeps, chain emission, onnx.checker, atomic save.",
    ]
    publish(lines, args.out)


if __name__ == "__main__":
    main()
