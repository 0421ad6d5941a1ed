"""The benchmark runner: for each model x method x ratio compress, recover and measure, beside
the original and int8 static quantization (onnxruntime, QDQ) of both. Rows are appended to
`rows.jsonl` as they finish, so an interrupted suite resumes where it stopped."""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from tensorfold.bench.train import Recipe, baseline, cache_path, check_fits, is_cached, suite_data
from tensorfold.datasets import image_channels, prepare_inputs
from tensorfold.errors import TensorfoldError, Terminated
from tensorfold.graph.model import count_params
from tensorfold.outputs import OutputFolder, write_text_atomic
from tensorfold.runtime.evaluation import evaluate_onnx

SUITES = {
    # minutes on a laptop, the same code path as the full suite
    "smoke": dict(
        models=("resnet18",),
        methods=("tucker",),
        ratios=(4.0,),
        width=0.125,
        recipe=Recipe(epochs=1, train_limit=4000),
        steps=20,
        test_limit=1000,
        calibration=64,
    ),
    # width-reduced: what two CPU cores can train in minutes per model
    "fashion-mnist-cpu": dict(
        models=("resnet18", "vgg16", "mobilenetv2"),
        methods=("tucker", "cp", "tt", "auto"),
        ratios=(4.0, 8.0, 16.0),
        width=0.25,
        recipe=Recipe(epochs=3),
        steps=400,
        test_limit=None,
        calibration=256,
    ),
    # full width: for a GPU machine
    "fashion-mnist": dict(
        models=("resnet18", "vgg16", "mobilenetv2"),
        methods=("tucker", "tt", "auto"),
        ratios=(8.0, 16.0, 32.0),
        width=1.0,
        recipe=Recipe(epochs=15),
        steps=400,
        test_limit=None,
        calibration=256,
    ),
}


@dataclass
class Suite:
    models: tuple
    methods: tuple
    ratios: tuple
    width: float
    recipe: Recipe
    steps: int
    test_limit: int | None
    calibration: int
    data: str = "fashion-mnist"
    label: str = ""
    extra: dict = field(default_factory=dict)


def suite_from_options(
    suite: str,
    models: str | None = None,
    methods: str | None = None,
    ratios: str | None = None,
    width: float | None = None,
    epochs: int | None = None,
    steps: int | None = None,
    data: str = "fashion-mnist",
) -> Suite:
    """A named suite with the command line's overrides (comma-separated lists), each checked."""
    import torch

    from tensorfold.bench.zoo import ZOO
    from tensorfold.passes import METHODS

    cfg = dict(SUITES[suite])
    if models:
        cfg["models"] = tuple(m.strip() for m in models.split(","))
        unknown = [m for m in cfg["models"] if m not in ZOO]
        if unknown:
            raise TensorfoldError(f"unknown model(s) {unknown} (zoo: {', '.join(ZOO)})")
    if methods:
        cfg["methods"] = tuple(m.strip() for m in methods.split(","))
        unknown = [m for m in cfg["methods"] if m not in METHODS]
        if unknown:
            raise TensorfoldError(f"unknown method(s) {unknown}")
    if ratios:
        try:
            cfg["ratios"] = tuple(float(r) for r in ratios.split(","))
        except ValueError:
            raise TensorfoldError(f"--ratios '{ratios}': expected numbers like 4,8") from None
        small = [f"{r:g}" for r in cfg["ratios"] if not r > 1]
        if small:
            raise TensorfoldError(f"--ratios: each ratio must be > 1 (got {', '.join(small)})")
    if width is not None:
        cfg["width"] = width
    if epochs is not None:
        cfg["recipe"] = replace(cfg["recipe"], epochs=epochs)
    if steps is not None:
        cfg["steps"] = steps
    label = f"{suite} suite, baseline trained on {'cuda' if torch.cuda.is_available() else 'cpu'}"
    return Suite(**cfg, data=data, label=label)


def _environment() -> dict:
    import onnxruntime
    import torch

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.node()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "command": " ".join(["tensorfold"] + sys.argv[1:]),
    }


def quantize_int8(src: Path, dst: Path, calib: np.ndarray) -> Path:
    """onnxruntime's static int8 as a user runs it (quantize/baseline.py), calibrated on training images."""
    from tensorfold.graph.io import save_model
    from tensorfold.onnxrt.inputs import model_inputs
    from tensorfold.quantize.baseline import ort_quantize_static

    model = onnx.load(str(src))
    save_model(ort_quantize_static(model, {model_inputs(model)[0].name: calib}), dst)
    return dst


def peak_memory_mb(model_path: Path, x: np.ndarray) -> float | None:
    """What the model's own onnxruntime session and one batch add to a fresh process's peak memory
    (runtime.memory.measured_peak_bytes; the interpreter and imports are not counted)."""
    from tensorfold.runtime.memory import measured_peak_bytes

    name = onnx.load(str(model_path), load_external_data=False).graph.input[0].name
    peak = measured_peak_bytes(model_path, {name: x})
    return round(peak / 2**20, 1) if peak is not None else None


def _latency(model_path: Path, original: Path, x: np.ndarray) -> dict:
    from tensorfold.runtime.latency import compare, with_batch

    name = onnx.load(str(original), load_external_data=False).graph.input[0].name
    out = {}
    for batch in (1, 32):
        cmp = compare(str(model_path), str(original), {name: with_batch({"x": x}, batch)["x"]}, runs=20, warmup=3)
        out[f"latency_ms_b{batch}"] = round(cmp.a.median, 4)
        # the ratio is of this comparison's own timings: another row's time of the original differs by the noise
        out[f"original_latency_ms_b{batch}"] = round(cmp.b.median, 4)
        out[f"latency_ratio_b{batch}"] = round(cmp.speedup, 4)  # original time / this time
    out["latency_ratio"] = out["latency_ratio_b1"]
    out["peak_memory_mb_b32"] = peak_memory_mb(model_path, with_batch({"x": x}, 32)["x"])
    return out


def _measure(path: Path, original: Path, base: dict, tx, ty, x_lat) -> dict:
    from tensorfold.graph.stats import model_stats

    model = onnx.load(str(path))
    name = model.graph.input[0].name
    stats = model_stats(model, {name: [1, *tx.shape[1:]]})
    row = {
        "params": count_params(model),
        "flops": stats.flops,
        "size_bytes": path.stat().st_size,
        "accuracy": evaluate_onnx(path, tx, ty),
        "test_samples": len(ty),  # the suite's test images (the baseline's own accuracy is on all of them)
    }
    row.update(
        {
            "params_ratio": round(base["params"] / row["params"], 4),
            "flops_ratio": round(base["flops"] / row["flops"], 4) if row["flops"] else None,
            "size_ratio": round(base["size_bytes"] / row["size_bytes"], 4),
            "accuracy_loss": round(base["accuracy"] - row["accuracy"], 6),
        }
    )
    row.update(_latency(path, original, x_lat))
    return row


def read_rows(path: Path) -> list[dict]:
    """The rows of an earlier run to resume from. A last line cut short (a run killed while writing
    it) is dropped, and its row is measured again; any other bad line is refused by number."""
    from tensorfold.errors import TensorfoldError
    from tensorfold.log import warn

    text = path.read_text(errors="replace")
    lines = text.split("\n")
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or "key" not in row:
                raise ValueError("not a bench row")
        except ValueError:
            if number == len(lines) and not text.endswith("\n"):
                warn(f"{path}: line {number} was cut short (an interrupted run); its row is measured again")
                write_text_atomic(path, "\n".join(lines[:-1]) + ("\n" if len(lines) > 1 else ""))
                break
            raise TensorfoldError(
                f"{path}: line {number} is not a bench row; remove that line (or the file) to go on"
            ) from None
        rows.append(row)
    return rows


def run_suite(suite: Suite, out_dir: Path, cache: Path, progress: bool = True, log=print) -> list[dict]:
    import torch

    from tensorfold.api import optimize
    from tensorfold.recovery.config import RecoverConfig
    from tensorfold.recovery.run import recover

    # everything refusable is refused before the folder is made: its files, then the data
    folder = OutputFolder(out_dir, "-o", ("rows.jsonl", "models")).check()
    models = OutputFolder(out_dir / "models", "-o", ("*.onnx", "*.onnx.data", "*.ckpt")).check()
    rows_path = out_dir / "rows.jsonl"
    done = {row["key"]: row for row in read_rows(rows_path)} if rows_path.exists() else {}
    env = _environment()
    x, y, _ = suite_data(suite.data, "train")
    tx, ty, _ = suite_data(suite.data, "test")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    in_ch = image_channels(x)
    size = tuple(prepare_inputs(x[:1], [1, in_ch, -1, -1]).shape[-2:])
    for model in suite.models:  # a baseline that cannot be trained here is refused before any is
        if not is_cached(cache_path(model, suite.width, suite.data, suite.recipe, cache)):
            check_fits(model, suite.width, in_ch, size, suite.recipe.batch_size, device)
    folder.open()
    folder.file("rows.jsonl")
    folder.file("models")
    if suite.test_limit:
        tx, ty = tx[: suite.test_limit], ty[: suite.test_limit]
    calib = prepare_inputs(x[: suite.calibration], [1, in_ch, -1, -1])
    tx = prepare_inputs(tx, [1, in_ch, -1, -1])
    x_lat = tx[:32]
    models.open()

    def emit(row):
        row.update(env)
        row["label"] = suite.label
        again = row["key"] in done  # a row measured again (its pair was cut short) replaces the old one
        done[row["key"]] = row
        if again:
            write_text_atomic(rows_path, "".join(json.dumps(r) + "\n" for r in done.values()))
        else:
            with open(rows_path, "a") as fh:  # one line per row: an interrupted run loses at most the row in flight
                fh.write(json.dumps(row) + "\n")
        if "error" in row:
            log(f"{row['key']}: failed: {row['error']}")
        else:
            log(
                f"{row['key']}: accuracy {row['accuracy']:.4f}, params x{row['params_ratio']:.2f}, "
                f"latency x{row['latency_ratio_b1']:.2f} (b1)"
            )

    for model in suite.models:
        prefix = f"{model}/w{suite.width:g}"
        original, meta = baseline(model, suite.width, suite.data, suite.recipe, cache, progress=progress)
        base_model = onnx.load(str(original))
        from tensorfold.graph.stats import model_stats

        base = {
            "params": count_params(base_model),
            "size_bytes": original.stat().st_size,
            "flops": model_stats(base_model, {base_model.graph.input[0].name: [1, *tx.shape[1:]]}).flops,
            "accuracy": evaluate_onnx(original, tx, ty),
        }
        common = {"model": model, "width": suite.width, "baseline_train": meta}
        if f"{prefix}/original" not in done:
            row = dict(common, key=f"{prefix}/original", method="original", ratio=1.0, int8=False)
            row.update(_measure(original, original, base, tx, ty, x_lat))
            emit(row)
        if f"{prefix}/original/int8" not in done:
            q = quantize_int8(original, models.file(f"{model}.int8.onnx"), calib)
            row = dict(common, key=f"{prefix}/original/int8", method="original", ratio=1.0, int8=True)
            row.update(_measure(q, original, base, tx, ty, x_lat))
            emit(row)
        for method in suite.methods:
            for ratio in suite.ratios:
                key = f"{prefix}/{method}/x{ratio:g}"
                if key in done and f"{key}/int8" in done:
                    continue
                small = models.file(f"{model}.{method}.x{ratio:g}.onnx")
                rec = models.file(f"{model}.{method}.x{ratio:g}.rec.onnx")
                models.file(f"{rec.name}.ckpt")
                start = time.perf_counter()
                try:
                    report = optimize(original, small, method=method, ratio=ratio, verify=False, progress=False)
                except Exception as exc:  # noqa: BLE001 - one failed row must not stop a suite
                    emit(
                        dict(
                            common,
                            key=key,
                            method=method,
                            ratio=ratio,
                            int8=False,
                            error=str(exc).splitlines()[0][:300],
                        )
                    )
                    emit(
                        dict(
                            common,
                            key=f"{key}/int8",
                            method=method,
                            ratio=ratio,
                            int8=True,
                            error="no compressed model to quantize",
                        )
                    )
                    continue
                compressed_accuracy = evaluate_onnx(small, tx, ty)
                if suite.steps:
                    try:
                        r = recover(
                            small,
                            rec,
                            teacher_path=original,
                            data=suite.data,
                            cfg=RecoverConfig(max_steps=suite.steps, batch_size=128, device=device),
                            progress=progress,
                            limit=suite.recipe.train_limit,
                        )
                    except (KeyboardInterrupt, Terminated) as exc:  # recover's own hint names its --resume
                        raise type(exc)(
                            f"during {key}; the rows so far are in {rows_path}: the same command continues "
                            f"from this row"
                        ) from None
                else:  # --steps 0: the compressed model as it is
                    shutil.copyfile(small, rec)
                    r = {"steps": 0, "seconds": 0.0}
                row = dict(
                    common,
                    key=key,
                    method=method,
                    ratio=ratio,
                    int8=False,
                    recover_device=device,
                    compressed_accuracy=compressed_accuracy,
                    recover_steps=r["steps"],
                    recover_seconds=r["seconds"],
                    layers_rewritten=len(report.layers),
                    seconds=round(time.perf_counter() - start, 1),
                )
                row.update(_measure(rec, original, base, tx, ty, x_lat))
                emit(row)
                q = quantize_int8(rec, models.file(f"{model}.{method}.x{ratio:g}.rec.int8.onnx"), calib)
                row = dict(
                    common,
                    key=f"{key}/int8",
                    method=method,
                    ratio=ratio,
                    int8=True,
                    compressed_accuracy=compressed_accuracy,
                )
                row.update(_measure(q, original, base, tx, ty, x_lat))
                emit(row)
    return list(done.values())
