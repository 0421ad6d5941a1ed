"""One latency model: the milliseconds of one call of a model, measured on an onnxruntime provider
or predicted for a device. Every user of a latency (latency tables, the hardware-aware planner,
the rank search's objective, the NAS op table) asks one of these, chosen once by `latency_model`,
instead of forking on "was a device given?" itself."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np
import onnx
from onnx import TensorProto, helper

from tensorfold.graph.model import make_model
from tensorfold.runtime.latency import compare, measure
from tensorfold.runtime.roofline import Device, host_key, predict_seconds

# a measured speedup is a gain only past this margin: a lossy model must be this much faster than a
# less lossy one (the deploy search) or than the input (hardware-aware) to be written. Identical
# models in one interleaved run of docs/results/deploy.md differ by 1.3% (PP-OCR rec, 23 ms: 1.59x
# and 1.61x; cls: 1.51-1.53x), so a gain under 3% is not worth any error. A 1 ms model is noisier:
# zoo ResNet-18's unchanged graph read 0.95x (docs/results/deploy.md), and there the margin does
# not separate noise from gain. A predicted latency has no noise: no margin.
SPEED_MARGIN = 0.03


class LatencyModel(Protocol):
    predicted: ClassVar[bool]
    key: str  # names its cached values: the provider, threads and host, or the device
    label: str  # for reports: "cpu (measured)", "device rx580 (predicted)"

    def ms(
        self, model: onnx.ModelProto, shapes: dict[str, list[int]], feeds: dict[str, np.ndarray] | None = None
    ) -> float:
        """One call at these input shapes (on `feeds` where a measurement should use them)."""

    def speedup(
        self,
        candidate: onnx.ModelProto,
        base: onnx.ModelProto,
        shapes: dict[str, list[int]],
        feeds: dict[str, np.ndarray] | None = None,
    ) -> float:
        """How many times faster `candidate` is than `base`."""

    def call_ms(self) -> float:
        """The fixed cost of one inference call, whatever the model."""

    def stats(self, model: onnx.ModelProto, feeds: dict[str, np.ndarray], other: onnx.ModelProto | None = None) -> dict:
        """A profile row for one call on `feeds`: the latency statistics this model can give
        (measured: min/median/p90; predicted: the prediction) and, with `other`, its latency and
        the speedup of `model` over it (measured interleaved, so noise hits both alike)."""


def _random_feeds(shapes: dict[str, list[int]]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {k: rng.standard_normal(v).astype(np.float32) for k, v in shapes.items()}


@dataclass
class Measured:
    """Timed on an onnxruntime provider of this machine: the median of `runs` calls."""

    provider: str = "cpu"
    threads: int = 0
    runs: int = 25
    warmup: int = 3
    optimization: str = "all"
    predicted: ClassVar[bool] = False

    @property
    def key(self) -> str:
        return f"{self.provider}-t{self.threads}-{host_key(self.provider, self.threads)}"

    @property
    def label(self) -> str:
        return f"{self.provider} (measured)"

    def ms(self, model, shapes, feeds=None) -> float:
        feeds = feeds if feeds is not None else _random_feeds(shapes)
        return measure(
            model,
            feeds,
            self.provider,
            self.threads,
            warmup=self.warmup,
            runs=self.runs,
            optimization=self.optimization,
        ).median

    def speedup(self, candidate, base, shapes, feeds=None) -> float:
        """Interleaved runs of both (a busy host slows them alike): the median of per-round ratios."""
        feeds = feeds if feeds is not None else _random_feeds(shapes)
        return compare(candidate, base, feeds, self.provider, self.threads, warmup=5, runs=max(self.runs, 40)).speedup

    def call_ms(self) -> float:
        graph = helper.make_graph(
            [helper.make_node("Identity", ["input"], ["output"])],
            "call",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1])],
        )
        return self.ms(make_model(graph, [helper.make_opsetid("", 17)]), {"input": [1]})

    def stats(self, model, feeds, other=None) -> dict:
        if other is None:
            return {
                "latency": measure(
                    model, feeds, self.provider, self.threads, self.warmup, self.runs, self.optimization
                ).as_dict()
            }
        cmp = compare(model, other, feeds, self.provider, self.threads, self.warmup, self.runs)
        return {
            "latency": cmp.a.as_dict(),
            "compare_latency": cmp.b.as_dict(),
            "speedup": round(cmp.speedup, 4),
            "speedup_p10_p90": [round(float(np.percentile(cmp.ratios, q)), 4) for q in (10, 90)],
        }


@dataclass
class Predicted:
    """Predicted for a device model (a roofline, or this host's learned kernel model)."""

    device: Device
    predicted: ClassVar[bool] = True

    @property
    def key(self) -> str:
        return self.device.key or self.device.name

    @property
    def label(self) -> str:
        return f"device {self.device.name} (predicted)"

    def ms(self, model, shapes, feeds=None) -> float:
        return predict_seconds(model, shapes, self.device) * 1e3

    def speedup(self, candidate, base, shapes, feeds=None) -> float:
        return self.ms(base, shapes) / self.ms(candidate, shapes)

    def call_ms(self) -> float:
        return self.device.run_overhead_s * 1e3

    def stats(self, model, feeds, other=None) -> dict:
        shapes = {k: list(v.shape) for k, v in feeds.items()}
        row = {"predicted_ms": round(self.ms(model, shapes), 4)}
        if other is not None:
            row["compare_predicted_ms"] = round(self.ms(other, shapes), 4)
            row["predicted_speedup"] = round(row["compare_predicted_ms"] / row["predicted_ms"], 4)
        return row


def latency_model(
    provider: str = "cpu",
    threads: int = 0,
    device: str | Device | None = None,
    runs: int = 25,
    progress: bool = True,
    warmup: int = 3,
    optimization: str = "all",
) -> LatencyModel:
    """Predicted for `device` (a name or a Device) when given, else measured on `provider`."""
    if device is None or device == "":
        return Measured(provider, threads, runs, warmup, optimization)
    if isinstance(device, str):
        from tensorfold.runtime.devices import get_device

        device = get_device(device, provider, threads, progress)
    return Predicted(device)
