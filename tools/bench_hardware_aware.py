"""Hardware-aware optimization on the CPU provider, and the device model's quality on this host.

    .venv/bin/python tools/bench_hardware_aware.py [--out docs/results/hardware-aware.md]

Models: the real PP-OCRv4 detector (rapidocr-onnxruntime 1.4.4, fetched and cached) at 1x3x320x320
and a ResNet-18 (torchvision layout, seeded random weights: no trained one exists here) at
1x3x224x224. Each is optimized with `--method auto --hardware-aware --provider cpu --speedup S`
(least weight error whose measured whole-model latency meets S), then the output is timed against
the input interleaved (40 pairs) at batch 1 and 8, in this process, on the same provider.

Device-model quality: for every layer and candidate chain the planner timed, the host-calibrated
roofline prediction is compared with the measurement: Kendall tau and the share within +-10%.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from scipy.stats import kendalltau

from tensorfold.api import optimize
from tensorfold.bench.report import publish
from tensorfold.graph.normalize import normalize
from tensorfold.graph.shapes import concrete_shapes
from tensorfold.onnxrt.inputs import random_inputs
from tensorfold.passes import PassContext, get_pass
from tensorfold.passes.layers import ensure_node_names, find_layers
from tensorfold.planning.hardware_aware import HardwareTarget, _spread
from tensorfold.planning.latency_table import LatencyTable
from tensorfold.runtime.devices import calibrate_host, describe
from tensorfold.runtime.latency import compare, measure, with_batch


def device_model_quality(
    path: Path,
    input_shapes: dict,
    method: str,
    max_layers: int,
    runs: int = 60,
    statistic: str = "median",
    threads: int = 0,
    fresh_kernels: bool = False,
) -> dict:
    """Measure every layer and candidate chain as its own small model, predict it with the host
    roofline (micro-benchmark calibration) and with the roofline fitted on measurements of the
    other half of the layers (held out: fit on even layers, test on odd, and the reverse)."""
    from tensorfold.planning.latency_table import mini_model
    from tensorfold.runtime.devices import fit_roofline, node_costs
    from tensorfold.runtime.kernel_model import learn_host
    from tensorfold.runtime.latency import measure_interleaved

    model, _ = normalize(onnx.load(path))
    ensure_node_names(model)
    needed = {v for n in model.graph.node for v in list(n.input) + list(n.output) if v}
    shapes = concrete_shapes(model, input_shapes, needed)
    pass_ = get_pass(method)
    ctx = PassContext(progress=False)
    host = calibrate_host(threads=threads)
    layers, _ = find_layers(model)
    points = []  # (layer index, node costs, model, feeds)
    target = HardwareTarget(LatencyTable(), model, shapes)
    opset, index = target.opset, target.initializers
    rng = np.random.default_rng(0)
    for li, layer in enumerate(itertools.islice((lay for lay in layers if not pass_.supports(lay)), max_layers)):
        chains = [([layer.node], [index[i] for i in layer.node.input if i in index])]
        for choice in {target._round(c) for c in _spread(pass_, layer)}:
            fac = pass_.factorization(layer, choice, ctx)
            counter = itertools.count()
            from tensorfold.passes.chains import ChainBuilder

            b = ChainBuilder(layer, fac.method, lambda base: f"{base}_{next(counter)}", "")
            fac.emit(b)
            extra = [index[n] for n in [layer.bias_name] if n and n in index]
            chains.append((b.nodes, b.initializers + extra))
        for nodes, inits in chains:
            m = mini_model(nodes, inits, shapes, opset)
            ins = {v.name: shapes[v.name] for v in m.graph.input}
            feeds = {k: rng.standard_normal(v).astype(np.float32) for k, v in ins.items()}
            points.append((li, node_costs(m, ins), m, feeds))
    # every model timed round-robin with all the others (measure_interleaved), then a second pass
    # the same way: how well the measurement predicts itself on this host
    # --fresh-kernels: sample the kernel model now, right before the measurement, instead of using
    # the cached one: what is left of its error is the model's, not the host's drift since then
    kernels = learn_host(threads=threads, fallback=host, progress=True, cache=not fresh_kernels)
    passes = [
        [
            getattr(s, statistic) / 1e3
            for s in measure_interleaved([p[2:] for p in points], threads=threads, rounds=runs)
        ]
        for _ in range(2)
    ]
    again = np.array(passes[1])
    pred_kernels = np.array([kernels.predict(p[2], {k: list(v.shape) for k, v in p[3].items()}) for p in points])
    points = [(p[0], t, p[1]) for p, t in zip(points, passes[0])]
    meas = np.array([p[1] for p in points])
    pred_host = np.array([host.run_overhead_s + sum(host.node_seconds(c.flops, c.bytes) for c in p[2]) for p in points])
    pred_fit = np.zeros_like(meas)
    for parity in (0, 1):
        train = [p for p in points if p[0] % 2 == parity]
        fitted = fit_roofline([p[2] for p in train], [p[1] for p in train], host)
        for i, p in enumerate(points):
            if p[0] % 2 != parity:
                pred_fit[i] = fitted.run_overhead_s + sum(fitted.node_seconds(c.flops, c.bytes) for c in p[2])
    pred_kind = _fit_per_kind(points)
    out = {"points": len(points), "host": describe(host)}
    for label, pred in (
        ("calibrated", pred_host),
        ("fitted", pred_fit),
        ("per-kind fit", pred_kind),
        ("learned kernels", pred_kernels),
        ("second measurement", again),
    ):
        out[label] = {
            "kendall_tau": float(kendalltau(pred, meas).statistic),
            "within_10pct": float(np.mean(np.abs(pred / meas - 1) <= 0.10)),
            "median_abs_rel_error": float(np.median(np.abs(pred / meas - 1))),
        }
    return out


_KINDS = ("Conv", "Gemm", "MatMul")


def _fit_per_kind(points) -> np.ndarray:
    """An additive model in the style of nn-Meter's per-kernel predictors, kept linear: per op kind
    time = a * FLOPs + b * bytes + c per node, plus one call cost, non-negative least squares on
    relative error, fitted on the other half of the layers (held out as for the fitted roofline)."""
    from scipy.optimize import nnls

    def row(costs):
        r = [1.0]
        for kind in _KINDS + ("other",):
            cs = [c for c in costs if (c.op if c.op in _KINDS else "other") == kind]
            r += [sum(c.flops for c in cs) * 1e-9, sum(c.bytes for c in cs) * 1e-9, float(len(cs))]
        return r

    X = np.array([row(p[2]) for p in points])
    meas = np.array([p[1] for p in points])
    pred = np.zeros_like(meas)
    for parity in (0, 1):
        train = np.array([p[0] % 2 == parity for p in points])
        w = 1 / meas[train]
        coef, _ = nnls(X[train] * w[:, None], meas[train] * w)
        pred[~train] = X[~train] @ coef
    return pred


def run_model(name: str, path: Path, shape: str, speedup: float, tmp: Path, method: str) -> dict:
    out = tmp / f"{name}.hw.onnx"
    report = optimize(
        path, out, method=method, hardware_aware=True, provider="cpu", speedup=speedup, shapes=(shape,), progress=False
    )
    original, rewritten = onnx.load(path), onnx.load(out)
    feeds = random_inputs(original, {shape.split(":")[0]: [int(v) for v in shape.split(":")[1].split(",")]})
    row = {
        "model": name,
        "shape": shape,
        "speedup_asked": speedup,
        "layers": len(report.layers),
        "params_ratio": report.before.params / report.after.params,
        "flops_ratio": report.before.flops / report.after.flops,
        "output_rel_error": report.verification.max_relative_error,
        "output_max_abs_error": max(o.max_abs_error or 0 for o in report.verification.outputs),
        "planner_speedup": report.latency["speedup"],
        "notes": report.notes,
    }
    normalized, _ = normalize(original)
    for batch in (1, 8):
        fb = with_batch(feeds, batch)
        cmp = compare(rewritten, original, fb, runs=40)
        row[f"speedup_b{batch}"] = cmp.speedup  # input time / output time, per pair
        row[f"input_ms_b{batch}"] = measure(original, fb, runs=30).median  # alone: no second session beside it
        # the two parts: exact graph folds alone (normalize), and factorization against the folded model
        row[f"folds_b{batch}"] = compare(normalized, original, fb, runs=40).speedup
        row[f"factor_b{batch}"] = compare(rewritten, normalized, fb, runs=40).speedup
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    ap.add_argument("--speedup", default="1.3,1.5", help="targets to optimize for, comma-separated")
    ap.add_argument("--quality-layers", type=int, default=12)
    ap.add_argument("--method", default="auto")
    ap.add_argument("--quality-only", action="store_true", help="skip the optimization runs")
    ap.add_argument("--runs", type=int, default=60, help="device-model quality: timed runs per kernel")
    ap.add_argument("--threads", type=int, default=0, help="device-model quality: onnxruntime threads (0: all)")
    ap.add_argument(
        "--fresh-kernels",
        action="store_true",
        help="device-model quality: sample the learned kernel model right before measuring, not from the cache",
    )
    ap.add_argument("--statistic", choices=["min", "median"], default="median", help="of those runs")
    args = ap.parse_args()

    import torch

    from tensorfold.bench.models import resnet18
    from tensorfold.bench.real_models import fetch_rapidocr_model
    from tensorfold.export import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        r18 = export_onnx(resnet18(), torch.randn(1, 3, 224, 224), tmp / "resnet18.onnx")
        det = fetch_rapidocr_model("det")
        models = [
            ("PP-OCRv4 det (real)", det, "x:1,3,320,320"),
            ("ResNet-18 (random weights)", r18, "input:1,3,224,224"),
        ]
        rows, quality = [], []
        for name, path, shape in models:
            for target in [] if args.quality_only else [float(v) for v in args.speedup.split(",")]:
                rows.append(run_model(name, path, shape, target, tmp, args.method))
                print(rows[-1], file=sys.stderr)
            in_name, dims = shape.split(":")
            quality.append(
                (
                    name,
                    device_model_quality(
                        path,
                        {in_name: [int(v) for v in dims.split(",")]},
                        args.method,
                        args.quality_layers,
                        args.runs,
                        args.statistic,
                        args.threads,
                        args.fresh_kernels,
                    ),
                )
            )
            print(quality[-1], file=sys.stderr)
    title = "Device model quality" if args.quality_only else "Hardware-aware optimization on the CPU provider"
    lines = [
        f"# {title}",
        "",
        f"Command: `.venv/bin/python tools/bench_hardware_aware.py "
        f"{'--quality-only' if args.quality_only else f'--speedup {args.speedup}'} --method {args.method}"
        f"{f' --threads {args.threads}' if args.threads else ''}{' --fresh-kernels' if args.fresh_kernels else ''}"
        f"{f' --runs {args.runs} --statistic {args.statistic}' if (args.runs, args.statistic) != (60, 'median') else ''}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared), onnxruntime {__import__('onnxruntime').__version__} CPU provider  ",
        f"Date: {datetime.date.today().isoformat()}",
        "",
    ]
    if rows:
        lines += [
            f"Each model and target S: `tensorfold optimize --method {args.method} --hardware-aware --provider cpu --speedup S`"
            " (least weight error whose measured latency meets the speedup; chains must be >= 10% faster than "
            "their layer in isolation; the whole model is re-measured and layers fall back when it is not faster). "
            "Speedups: output vs input as given, 40 interleaved pairs, median of the per-pair ratios, same process; "
            "split into the exact graph folds of normalization alone (folded vs given) and factorization (output "
            "vs folded). The bar: speedup >= half the FLOPs ratio.",
            "",
            "| model | target | layers rewritten | params ratio | FLOPs ratio | speedup b1 | speedup b8 | "
            "folds b1 / b8 | factorization b1 / b8 | bar b1 / b8 | input ms b1 | max abs error |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
        ]
    for r in rows:
        bar = " / ".join("met" if r[f"speedup_b{b}"] >= r["flops_ratio"] / 2 else "missed" for b in (1, 8))
        lines.append(
            f"| {r['model']} | {r['speedup_asked']:g}x | {r['layers']} | {r['params_ratio']:.2f}x | "
            f"{r['flops_ratio']:.2f}x | {r['speedup_b1']:.2f}x | {r['speedup_b8']:.2f}x | "
            f"{r['folds_b1']:.2f}x / {r['folds_b8']:.2f}x | {r['factor_b1']:.2f}x / {r['factor_b8']:.2f}x | "
            f"{bar} | {r['input_ms_b1']:.2f} | {r['output_max_abs_error']:.2e} |"
        )
    if rows:
        lines += ["", "Planner notes:", ""]
    for r in rows:
        lines += [f"- {r['model']}, target {r['speedup_asked']:g}x: " + "; ".join(r["notes"])]
    lines += [
        "",
        "## Device model quality on this host",
        "",
        f"Measured latency of each layer and candidate chain, each as its own small model, all of one model's "
        f"timed round-robin ({args.runs} rounds; each visit one untimed run, then one timed; the {args.statistic} "
        f"per model; onnxruntime {'all' if not args.threads else args.threads} thread(s)), against: "
        "the roofline *calibrated* by three micro-benchmarks (`--device host-roofline`); "
        "the roofline *fitted* (peak, bandwidth, per-node and per-call overhead, least squares on log time) "
        "and a *per-kind fit* (per op kind a * FLOPs + b * bytes + c per node, non-negative least squares), "
        "both fitted on the measurements of the other half of the layers, so every prediction is for a layer "
        "the fit never saw; the *learned kernels* model (`--device host`: a random forest per kernel family "
        "over ~1,900 randomly sampled Conv/Gemm/MatMul kernels and 60 conv pairs timed the same way at calibration, "
        "never on these layers); and a *second measurement* of the same models right after the first, which "
        "bounds what any predictor can score against one measurement on this host.",
        "",
        "| model | points | predictor | Kendall tau | within +-10% | median abs. rel. error |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for name, q in quality:
        for label in ("calibrated", "fitted", "per-kind fit", "learned kernels", "second measurement"):
            r = q[label]
            lines.append(
                f"| {name} | {q['points']} | {label} | {r['kendall_tau']:.3f} | {r['within_10pct']:.0%} | "
                f"{r['median_abs_rel_error']:.0%} |"
            )
    lines += ["", f"Host profile: {quality[0][1]['host']}."]
    publish(lines, args.out)


if __name__ == "__main__":
    main()
