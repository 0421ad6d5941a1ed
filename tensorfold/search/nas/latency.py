"""Latency of a discrete network from a table per op and input shape (as FBNet and ProxylessNAS
do): each block (stem, cell preprocessing, each edge's op, classifier) is exported alone, measured
once on the host provider or predicted by a device's roofline, and cached on disk. A network's
latency is one inference call's fixed cost plus each block's time without it (a block timed
alone pays the call's cost too: summed over 42 blocks that was two thirds of an rx580 estimate);
the sums and concatenations between blocks are left out, so the table ranks candidates and the
final network is also measured whole."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import onnx
import torch
from torch import nn

from tensorfold.export import export_onnx
from tensorfold.planning.latency_table import CachedTable
from tensorfold.runtime.devices import Device


def blocks(net: nn.Module, image: tuple[int, int, int]) -> list[tuple[str, nn.Module, tuple]]:
    """(signature, module, input shape) of each timed block, in forward order (batch 1)."""
    found = []
    leaves = [("stem", net.stem), ("classifier", net.classifier)]
    for i, cell in enumerate(net.cells):
        leaves += [(f"cell{i}.pre0", cell.pre0), (f"cell{i}.pre1", cell.pre1)]
        leaves += [(f"cell{i}.edge{j}", e) for j, e in enumerate(cell.edges)]
    hooks = [
        m.register_forward_hook(lambda mod, inp, out, name=name: found.append((name, mod, tuple(inp[0].shape))))
        for name, m in leaves
    ]
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(1, *image))
    finally:
        for h in hooks:
            h.remove()
    return [(signature(mod, shape), mod, shape) for _, mod, shape in found]


def signature(module: nn.Module, shape: tuple) -> str:
    return json.dumps([repr(module), list(shape)])


class OpLatencyTable(CachedTable):
    """ms per (block, input shape) on the host provider (measured) or a device (predicted)."""

    prefix = "nas2-"

    def __init__(
        self,
        provider: str = "cpu",
        threads: int = 1,
        device: Device | None = None,
        runs: int = 30,
        cache_dir: Path | None = None,
    ):
        super().__init__(provider, threads, device, cache_dir, runs)

    def block_ms(self, sig: str, module: nn.Module, shape: tuple) -> float:
        def build():
            buf = io.BytesIO()
            export_onnx(copy.deepcopy(module).eval(), torch.zeros(*shape), buf)  # the live block stays put
            return onnx.load_from_string(buf.getvalue()), {"input": list(shape)}

        return self.cost_ms(sig, build)

    def network_ms(self, net: nn.Module, image: tuple[int, int, int]) -> float:
        call = self.call_ms()
        return call + sum(max(0.0, self.block_ms(sig, mod, shape) - call) for sig, mod, shape in blocks(net, image))
