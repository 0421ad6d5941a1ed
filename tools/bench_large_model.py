"""A model above protobuf's 2 GiB cap, end to end through the CLI, as a user runs it.

    .venv/bin/python tools/bench_large_model.py [--gib 2.1] [--ratio 1.2] [--workdir DIR] [--out FILE]

Writes a synthetic MLP of 1024x16384 / 16384x1024 MatMul weights (seeded Gaussian, He-scaled, ReLU
between) straight to `big.onnx` + `big.onnx.data` (the weights streamed, never one proto), with
enough layers for --gib GiB of weights. Then runs, each in its own process:
`tensorfold inspect`, `optimize --method svd --ratio R`, `verify` against the original and `profile`
of the result; it records each step's wall time, the peak memory of its process (ru_maxrss from
wait4) and the files written. Exit status 1 if any step fails. Needs about 4x --gib GiB of memory
and 2x --gib of disk under --workdir (a temp folder by default, removed after).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from tensorfold.bench.report import publish

WIDE, NARROW, BATCH = 16384, 1024, 8


def write_model(folder: Path, gib: float, seed: int = 0) -> tuple[Path, int, int]:
    """An MLP with weights > `gib` GiB, saved as ONNX with its weights in one external data file."""
    per_layer = WIDE * NARROW * 4
    layers = max(2, int(np.ceil(gib * 2**30 / per_layer)))
    layers += layers % 2  # back to NARROW wide at the end
    rng = np.random.default_rng(seed)
    nodes, inits, offset = [], [], 0
    data = folder / "big.onnx.data"
    with open(data, "wb") as out:
        for i in range(layers):
            shape = (NARROW, WIDE) if i % 2 == 0 else (WIDE, NARROW)
            # rank-512 structure plus 1% noise: a spectrum that decays, as trained weights' does
            a = rng.standard_normal((shape[0], 512), dtype=np.float32)
            b = rng.standard_normal((512, shape[1]), dtype=np.float32)
            w = a @ b * np.float32(np.sqrt(2.0 / shape[0]) / np.sqrt(512))
            w += rng.standard_normal(shape, dtype=np.float32) * np.float32(0.01 * np.sqrt(2.0 / shape[0]))
            out.write(w.tobytes())
            tensor = TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=shape)
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (("location", data.name), ("offset", str(offset)), ("length", str(w.nbytes))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            offset += w.nbytes
            inits.append(tensor)
            nodes.append(helper.make_node("MatMul", [f"h{i}", f"w{i}"], [f"m{i}"], name=f"fc{i}"))
            nodes.append(helper.make_node("Relu", [f"m{i}"], [f"h{i + 1}"], name=f"relu{i}"))
    nodes[-1] = helper.make_node("Identity", [f"m{layers - 1}"], [f"h{layers}"], name="out")
    graph = helper.make_graph(
        nodes,
        "large_mlp",
        [helper.make_tensor_value_info("h0", TensorProto.FLOAT, [BATCH, NARROW])],
        [helper.make_tensor_value_info(f"h{layers}", TensorProto.FLOAT, [BATCH, NARROW])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = folder / "big.onnx"
    path.write_bytes(model.SerializeToString())
    return path, layers, offset


def step(name: str, args: list[str], cwd: Path) -> dict:
    """Run one CLI command; its wall time, its own peak RSS (wait4), status and last output lines."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tensorfold", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    print(f"{name}: exit {proc.returncode}, {seconds:.0f} s, peak {usage.ru_maxrss / 2**20:.1f} GiB", flush=True)
    return {
        "step": name,
        "command": "tensorfold " + " ".join(args),
        "exit": proc.returncode,
        "seconds": seconds,
        "peak_gib": usage.ru_maxrss / 2**20,
        "tail": output.strip().splitlines()[-3:],
        "output": output,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.1, help="GiB of weights (above 2 to pass protobuf's cap)")
    parser.add_argument("--ratio", type=float, default=1.2)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="tensorfold-large-", dir=args.workdir))
    try:
        start = time.perf_counter()
        path, layers, weight_bytes = write_model(folder, args.gib)
        written = time.perf_counter() - start
        print(
            f"wrote {path}: {layers} layers, {weight_bytes / 2**30:.2f} GiB of weights in {written:.0f} s", flush=True
        )
        steps = [
            step("inspect", ["inspect", "big.onnx"], folder),
            step(
                "optimize",
                ["optimize", "big.onnx", "-o", "small.onnx", "--method", "svd", "--ratio", str(args.ratio), "--json"],
                folder,
            ),
            step("verify", ["verify", "big.onnx", "small.onnx"], folder),
            step("profile", ["profile", "small.onnx", "--runs", "5", "--warmup", "1"], folder),
        ]
        files = {p.name: p.stat().st_size for p in sorted(folder.iterdir())}
        checked = "small.onnx" in files and onnx.checker.check_model(str(folder / "small.onnx")) is None
        if checked:
            out_model = onnx.load(str(folder / "small.onnx"), load_external_data=False)
            out_params = sum(int(np.prod(t.dims)) for t in out_model.graph.initializer)
        report = None
        if steps[1]["exit"] == 0:
            out = steps[1]["output"]
            report = json.loads(out[out.index("{") :])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    ok = all(s["exit"] == 0 for s in steps) and checked
    lines = [
        f"Command: `.venv/bin/python tools/bench_large_model.py --gib {args.gib:g} --ratio {args.ratio:g}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"onnx {onnx.__version__}  ",
        f"Date: {datetime.date.today()}  ",
        f"Model: synthetic MLP, {layers} MatMul layers of {NARROW}x{WIDE} / {WIDE}x{NARROW} float32, "
        f"{weight_bytes / 2**30:.2f} GiB of weights in `big.onnx.data` (written in {written:.0f} s), "
        f"input [{BATCH}, {NARROW}].",
        "",
        "| step | exit | seconds | peak memory of the process (GiB) | peak / weights |",
        "|---|---:|---:|---:|---:|",
    ]
    for s in steps:
        lines.append(
            f"| `{s['command']}` | {s['exit']} | {s['seconds']:.0f} | {s['peak_gib']:.1f} | "
            f"{s['peak_gib'] / (weight_bytes / 2**30):.1f}x |"
        )
    lines += [
        "",
        "Files written: "
        + ", ".join(f"`{k}` {v / 2**30:.2f} GiB" if v > 2**20 else f"`{k}` {v:,} B" for k, v in files.items())
        + "  ",
    ]
    if checked:
        lines.append(
            f"`small.onnx` passes onnx.checker (by path); {out_params:,} parameters (input: {weight_bytes // 4:,})."
        )
    if report:
        check = report.get("verification") or {}
        out = (check.get("outputs") or [{}])[0]
        lines.append(
            f"optimize's own verification: relative output error {check.get('max_relative_error'):.4f}, "
            f"argmax agreement {out.get('argmax_agreement')}, on {check.get('inputs')}."
        )
    lines += [
        "",
        "Where the memory goes: the input model and the rewritten one as protobuf messages, the "
        "float64 factors of the layers while they are rewritten, onnxruntime's copy of each model it "
        "runs and the weights handed to it while a session is built. Plan for the peak / weights "
        "ratio above times the model's weights in RAM.",
    ]
    lines += [
        "",
        "Result: "
        + (
            "every step passed."
            if ok
            else "FAILED: "
            + "; ".join(f"{s['step']} exit {s['exit']}: {' / '.join(s['tail'])}" for s in steps if s["exit"])
        ),
    ]
    publish(lines, args.out)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
