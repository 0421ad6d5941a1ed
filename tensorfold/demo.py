"""`tensorfold demo`: the built-in Fashion-MNIST CNN through the best path, then further with recovery.

1. Deploy: 48 real Fashion-MNIST images (shipped in tensorfold/data, from the training split) as
   --calibration, a bound on the held-out output error and --int8: the fastest model within it,
   every candidate measured side by side (the full report).
2. Smaller still: a calibrated Tucker-2 at --ratio (more error than the bound allows), then recovered
   by distillation from the original when Debian's Fashion-MNIST is installed.
"""

from __future__ import annotations

import tempfile
from importlib import resources
from pathlib import Path

import numpy as np
from rich.console import Console

from tensorfold.errors import TensorfoldError
from tensorfold.outputs import check_output

DEMO_OUTPUT = Path("results/demo/fmnist_cnn.tucker.onnx")  # out of the way of a checkout's files
DEMO_BOUND = 0.02


def demo_model_path() -> Path:
    return Path(str(resources.files("tensorfold") / "data" / "fmnist_cnn.onnx"))


def demo_samples() -> np.ndarray:
    """64 Fashion-MNIST training images as the demo model takes them, float32 (64, 1, 28, 28) in [0, 1]."""
    with resources.files("tensorfold").joinpath("data", "fmnist_samples.npz").open("rb") as fh:
        images = np.load(fh)["images"]
    return (images.astype(np.float32) / 255.0)[:, None, :, :]


def run_demo(console: Console, output: Path, ratio: float, recover_steps: int) -> None:
    from tensorfold.api import OptimizeOptions, optimize

    src = demo_model_path()
    made = [p for p in reversed(output.parents) if not p.exists()] if output == DEMO_OUTPUT else []
    for folder in made:
        folder.mkdir()
    deployed = output.with_name(src.stem + ".deploy.onnx")
    for path in (output, deployed):  # both outputs checked before any work
        check_output(path)
    progress = True  # a bar on a terminal, a line a minute in a log
    try:
        with tempfile.TemporaryDirectory(prefix="tensorfold-demo-") as tmp:
            samples = Path(tmp, "samples.npz")
            np.savez(samples, x=demo_samples())
            console.print(
                f"demo: {src.name}, a 3-conv CNN trained on Fashion-MNIST\n"
                f"1. the fastest model within {DEMO_BOUND:g} held-out output error: --calibration "
                f"(64 real images, a quarter held out) --max-output-error {DEMO_BOUND:g} --int8"
            )
            # both steps' options are checked before either runs: a bad --ratio leaves nothing behind
            first = OptimizeOptions(
                calibration=str(samples),
                max_output_error=DEMO_BOUND,
                int8=True,
                class_outputs=("logits",),
                progress=progress,
            )
            second = OptimizeOptions(
                method="tucker", ratio=ratio, calibration=str(samples), class_outputs=("logits",), progress=progress
            )
            optimize(src, deployed, first).render(console)
            console.print(f"\n2. smaller still: calibrated tucker --ratio {ratio:g}, then recovered by distillation")
            small = optimize(src, output, second)
    except BaseException:
        for folder in reversed(made):  # a demo that failed leaves nothing behind
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise
    v = small.verification
    lat = small.latency  # the written model timed against the input (smaller is not always faster)
    speed = f", {lat['speedup']:.2f}x the input's speed on {lat['target']}" if lat else ""
    console.print(
        f"tucker x{ratio:g}: {small.before.params:,} -> {small.after.params:,} parameters, held-out output "
        f"error {v.max_error:.3f} before recovery{speed}; wrote {output}"
        if v
        else f"wrote {output}"
    )
    if not _accuracy(console, src, {"deployed": deployed, "tucker": output}) or recover_steps <= 0:
        return
    from tensorfold.recovery.config import RecoverConfig
    from tensorfold.recovery.run import recover

    recovered = Path(output).with_name(Path(output).stem + ".rec.onnx")
    console.print(
        f"recover: {recover_steps} steps of distillation from the original (Hinton KD + each chain's "
        f"output matched to its layer's) ..."
    )
    r = recover(
        output,
        recovered,
        teacher_path=src,
        data="fashion-mnist",
        cfg=RecoverConfig(max_steps=recover_steps),
        progress=progress,
    )
    test = r["test_accuracy"]
    console.print(
        f"Fashion-MNIST test accuracy, recovered: {test['student_after']:.2%} after {r['steps']} steps "
        f"({r['seconds']:.0f} s); wrote {recovered}"
    )


def _accuracy(console: Console, original: Path, models: dict[str, Path]) -> bool:
    """Test-set accuracy of each model, when Debian's dataset-fashion-mnist is installed."""
    try:
        from tensorfold.datasets import load_fashion_mnist, to_model_input

        images, labels = load_fashion_mnist(split="test")
    except TensorfoldError as exc:
        console.print(f"(accuracy not measured: {exc})")
        return False
    from tensorfold.runtime.evaluation import evaluate_onnx

    x = to_model_input(images)
    for label, path in {"original": original, **models}.items():
        console.print(f"Fashion-MNIST test accuracy, {label}: {evaluate_onnx(path, x, labels):.2%} (no fine-tuning)")
    return True
