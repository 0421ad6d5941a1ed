"""A YOLO head's boxes and scores on one output: what a 0.05 bound writes, and how many detections
it keeps, with the output judged per scale group (tensorfold's check) or by one L2 over the output.

    .venv/bin/python tools/bench_detection_head.py [--samples 64] [--bound 0.05]

nudenet 3.4.2's YOLOv8n (320x320; output (N, 4 + 18, anchors): boxes in pixels, class scores in
0-1). The inputs are crops of the three photos that ship with matplotlib and scikit-learn
(grace_hopper.jpg, china.jpg, flower.jpg), resized to 320x320, seeded. `optimize --calibration
--max-output-error B --int8` writes the fastest candidate within B on its held-out quarter; the
table then counts, on every sample, the anchors whose best class score is above 0.2 in the
original and in the written model, beside onnxruntime's quantize_static (QDQ, per channel) of the
same model on the same samples. The whole-output L2 is what a single norm over boxes and scores
reads; the score group's L2 is the error of the class scores alone.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

THRESHOLD = 0.2


def photos(n: int, seed: int = 0) -> np.ndarray:
    """n crops (a half to the whole of each side, flipped at random) of the three sample photos."""
    import matplotlib
    import sklearn
    from PIL import Image

    paths = [
        Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg",
        Path(sklearn.__file__).parent / "datasets" / "images" / "china.jpg",
        Path(sklearn.__file__).parent / "datasets" / "images" / "flower.jpg",
    ]
    sources = [Image.open(p).convert("RGB") for p in paths]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        image = sources[i % 3]
        w, h = image.size
        scale = rng.uniform(0.5, 1.0)
        cw, ch = int(w * scale), int(h * scale)
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = image.crop((x0, y0, x0 + cw, y0 + ch))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out.append((np.asarray(crop.resize((320, 320)), np.float32) / 255.0).transpose(2, 0, 1))
    return np.stack(out)


def outputs(path: Path | str, x: np.ndarray) -> np.ndarray:
    from tensorfold.onnxrt.sessions import make_session

    session = make_session(str(path), "cpu")
    return np.concatenate([session.run(None, {"images": x[i : i + 8]})[0] for i in range(0, len(x), 8)])


def row(name: str, ref: np.ndarray, got: np.ndarray) -> str:
    whole = np.linalg.norm(ref - got) / np.linalg.norm(ref)
    scores_ref, scores_got = ref[:, 4:], got[:, 4:]
    scores = np.linalg.norm(scores_ref - scores_got) / np.linalg.norm(scores_ref)
    boxes = np.linalg.norm(ref[:, :4] - got[:, :4]) / np.linalg.norm(ref[:, :4])
    hits_ref, hits_got = scores_ref.max(1) > THRESHOLD, scores_got.max(1) > THRESHOLD
    kept = int((hits_ref & hits_got).sum())
    return (
        f"| {name} | {whole:.4f} | {boxes:.4f} | {scores:.4f} | {int(hits_got.sum())} | "
        f"{kept} of {int(hits_ref.sum())} |"
    )


def main(argv: list[str] | None = None) -> int:
    from tensorfold.api import optimize
    from tensorfold.bench.real_models import NUDENET, fetch_wheel_model
    from tensorfold.graph.io import load_model, save_model
    from tensorfold.quantize.baseline import ort_quantize_static

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--bound", type=float, default=0.05)
    parser.add_argument(
        "--whole-output", action="store_true", help="also run the command judging one L2 over the output, as before"
    )
    args = parser.parse_args(argv)
    model = fetch_wheel_model(NUDENET, "yolov8n")
    x = photos(args.samples)
    reference = outputs(model, x).astype(np.float64)
    lines = [
        f"Command: `.venv/bin/python tools/bench_detection_head.py --samples {args.samples} --bound {args.bound:g}"
        f"{' --whole-output' if args.whole_output else ''}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores; date {datetime.date.today()}",
        "",
        f"| model | whole-output L2 | boxes L2 | scores L2 | anchors > {THRESHOLD} | kept of the original's |",
        "|---|---:|---:|---:|---:|---:|",
        row("original", reference, reference),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        calibration = Path(tmp) / "photos.npz"
        np.savez(calibration, images=x)
        written = Path(tmp) / "int8.onnx"
        report = optimize(
            model, written, calibration=str(calibration), max_output_error=args.bound, int8=True, progress=False
        )
        chosen = report.deploy["chosen"] if report.deploy else "?"
        lines.append(
            row(
                f"tensorfold --max-output-error {args.bound:g} --int8 (wrote: {chosen})", reference, outputs(written, x)
            )
        )
        if args.whole_output:  # the same command judging one L2 over the whole output (before 2026-12-07)
            import tensorfold.graph.verify as verify

            groups, verify.scale_groups = verify.scale_groups, lambda energy: None
            try:
                optimize(
                    model, written, calibration=str(calibration), max_output_error=args.bound, int8=True, progress=False
                )
            finally:
                verify.scale_groups = groups
            lines.append(row("the same, judged by one L2 over the output", reference, outputs(written, x)))
        ort = Path(tmp) / "ort.onnx"
        save_model(ort_quantize_static(load_model(model), {"images": x[: len(x) * 3 // 4]}), ort)
        lines.append(row("onnxruntime quantize_static", reference, outputs(ort, x)))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
