"""Recovery across processes launched by torchrun: DistributedDataParallel over gloo (CPU) or nccl
(GPUs), a DistributedSampler per epoch, rank 0 alone writing checkpoints and outputs.

    torchrun --nproc-per-node 4 -m tensorfold recover small.onnx --teacher model.onnx --data imgs/ -o rec.onnx

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them recovery runs in one process as
before. Multi-node is torchrun's rendezvous (--nnodes, --rdzv-endpoint): nothing here changes,
but --resume needs the checkpoint folder on a file system every node sees.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        """The process that writes checkpoints, outputs and reports, and shows progress."""
        return self.rank == 0


def world() -> World:
    """This process's place in a torchrun launch (one process when torchrun did not start it)."""
    try:
        return World(
            int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))
        )
    except ValueError:
        return World()


def start(w: World, device: str) -> str:
    """Join the process group (nccl for CUDA, gloo otherwise); the device this rank trains on:
    a GPU job puts each local rank on its own GPU."""
    import torch.distributed as dist

    if not w.distributed:
        return device
    if device.startswith("cuda"):
        device = f"cuda:{w.local_rank}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return device


def stop(w: World) -> None:
    import torch.distributed as dist

    if w.distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap(module: torch.nn.Module, w: World) -> torch.nn.Module:
    """DistributedDataParallel around the module (gradients averaged across ranks at backward);
    unused parameters allowed: a node the trainer runs frozen takes no gradient."""
    if not w.distributed:
        return module
    import warnings

    from torch.nn.parallel import DistributedDataParallel

    # a model whose every parameter trains gets torch's note that the flag costs a traversal, once
    # per run: the flag is needed where one does not, and the note says nothing the user can act on
    warnings.filterwarnings("ignore", message=".*find_unused_parameters=True was specified")
    return DistributedDataParallel(module, find_unused_parameters=True)


def epoch_order(n: int, seed: int, epoch_key: int, w: World) -> np.ndarray:
    """The sample order of an epoch: one process, a seeded permutation of all samples; under
    torchrun, this rank's shard from torch's DistributedSampler (same seed and epoch on every rank,
    disjoint shards, padded to equal length so every rank takes the same number of steps)."""
    if not w.distributed:
        return np.random.default_rng(seed + epoch_key).permutation(n)
    from torch.utils.data import DistributedSampler

    # a range is a map-style data set as the sampler uses one (it only takes its len), but not a Dataset subclass
    sampler: DistributedSampler[int] = DistributedSampler(
        range(n),  # type: ignore[arg-type]
        num_replicas=w.size,
        rank=w.rank,
        shuffle=True,
        seed=seed,
    )
    sampler.set_epoch(epoch_key)
    return np.fromiter(iter(sampler), dtype=np.int64)


def from_rank0(message: Any) -> Any:
    """Rank 0's `message` on every rank of a torchrun launch (internal objects only: rates, paths,
    candidates as ONNX bytes; nothing a user handed in is unpickled)."""
    import torch.distributed as dist

    box = [message]
    dist.broadcast_object_list(box, src=0)
    return box[0]
