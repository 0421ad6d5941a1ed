"""A learned per-kernel latency model of the machine tensorfold runs on, in the manner of
nn-Meter: sample about 1,900 kernel configurations (Conv in its regular, pointwise, depthwise
and asymmetric forms; Gemm and MatMul), time each one through onnxruntime round-robin with the
others, and learn per kernel family how far the real time sits from a roofline fitted on the
same samples (a random forest on the log ratio, over channels, kernel, stride, spatial size).

Why a ratio to a roofline and not the time itself: a forest cannot extrapolate, a roofline can;
the forest only corrects the efficiency, which varies with shape (a 24-channel conv runs at a
fraction of a 128-channel conv's FLOP rate on the same CPU) but stays bounded.

A model's time is the call's fixed cost plus the sum of its nodes' predicted times; node kinds
outside the sampled families take the fitted roofline's time. The samples are cached per host,
provider and thread count; the forests are refitted from them on load (a second), so the cache
does not depend on the installed scikit-learn version.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tensorfold.graph.model import make_model
from tensorfold.graph.shapes import concrete_shapes
from tensorfold.graph.stats import attr
from tensorfold.outputs import write_text_atomic

FAMILIES = ("conv", "matmul")
# 2 min 16 s on this 2-core host. Against one fixed measurement (a one-off check, commit c01e6d3), 900 more sampled convs raised
# Kendall tau on ResNet-18's layers from 0.894 to 0.917 (PP-OCRv4 det: 0.916 to 0.925); from one
# measurement to the next tau moves by about as much (docs/results/device-model-quality.md)
SAMPLES = {"conv": 1800, "matmul": 100, "pair": 60}
MAX_FLOPS = 1.5e9  # keeps one sample under ~10 ms on a CPU
VERSION = 5  # of the sampler: a new sampler invalidates the cache


@dataclass
class Sample:
    family: str
    config: dict
    seconds: float


def conv_features(c: dict) -> list[float]:
    """What decides a conv's efficiency on a CPU: channels per group, kernel, stride, output area."""
    cin_g = c["cin"] // c["groups"]
    out_area = c["batch"] * c["hout"] * c["wout"]
    return [
        math.log(conv_flops(c)),
        math.log(c["cin"]),
        math.log(c["cout"]),
        math.log(cin_g),
        c["kh"],
        c["kw"],
        c["stride"],
        math.log(out_area),
        math.log(c["hin"] * c["win"]),
        float(c["groups"] > 1 and c["groups"] == c["cin"]),
        # onnxruntime's NCHWc convs block channels by 8 (AVX2) or 16 (AVX-512)
        float(c["cin"] % 8 == 0),
        float(c["cout"] % 8 == 0),
        float(c["cin"] % 16 == 0),
        float(c["cout"] % 16 == 0),
    ]


def conv_flops(c: dict) -> float:
    return 2.0 * c["batch"] * c["cout"] * c["hout"] * c["wout"] * (c["cin"] // c["groups"]) * c["kh"] * c["kw"]


def conv_bytes(c: dict) -> float:
    return 4.0 * (
        c["batch"] * c["cin"] * c["hin"] * c["win"]
        + c["batch"] * c["cout"] * c["hout"] * c["wout"]
        + c["cout"] * (c["cin"] // c["groups"]) * c["kh"] * c["kw"]
    )


def conv_input_bytes(c: dict) -> float:
    return 4.0 * c["batch"] * c["cin"] * c["hin"] * c["win"]


def matmul_features(c: dict) -> list[float]:
    return [math.log(matmul_flops(c)), math.log(c["m"]), math.log(c["k"]), math.log(c["n"]), float(c["gemm"])]


def matmul_flops(c: dict) -> float:
    return 2.0 * c["m"] * c["k"] * c["n"]


def matmul_bytes(c: dict) -> float:
    return 4.0 * (c["m"] * c["k"] + c["k"] * c["n"] + c["m"] * c["n"])


_FEATURES = {"conv": conv_features, "matmul": matmul_features}
_FLOPS = {"conv": conv_flops, "matmul": matmul_flops}
_BYTES = {"conv": conv_bytes, "matmul": matmul_bytes}


# --- reading a node of a real graph ----------------------------------------------------------


def node_config(node: onnx.NodeProto, shapes: dict[str, list[int]]) -> tuple[str, dict] | None:
    """(family, config) of a node the kernel model covers, None for other nodes."""
    if node.op_type == "Conv":
        x, w, y = (shapes.get(v) for v in (node.input[0], node.input[1], node.output[0]))
        if not (x and w and y) or len(x) != 4:
            return None
        strides = attr(node, "strides", [1, 1])
        return "conv", {
            "batch": x[0],
            "cin": x[1],
            "hin": x[2],
            "win": x[3],
            "cout": y[1],
            "hout": y[2],
            "wout": y[3],
            "kh": w[2],
            "kw": w[3],
            "stride": max(strides),
            "groups": attr(node, "group", 1),
        }
    if node.op_type in ("Gemm", "MatMul"):
        a, b = shapes.get(node.input[0]), shapes.get(node.input[1])
        y = shapes.get(node.output[0])
        if not (a and b and y) or len(b) != 2:
            return None
        k = a[0] if (node.op_type == "Gemm" and attr(node, "transA", 0)) else a[-1]
        return "matmul", {"m": int(np.prod(y[:-1])), "k": int(k), "n": y[-1], "gemm": node.op_type == "Gemm"}
    return None


# --- sampling --------------------------------------------------------------------------------


def _log_int(rng, lo: int, hi: int) -> int:
    return int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))


def _channels(rng) -> int:
    c = _log_int(rng, 3, 1024)
    return max(8, int(round(c / 8)) * 8) if rng.random() < 0.6 else c  # factor ranks are rounded to 8


def sample_conv(rng) -> dict:
    while True:
        kh, kw = [(1, 1), (3, 3), (5, 5), (7, 7), (1, 3), (3, 1), (1, 5), (5, 1)][
            rng.choice(8, p=[0.4, 0.3, 0.08, 0.04, 0.045, 0.045, 0.045, 0.045])
        ]
        stride = 2 if rng.random() < 0.25 else 1
        hin = _log_int(rng, 7, 320)
        win = hin if rng.random() < 0.8 else _log_int(rng, 7, 320)
        cin, cout = _channels(rng), _channels(rng)
        groups = 1
        if rng.random() < 0.15 and kh > 1:
            groups = cout = cin
        batch = 1 if rng.random() < 0.85 else int(rng.choice([2, 4, 8]))
        hout, wout = (hin + 2 * (kh // 2) - kh) // stride + 1, (win + 2 * (kw // 2) - kw) // stride + 1
        c = {
            "batch": batch,
            "cin": cin,
            "hin": hin,
            "win": win,
            "cout": cout,
            "hout": hout,
            "wout": wout,
            "kh": kh,
            "kw": kw,
            "stride": stride,
            "groups": groups,
        }
        if conv_flops(c) <= MAX_FLOPS and conv_bytes(c) <= 96e6:
            return c


def sample_matmul(rng) -> dict:
    while True:
        c = {
            "m": _log_int(rng, 1, 4096),
            "k": _log_int(rng, 8, 4096),
            "n": _log_int(rng, 8, 4096),
            "gemm": bool(rng.random() < 0.6),
        }
        if matmul_flops(c) <= MAX_FLOPS and matmul_bytes(c) <= 96e6:
            return c


def _conv_nodes(configs: list[dict], rng) -> tuple[list, list]:
    """Convs applied one after the other (each reads the previous output)."""
    nodes, inits, cur = [], [], "x"
    for j, c in enumerate(configs):
        w = rng.standard_normal((c["cout"], c["cin"] // c["groups"], c["kh"], c["kw"])).astype(np.float32)
        b = rng.standard_normal(c["cout"]).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"W{j}"), numpy_helper.from_array(b, f"B{j}")]
        out = "y" if j == len(configs) - 1 else f"h{j}"
        nodes.append(
            helper.make_node(
                "Conv",
                [cur, f"W{j}", f"B{j}"],
                [out],
                kernel_shape=[c["kh"], c["kw"]],
                strides=[c["stride"]] * 2,
                group=c["groups"],
                pads=[c["kh"] // 2, c["kw"] // 2, c["kh"] // 2, c["kw"] // 2],
            )
        )
        cur = out
    return nodes, inits


def kernel_model(family: str, c, rng) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A model of this configuration (a list of configs: convs in sequence) and random inputs."""
    f32 = TensorProto.FLOAT
    if family == "conv":
        convs = c if isinstance(c, list) else [c]
        nodes, inits = _conv_nodes(convs, rng)
        x_shape = [convs[0]["batch"], convs[0]["cin"], convs[0]["hin"], convs[0]["win"]]
        y_shape = [convs[-1]["batch"], convs[-1]["cout"], convs[-1]["hout"], convs[-1]["wout"]]
    else:
        w = rng.standard_normal((c["n"], c["k"]) if c["gemm"] else (c["k"], c["n"])).astype(np.float32)
        inits = [numpy_helper.from_array(w, "W")]
        if c["gemm"]:
            inits.append(numpy_helper.from_array(rng.standard_normal(c["n"]).astype(np.float32), "B"))
            nodes = [helper.make_node("Gemm", ["x", "W", "B"], ["y"], transB=1)]
        else:
            nodes = [helper.make_node("MatMul", ["x", "W"], ["y"])]
        x_shape, y_shape = [c["m"], c["k"]], [c["m"], c["n"]]
    graph = helper.make_graph(
        nodes,
        "kernel",
        [helper.make_tensor_value_info("x", f32, x_shape)],
        [helper.make_tensor_value_info("y", f32, y_shape)],
        inits,
    )
    return make_model(graph, [helper.make_opsetid("", 17)]), {"x": rng.standard_normal(x_shape).astype(np.float32)}


def sample_pair(rng) -> dict:
    """A conv followed by a pointwise conv, the shape of every factor chain's joints."""
    while True:
        a = sample_conv(rng)
        b = {
            "batch": a["batch"],
            "cin": a["cout"],
            "hin": a["hout"],
            "win": a["wout"],
            "cout": _channels(rng),
            "hout": a["hout"],
            "wout": a["wout"],
            "kh": 1,
            "kw": 1,
            "stride": 1,
            "groups": 1,
        }
        if conv_flops(b) <= MAX_FLOPS and conv_bytes(b) <= 96e6:
            return {"a": a, "b": b}


def _call_model() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The cheapest call: one Relu on 8 floats (what every model pays before its first node)."""
    f32 = TensorProto.FLOAT
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "call",
        [helper.make_tensor_value_info("x", f32, [1, 8])],
        [helper.make_tensor_value_info("y", f32, [1, 8])],
    )
    return make_model(graph, [helper.make_opsetid("", 17)]), {"x": np.zeros((1, 8), np.float32)}


def collect_samples(
    provider: str = "cpu",
    threads: int = 0,
    counts: dict | None = None,
    seed: int = 0,
    chunk: int = 45,
    rounds: int = 15,
    progress: bool = False,
) -> tuple[list[Sample], float]:
    """Time sampled kernels, `chunk` at a time round-robin (with the one-Relu call model in every
    chunk); returns the samples and the call's fixed cost in seconds."""
    from tensorfold.progress import bar as progress_bar
    from tensorfold.runtime.latency import measure_interleaved

    rng = np.random.default_rng(seed)
    counts = counts or SAMPLES
    sampler = {"conv": sample_conv, "matmul": sample_matmul, "pair": sample_pair}
    configs = [(fam, sampler[fam](rng)) for fam in sampler for _ in range(counts.get(fam, 0))]
    configs = [configs[i] for i in rng.permutation(len(configs))]
    samples, calls = [], []
    bar = progress_bar(total=len(configs), desc="calibrating kernels", unit="kernel", show=progress, leave=False)
    for start in range(0, len(configs), chunk):
        part = configs[start : start + chunk]
        models, slots = [_call_model()], []
        for fam, c in part:
            # a pair is timed as its two convs alone and together: the joint's saving is theirs less it
            units = [c["a"], c["b"], [c["a"], c["b"]]] if fam == "pair" else [c]
            slots.append(list(range(len(models), len(models) + len(units))))
            models += [kernel_model("matmul" if fam == "matmul" else "conv", u, rng) for u in units]
        stats = measure_interleaved(models, provider, threads, warmup=2, rounds=rounds)
        seconds = [st.median / 1e3 for st in stats]
        calls.append(seconds[0])
        for (fam, c), slot in zip(part, slots):
            if fam == "pair":
                a, b, ab = (seconds[i] for i in slot)
                samples.append(Sample(fam, c, a + b - seconds[0] - ab))
            else:
                samples.append(Sample(fam, c, seconds[slot[0]]))
        bar.update(len(part))
    bar.close()
    return samples, float(np.median(calls))


# --- the model -------------------------------------------------------------------------------


@dataclass
class KernelModel:
    samples: list[Sample]
    call_s: float  # the call's fixed cost
    fallback: object  # a Device (roofline) for nodes of other kinds
    rooflines: dict = field(default_factory=dict)  # family -> (peak FLOP/s, bytes/s, per-node s)
    forests: dict = field(default_factory=dict)
    joint: tuple = (0.0, 0.0)  # saving per joint between two covered nodes: (s per byte, s)

    def __post_init__(self):
        from scipy.optimize import least_squares, nnls
        from sklearn.ensemble import RandomForestRegressor

        pairs = [s for s in self.samples if s.family == "pair"]
        if len(pairs) >= 5:
            # a node that reads its input straight from the node before skips a graph input's copy and
            # onnxruntime's layout reorders: nodes timed alone overstate a chain by about this much
            X = np.array([[conv_input_bytes(p.config["b"]) * 1e-9, 1.0] for p in pairs])
            coef, _ = nnls(X, np.array([p.seconds for p in pairs]))
            self.joint = (float(coef[0]) * 1e-9, float(coef[1]))

        for fam in FAMILIES:
            rows = [s for s in self.samples if s.family == fam]
            if len(rows) < 10:
                continue
            flops = np.array([_FLOPS[fam](s.config) for s in rows])
            nbytes = np.array([_BYTES[fam](s.config) for s in rows])
            node_s = np.array([max(s.seconds - self.call_s, 1e-7) for s in rows])

            def roof(theta, flops=flops, nbytes=nbytes):
                peak, bw, over = np.exp(theta)
                return np.maximum(flops / peak, nbytes / bw) + over

            x0 = np.log([self.fallback.peak_flops, self.fallback.bandwidth, max(self.fallback.overhead_s, 1e-7)])
            theta = least_squares(lambda t: np.log(roof(t)) - np.log(node_s), x0).x
            self.rooflines[fam] = tuple(np.exp(theta))
            X = np.array([_FEATURES[fam](s.config) for s in rows])
            forest = RandomForestRegressor(n_estimators=150, min_samples_leaf=2, random_state=0, n_jobs=1)
            forest.fit(X, np.log(node_s) - np.log(roof(theta)))
            self.forests[fam] = forest

    def _roof(self, fam: str, c: dict) -> float:
        peak, bw, over = self.rooflines[fam]
        return max(_FLOPS[fam](c) / peak, _BYTES[fam](c) / bw) + over

    def config_seconds(self, fam: str, configs: list[dict]) -> np.ndarray:
        """Predicted time of one node of each configuration (without the call's cost)."""
        if not configs:
            return np.zeros(0)
        X = np.array([_FEATURES[fam](c) for c in configs])
        roof = np.array([self._roof(fam, c) for c in configs])
        return roof * np.exp(self.forests[fam].predict(X))

    def predict(self, model: onnx.ModelProto, input_shapes: dict[str, list[int]]) -> float:
        from tensorfold.runtime.roofline import FREE_OPS, node_costs

        needed = {v for n in model.graph.node for v in list(n.input) + list(n.output) if v}
        shapes = concrete_shapes(model, input_shapes, needed)
        by_family: dict[str, list[dict]] = {fam: [] for fam in self.forests}
        others, covered_outputs, joints = set(), set(), 0.0
        for node in model.graph.node:
            if node.op_type in FREE_OPS:
                continue
            got = node_config(node, shapes)
            if got and got[0] in self.forests:
                by_family[got[0]].append(got[1])
                if node.input[0] in covered_outputs and got[0] == "conv":
                    joints += self.joint[0] * conv_input_bytes(got[1]) + self.joint[1]
                covered_outputs.add(node.output[0])
            else:
                others.add(node.name or node.output[0])
        nodes_s = sum(self.config_seconds(fam, cs).sum() for fam, cs in by_family.items())
        total = self.call_s + max(nodes_s - joints, 0.5 * nodes_s)
        if others:
            total += sum(
                self.fallback.node_seconds(c.flops, c.bytes)
                for c in node_costs(model, input_shapes, shapes)
                if c.node in others
            )
        return float(total)

    # --- cache ---------------------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": VERSION,
                "call_s": self.call_s,
                "created": time.strftime("%Y-%m-%d"),
                "samples": [[s.family, s.config, s.seconds] for s in self.samples],
            }
        )

    @classmethod
    def from_json(cls, text: str, fallback) -> KernelModel | None:
        data = json.loads(text)
        if data.get("version") != VERSION:
            return None
        return cls([Sample(f, c, t) for f, c, t in data["samples"]], data["call_s"], fallback)


def learn_host(
    provider: str = "cpu", threads: int = 0, fallback=None, cache: bool = True, progress: bool = False
) -> KernelModel:
    """The kernel model of this machine on this provider, from the cache or sampled now."""
    from tensorfold.paths import cache_dir
    from tensorfold.runtime.roofline import calibrate_host, host_key

    fallback = fallback or calibrate_host(provider, threads, cache=cache)
    path = cache_dir() / "devices" / f"kernels-v{VERSION}-{host_key(provider, threads)}.json"
    if cache and path.exists():
        try:
            model = KernelModel.from_json(path.read_text(), fallback)
            if model is not None:
                return model
        except (OSError, ValueError, KeyError, TypeError) as exc:
            from tensorfold.log import warn

            warn(f"kernel-model cache {path} is unreadable ({type(exc).__name__}); sampling this host again")
    samples, call_s = collect_samples(provider, threads, progress=progress)
    model = KernelModel(samples, call_s, fallback)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, model.to_json())
    return model
