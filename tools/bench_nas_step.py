"""Seconds per SGD step of a network built from one op on every edge, for each op of the NAS space
(the figure behind search/nas/budget.py's choice of the slowest network: separable 5x5 convs, not
the FLOP-heaviest 5x5 conv).

    .venv/bin/python tools/bench_nas_step.py [--channels 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from tensorfold.search.nas.space import DISCRETE_OPS, NetConfig, Network, uniform_genotype
from tensorfold.search.nas.train import train_network


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--channels", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    x, y = rng.random((4000, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, 4000)
    for op in DISCRETE_OPS:
        net = Network(uniform_genotype(op, 3), NetConfig(channels=args.channels, layers=5))
        train_network(net, x, y, steps=2)
        t = time.perf_counter()
        train_network(net, x, y, steps=args.steps)
        print(f"{op:14s} {(time.perf_counter() - t) / args.steps:.4f} s per step")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
