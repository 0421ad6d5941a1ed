"""How NAS candidates are scored: the proxy training on a split held out of the training data, and
every objective (params, FLOPs, latency from the per-op tables, memory) of a network."""

from __future__ import annotations

import time

import numpy as np
import torch

from tensorfold.errors import TensorfoldError
from tensorfold.log import warn
from tensorfold.search.nas.options import IMAGE
from tensorfold.search.nas.space import Genotype, NetConfig, Network, to_onnx
from tensorfold.search.nas.strategies import Scored
from tensorfold.search.nas.train import accuracy, train_network


def net_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


class Scorer:
    """Proxy-trains and measures genotypes; every candidate gets accuracy, params, flops, and host
    (and device) latency from the op table, whatever the objectives, so fronts can be re-plotted."""

    def __init__(
        self,
        cfg: NetConfig,
        data,
        objectives,
        proxy_steps: int,
        seed: int,
        host_table,
        device_table,
        max_latency: float | None = None,
        device: str = "cpu",
        max_memory_mb: float | None = None,
    ):
        self.cfg, (self.tx, self.ty, self.vx, self.vy) = cfg, data
        self.objectives, self.proxy_steps, self.seed = objectives, proxy_steps, seed
        self.host_table, self.device_table = host_table, device_table
        self.max_latency, self.max_memory_mb = max_latency, max_memory_mb
        self.device = device
        self.count = 0
        self.bar = None  # a progress bar the search loop sets; each candidate moves it

    def metrics(self, net) -> dict:
        from tensorfold.graph.stats import model_stats
        from tensorfold.runtime.memory import predict_memory

        model = to_onnx(net)
        m = {
            "params": net_params(net),
            "flops": model_stats(model, {"input": [1, *IMAGE]}).flops,
            # predicted peak of one call (weights, live activations, im2col): what the device must hold
            "memory": predict_memory(model, {"input": [1, *IMAGE]}).total_bytes / 2**20,
            "host_ms": self.host_table.network_ms(net, IMAGE),
        }
        if self.device_table is not None:
            m["device_ms"] = self.device_table.network_ms(net, IMAGE)
        m["latency"] = m.get("device_ms", m["host_ms"])
        return m

    def __call__(self, genotype: Genotype) -> Scored:
        start = time.perf_counter()
        net = Network(genotype, self.cfg)
        train_network(net, self.tx, self.ty, steps=self.proxy_steps, seed=self.seed + self.count, device=self.device)
        m = {"accuracy": accuracy(net, self.vx, self.vy), **self.metrics(net)}
        s = Scored(
            self.count,
            genotype,
            [m[o] for o in self.objectives],
            m,
            time.perf_counter() - start,
            weights={k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
        )
        # <= 0 is feasible, as Optuna's constraints
        bounds = [(m["latency"], self.max_latency), (m["memory"], self.max_memory_mb)]
        if any(bound is not None for _, bound in bounds):
            s.user_attrs["constraints"] = [value - bound for value, bound in bounds if bound is not None]
        self.count += 1
        if self.bar is not None:
            self.bar.update(min(time.perf_counter() - start, self.bar.total - self.bar.n))
            self.bar.set_postfix(candidates=self.count, accuracy=f"{m['accuracy']:.3f}")
        return s


def load_split(data: str, train_size: int, val_size: int, seed: int):
    """Search data from the training split only: (train, val) subsets, disjoint."""
    from tensorfold.datasets import load_data, prepare_inputs

    x, y, desc = load_data(data, "train", IMAGE[1:], IMAGE[0])
    if y is None:
        raise TensorfoldError(f"--data {data} has no labels; architecture search needs them")
    order = np.random.default_rng(seed).permutation(len(x))
    asked = (train_size, val_size)
    val_size = min(val_size, len(x) // 5)
    train_size = min(train_size, len(x) - val_size)
    if (train_size, val_size) != asked:  # was cut without a word (70,000 asked of 60,000 images)
        warn(
            f"--data {data} holds {len(x)} training samples: the search trains on {train_size} and "
            f"validates on {val_size}, less than --train-size {asked[0]} and --val-size {asked[1]} "
            "(validation is at most a fifth)"
        )
    v, t = order[:val_size], order[val_size : val_size + train_size]
    x = prepare_inputs(x, [1, *IMAGE], None)
    return (x[t], y[t].astype(np.int64), x[v], y[v].astype(np.int64)), desc
