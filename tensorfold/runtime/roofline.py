"""Roofline device models: a latency per node of max(FLOPs / peak, bytes / bandwidth) + a per-kernel
overhead, summed over the graph. For a device tensorfold cannot reach (an RX 580 on this machine)
it predicts; `host-roofline` is calibrated by micro-benchmarks through onnxruntime on this machine.
A device may carry a learned kernel model (runtime/kernel_model.py) that predicts in its place."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tensorfold.graph.model import make_model
from tensorfold.graph.shapes import concrete_shapes
from tensorfold.graph.stats import node_flops
from tensorfold.outputs import write_text_atomic


@dataclass(frozen=True)
class Device:
    name: str
    peak_flops: float  # FLOP/s (fp32) a well-shaped conv/matmul reaches
    bandwidth: float  # bytes/s
    overhead_s: float  # fixed cost per kernel launch / node dispatch
    memory_bytes: int | None = None
    note: str = ""
    run_overhead_s: float = 0.0  # fixed cost per inference call (session.run, input/output copies)
    # `host`: the learned per-kernel model (runtime/kernel_model.py) that predicts in place of the roofline
    kernels: object = field(default=None, compare=False, repr=False)
    key: str = ""  # names this device's cached predictions (default: its name)

    def node_seconds(self, flops: float, nbytes: float) -> float:
        return max(flops / self.peak_flops, nbytes / self.bandwidth) + self.overhead_s


# Datasheet peaks (fp32) and memory bandwidth; overheads are typical kernel-launch costs of a
# discrete GPU driver stack. These predict; a real provider measures.
DEVICES: dict[str, Device] = {
    "rx580": Device(
        "rx580",
        6.17e12,
        256e9,
        10e-6,
        8 << 30,
        "AMD Radeon RX 580 (Polaris, gfx803), reached through DirectML or WebGPU",
        50e-6,
    ),
    "gtx1060": Device("gtx1060", 4.375e12, 192e9, 8e-6, 6 << 30, "NVIDIA GTX 1060 6GB (Pascal)", 30e-6),
    "rtx3060": Device("rtx3060", 12.74e12, 360e9, 6e-6, 12 << 30, "NVIDIA RTX 3060 (Ampere)", 30e-6),
    "a100": Device("a100", 19.5e12, 1555e9, 5e-6, 40 << 30, "NVIDIA A100 40GB, fp32 without TF32", 30e-6),
    "h100": Device("h100", 67e12, 3350e9, 5e-6, 80 << 30, "NVIDIA H100 SXM, fp32 without TF32", 30e-6),
    "rpi4": Device("rpi4", 13.5e9, 4e9, 20e-6, 4 << 30, "Raspberry Pi 4 (4x Cortex-A72 NEON)", 20e-6),
}

# ops onnxruntime runs as metadata changes (no data moved, no kernel worth counting)
FREE_OPS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Shape", "Constant", "Dropout"}
_ELEM_BYTES = {
    TensorProto.FLOAT: 4,
    TensorProto.FLOAT16: 2,
    TensorProto.DOUBLE: 8,
    TensorProto.INT64: 8,
    TensorProto.INT32: 4,
    TensorProto.INT8: 1,
    TensorProto.UINT8: 1,
    TensorProto.BOOL: 1,
}


@dataclass
class NodeCost:
    node: str
    op: str
    flops: float
    bytes: float


def node_costs(
    model: onnx.ModelProto, input_shapes: dict[str, list[int]], shapes: dict[str, list[int]] | None = None
) -> list[NodeCost]:
    """FLOPs (multiply-add = 2; other ops one per output element) and bytes read + written per node.
    `shapes`: the model's concrete shapes where the caller has them already."""
    if shapes is None:
        needed = {v for n in model.graph.node for v in list(n.input) + list(n.output) if v}
        shapes = concrete_shapes(model, input_shapes, needed)
    costs = []
    for node in model.graph.node:
        if node.op_type in FREE_OPS:
            continue
        sizes = [int(np.prod(shapes[v])) if v in shapes else 0 for v in list(node.input) + list(node.output) if v]
        nbytes = 4.0 * sum(sizes)
        flops = node_flops(node, shapes)
        if not flops:
            out = shapes.get(node.output[0])
            flops = float(np.prod(out)) if out else 0.0
        costs.append(NodeCost(node.name or node.output[0], node.op_type, float(flops), nbytes))
    return costs


def predict_seconds(model: onnx.ModelProto, input_shapes: dict[str, list[int]], device: Device) -> float:
    """One inference: the call's fixed cost plus every node's roofline time (or, on a device with a
    learned kernel model, every node's learned time)."""
    if device.kernels is not None:
        return device.kernels.predict(model, input_shapes)
    return device.run_overhead_s + sum(device.node_seconds(c.flops, c.bytes) for c in node_costs(model, input_shapes))


# --- host calibration -------------------------------------------------------------------------


def _model(nodes, inputs, outputs, inits=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "calibration", inputs, outputs, list(inits))
    return make_model(graph, [helper.make_opsetid("", 17)])


def _median_seconds(model: onnx.ModelProto, feeds, provider: str, threads: int, runs: int = 15) -> float:
    from tensorfold.runtime.latency import measure

    return measure(model, feeds, provider, threads, warmup=3, runs=runs).median / 1e3


def host_key(provider: str, threads: int) -> str:
    import onnxruntime as ort

    cpu = ""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "")
    except OSError:
        pass
    ident = f"{platform.node()}|{cpu}|{os.cpu_count()}|{provider}|{threads}|{ort.__version__}"
    return hashlib.sha1(ident.encode()).hexdigest()[:12]


def calibrate_host(provider: str = "cpu", threads: int = 0, cache: bool = True) -> Device:
    """Measure this machine through onnxruntime: a 3x3 conv for peak FLOP/s, a large Add for
    bandwidth, a chain of tiny Relu nodes for per-node overhead. Cached per host and provider."""
    from tensorfold.paths import cache_dir

    path = cache_dir() / "devices" / f"host-v3-{host_key(provider, threads)}.json"
    if cache and path.exists():
        try:
            return Device(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            from tensorfold.log import warn

            warn(f"device cache {path} is unreadable ({type(exc).__name__}); measuring this host again")
    rng = np.random.default_rng(0)
    f32 = TensorProto.FLOAT

    # per-node overhead: 200 Relus on 8 floats, less one Relu's time (the call's fixed cost)
    def relu_chain(n):
        relus = [helper.make_node("Relu", [f"r{i}"], [f"r{i + 1}"]) for i in range(n)]
        m = _model(
            relus,
            [helper.make_tensor_value_info("r0", f32, [1, 8])],
            [helper.make_tensor_value_info(f"r{n}", f32, [1, 8])],
        )
        return _median_seconds(m, {"r0": rng.standard_normal((1, 8)).astype(np.float32)}, provider, threads)

    n = 200
    one, many = relu_chain(1), relu_chain(n)
    overhead = max(many - one, 0.0) / (n - 1)
    run_overhead = max(one - overhead, 0.0)
    # bandwidth: y = a + b over 4M floats (48 MB moved)
    size = 4 << 20
    m = _model(
        [helper.make_node("Add", ["a", "b"], ["y"])],
        [helper.make_tensor_value_info("a", f32, [size]), helper.make_tensor_value_info("b", f32, [size])],
        [helper.make_tensor_value_info("y", f32, [size])],
    )
    t = _median_seconds(
        m,
        {"a": rng.standard_normal(size).astype(np.float32), "b": rng.standard_normal(size).astype(np.float32)},
        provider,
        threads,
    )
    bandwidth = 3 * 4 * size / max(t - overhead - run_overhead, 1e-9)
    # compute: 3x3 conv 128 -> 128 on 28x28 (231 MFLOP)
    w = numpy_helper.from_array(rng.standard_normal((128, 128, 3, 3)).astype(np.float32), "W")
    m = _model(
        [helper.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1, 1, 1])],
        [helper.make_tensor_value_info("x", f32, [1, 128, 28, 28])],
        [helper.make_tensor_value_info("y", f32, [1, 128, 28, 28])],
        [w],
    )
    t = _median_seconds(m, {"x": rng.standard_normal((1, 128, 28, 28)).astype(np.float32)}, provider, threads)
    peak = 2 * 128 * 128 * 9 * 28 * 28 / max(t - overhead - run_overhead, 1e-9)
    device = Device(
        "host-roofline",
        peak,
        bandwidth,
        overhead,
        None,
        f"calibrated {time.strftime('%Y-%m-%d')} on {platform.node()} through {provider}",
        run_overhead,
        key=f"host-roofline-{host_key(provider, threads)}",
    )
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps({k: v for k, v in asdict(device).items() if k != "kernels"}))
    return device


def describe(device: Device) -> str:
    if device.kernels is not None:
        return f"{device.name}: per-kernel model, {device.run_overhead_s * 1e6:.1f} us per call ({device.note})"
    return (
        f"{device.name}: {device.peak_flops / 1e9:.1f} GFLOP/s, {device.bandwidth / 1e9:.1f} GB/s, "
        f"{device.overhead_s * 1e6:.1f} us per node, {device.run_overhead_s * 1e6:.1f} us per call"
        + (f" ({device.note})" if device.note else "")
    )


__all__ = [
    "DEVICES",
    "Device",
    "FREE_OPS",
    "NodeCost",
    "calibrate_host",
    "describe",
    "fit_roofline",
    "host_key",
    "node_costs",
    "predict_seconds",
]


def fit_roofline(samples: list[list[NodeCost]], measured_s: list[float], base: Device) -> Device:
    """Fit a roofline's peak, bandwidth, per-node and per-call overheads to measured latencies
    (least squares on log time, so every sample counts by its relative error). `samples[i]` are
    the node costs of the model that took `measured_s[i]`; `base` gives the starting point."""
    from scipy.optimize import least_squares

    flops = [np.array([c.flops for c in s]) for s in samples]
    nbytes = [np.array([c.bytes for c in s]) for s in samples]
    nodes = np.array([len(s) for s in samples], dtype=float)
    target = np.log(np.asarray(measured_s))

    def predict(theta):
        peak, bw, node_o, call_o = np.exp(theta)
        return np.array(
            [call_o + n * node_o + np.maximum(f / peak, b / bw).sum() for f, b, n in zip(flops, nbytes, nodes)]
        )

    x0 = np.log([base.peak_flops, base.bandwidth, max(base.overhead_s, 1e-8), max(base.run_overhead_s, 1e-7)])
    fit = least_squares(lambda t: np.log(predict(t)) - target, x0, method="trf")
    peak, bw, node_o, call_o = np.exp(fit.x)
    return Device(
        f"{base.name}-fit",
        float(peak),
        float(bw),
        float(node_o),
        base.memory_bytes,
        f"fitted on {len(samples)} measured models",
        float(call_o),
    )
