"""Run a model over a stack of samples as many at a time as its batch dimension allows.

A file of N samples has them along the first axis of every array. A model whose inputs fix the
batch dimension to b takes them b at a time (a fixed batch of 1: one by one); a dynamic batch takes
up to `max_batch` at a time, which bounds the memory of intermediate activations.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import onnx

from tensorfold.errors import TensorfoldError
from tensorfold.onnxrt.inputs import load_inputs, model_inputs, random_inputs, resolve_shapes

DEFAULT_MAX_BATCH = 8


def fixed_batch(model: onnx.ModelProto) -> int | None:
    """The batch size the model's inputs fix (their first dim), or None when it is dynamic.

    One input with a dynamic first dim frees the batch: a recurrent state [2, batch, 128] beside
    an audio input [batch, samples] (Silero VAD) has a fixed first dim that is not a batch."""
    fixed = []
    for v in model_inputs(model):
        dims = v.type.tensor_type.shape.dim
        if not dims:
            continue  # a scalar (a sample rate) has no batch
        if not (dims[0].HasField("dim_value") and dims[0].dim_value > 0):
            return None
        fixed.append(int(dims[0].dim_value))
    return min(fixed) if fixed else None


def sample_batch(model: onnx.ModelProto) -> int | None:
    """The batch an export fixes on the input its samples are stacked along (the first input, of
    rank >= 2), or None when that batch is dynamic. Training runs such a model on slices of this
    size: its Reshapes hold the batch as a constant."""
    inputs = model_inputs(model)
    dims = inputs[0].type.tensor_type.shape.dim if inputs else []
    if len(dims) > 1 and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
        return int(dims[0].dim_value)
    return None


def sample_count(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> int | None:
    """N when every array stacks samples along its first axis (same rank as its input, same first
    dim across inputs); None when the feeds are one call's worth (e.g. inputs without a batch axis)."""
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in model_inputs(model)}
    firsts = set()
    for name, arr in feeds.items():
        if arr.ndim == 0 or arr.ndim != ranks.get(name, arr.ndim):
            return None
        firsts.add(int(arr.shape[0]))
    return firsts.pop() if len(firsts) == 1 else None


def chunks(
    model: onnx.ModelProto, feeds: dict[str, np.ndarray], max_batch: int = DEFAULT_MAX_BATCH
) -> Iterator[dict[str, np.ndarray]]:
    """The feeds cut into calls the model accepts."""
    n = sample_count(model, feeds)
    if n is None:
        yield feeds
        return
    fixed = fixed_batch(model)
    step = fixed or max_batch
    if fixed and n % fixed:
        if n < fixed:
            raise TensorfoldError(f"the model takes a fixed batch of {fixed}; only {n} sample(s) were given")
        n -= n % fixed  # a partial last batch cannot be fed; it is left out
    if fixed is None and n <= max_batch:
        yield feeds
        return
    for start in range(0, n, step):
        yield {k: v[start : start + step] for k, v in feeds.items()}


def one_call(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The first call of the shapes call_shapes describes (one sample, or the model's fixed batch):
    what a latency labelled with those shapes must time, not the whole file at once."""
    return next(iter(chunks(model, feeds, max_batch=1)))


def call_shapes(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, list[int]]:
    """The input shapes of one call on these feeds: batch 1 (or the model's fixed batch) per sample."""
    if sample_count(model, feeds) is None:
        return {k: list(v.shape) for k, v in feeds.items()}
    batch = fixed_batch(model) or 1
    return {k: [batch, *v.shape[1:]] for k, v in feeds.items()}


def feeds_for(
    model: onnx.ModelProto, shapes: dict[str, list[int]], inputs: str | os.PathLike[str] | None, seed: int = 0
) -> tuple[dict[str, np.ndarray], str, dict[str, list[int]]]:
    """Inputs to run a model on, a label saying what they are, and the shapes of one call (FLOPs and
    latency are per call; a file of N samples is run as many per call as the batch allows): the
    arrays of an .npz when `inputs` is given, else seeded random normal values of the resolved shapes."""
    if inputs:
        feeds = load_inputs(inputs, model)
        return feeds, str(inputs), call_shapes(model, feeds)
    return random_inputs(model, shapes, seed), f"random normal (seed {seed})", resolve_shapes(model, shapes)
