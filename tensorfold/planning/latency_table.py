"""Latency of one layer and of its candidate factor chains, measured once on a provider (or
predicted by a device model) and cached on disk, keyed by provider, host and shapes."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
from onnx import helper

from tensorfold.graph.model import make_model
from tensorfold.outputs import write_text_atomic
from tensorfold.passes.layers import Layer
from tensorfold.runtime.latency_model import LatencyModel, latency_model
from tensorfold.runtime.roofline import Device


def _value_info(name: str, shape: list[int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape)


def mini_model(nodes, initializers, shapes: dict[str, list[int]], opset: int) -> onnx.ModelProto:
    """A model of just these nodes: inputs are what they read and nobody here produces."""
    produced = {o for n in nodes for o in n.output}
    inits = {t.name for t in initializers}
    inputs = []
    for n in nodes:
        for name in n.input:
            if name and name not in produced and name not in inits and name not in [i.name for i in inputs]:
                inputs.append(_value_info(name, shapes[name]))
    out = nodes[-1].output[0]
    graph = helper.make_graph(list(nodes), "layer", inputs, [_value_info(out, shapes[out])], list(initializers))
    return make_model(graph, [helper.make_opsetid("", opset)])


class CachedTable:
    """Milliseconds by key, kept on disk per provider and host (or per device model) in
    <cache>/latency/<prefix><where>.json; `new` counts the entries this process added."""

    prefix = ""

    def __init__(
        self,
        provider: str = "cpu",
        threads: int = 0,
        device: Device | None = None,
        cache_dir: Path | None = None,
        runs: int = 25,
        latency: LatencyModel | None = None,
    ):
        """`latency`: the caller's latency model (else one for provider/threads/device)."""
        from tensorfold.paths import cache_dir as default_cache

        self.latency: LatencyModel = latency or latency_model(provider, threads, device, runs)
        self.path = (cache_dir or default_cache() / "latency") / f"{self.prefix}{self.latency.key}.json"
        self.entries: dict[str, float] = {}
        if self.path.exists():
            try:
                self.entries = json.loads(self.path.read_text())
                if not isinstance(self.entries, dict) or not all(
                    isinstance(v, (int, float)) for v in self.entries.values()
                ):
                    raise ValueError("not a table of timings")
            except (OSError, ValueError) as exc:
                from tensorfold.log import warn

                warn(f"latency cache {self.path} is unreadable ({exc.__class__.__name__}); timing again")
                self.entries = {}
        self.new = 0

    @property
    def predicted(self) -> bool:
        return self.latency.predicted

    def cost_ms(self, key: str, build) -> float:
        """The entry for `key`; if missing, `build()` gives (model, input shapes) for the latency
        model to time once (measured on random inputs, or predicted)."""
        if key not in self.entries:
            self.entries[key] = self.latency.ms(*build())
            self.new += 1
        return self.entries[key]

    def call_ms(self) -> float:
        """The fixed cost of one inference call, cached like any entry."""
        if "__call__" not in self.entries:
            self.entries["__call__"] = self.latency.call_ms()
            self.new += 1
        return self.entries["__call__"]

    def save(self) -> None:
        if not self.new:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.path, json.dumps(self.entries))


class LatencyTable(CachedTable):
    """ms per (layer shape, method, ranks): measured, or predicted for `device`."""

    def key(self, layer: Layer, shapes: dict, label: str) -> str:
        node = layer.node
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
        ins = [shapes.get(i) for i in node.input if i]
        return json.dumps([node.op_type, ins, shapes.get(node.output[0]), attrs, label], sort_keys=True, default=str)

    def ms(self, layer: Layer, nodes, initializers, shapes: dict, label: str, opset: int) -> float:
        def build():
            model = mini_model(nodes, initializers, shapes, opset)
            return model, {v.name: shapes[v.name] for v in model.graph.input}

        return self.cost_ms(self.key(layer, shapes, label), build)
