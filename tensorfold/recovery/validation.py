"""Validation of a model being recovered: accuracy with labels, agreement or output error against
the teacher without, and the metric a run selects on."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from tensorfold.recovery.distill import Outputs, Teacher


def evaluate(
    module: torch.nn.Module,
    x: np.ndarray,
    y: np.ndarray | None,
    teacher: Teacher | None = None,
    spec: Outputs | None = None,
    batch: int = 512,
) -> dict[str, float]:
    """Validation. With labels: top-1 accuracy of the first output. Against a teacher: each output's
    relative L2 error pooled over the samples ("output_error", the largest over outputs: what
    `tensorfold verify` would report) and, over outputs with a class axis, the share of equal
    argmaxes ("teacher_agreement")."""
    from tensorfold.graph.verify import OutputAccumulator

    spec = spec if spec is not None else Outputs((), {0: -1})
    module.eval()
    device = next(module.parameters()).device
    correct, n = 0, 0
    pooled: list[OutputAccumulator] = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = tensors(x[i : i + batch], device)
            outs = module(*xb)
            if y is not None:
                pred = outs[0].argmax(spec.axes.get(0, -1))
                correct += int((pred.cpu().numpy() == y[i : i + batch]).sum())
            if teacher is not None:
                t_outs, _ = teacher(*xb)
                # the accumulators `tensorfold verify` pools its errors with
                pooled = pooled or [OutputAccumulator(f"output {k}", spec.axes.get(k)) for k in range(len(outs))]
                for acc, s_k, t_k in zip(pooled, outs, t_outs):
                    acc.add(
                        t_k.float().cpu().numpy() if t_k.is_floating_point() else t_k.cpu().numpy(),
                        s_k.float().cpu().numpy() if s_k.is_floating_point() else s_k.cpu().numpy(),
                    )
            n += len(xb[0])
    out: dict[str, float] = {}
    if y is not None:
        out["accuracy"] = correct / n
    checks = [acc.result() for acc in pooled]
    # plain floats: the result goes into checkpoints, which load weights_only (no numpy scalars)
    errors = [float(c.relative_error) for c in checks if c.relative_error is not None]
    if errors:
        out["output_error"] = max(errors)
    # agreement: equal argmaxes of score outputs, and equal values of integer outputs (a model that
    # ends in an ArgMax, as a token tagger does, outputs its predictions themselves)
    counts = sum(acc.argmax_count for acc in pooled) + sum(acc.count for acc in pooled if acc.kind == "integer")
    if counts:
        agree = sum(acc.argmax_equal for acc in pooled) + sum(acc.equal for acc in pooled if acc.kind == "integer")
        out["teacher_agreement"] = agree / counts
    return out


def metric_for(labels: bool, spec: Outputs) -> str:
    """What validation selects on: accuracy with labels; without, argmax agreement with the teacher
    for a classifier, the teacher-relative output error for any other model (lower is better)."""
    return "accuracy" if labels else "teacher_agreement" if spec.classifier or spec.only_integers else "output_error"


def signed(result: Mapping[str, Any], metric: str) -> float:
    """The metric as a score where higher is better."""
    return -result[metric] if metric == "output_error" else result[metric]


def ranked(result: Mapping[str, Any], metric: str) -> tuple[float, float]:
    """What the best evaluation is chosen by: the metric, then (on a tie) the output error against
    the teacher. Agreement on a few validation samples moves in steps of 1/n and often not at all:
    PP-OCR cls on 9 held-out lines kept 88.89% for a whole run while its output error could fall."""
    tie = -result["output_error"] if metric != "output_error" and result.get("output_error") is not None else 0.0
    return signed(result, metric), tie


def tensors(batch: Any, device: str | torch.device) -> tuple[torch.Tensor, ...]:
    """A batch (one array or tensor, or one per model input) as a tuple of tensors on `device`."""
    parts = batch if isinstance(batch, (tuple, list)) else (batch,)
    return tuple((p if torch.is_tensor(p) else torch.from_numpy(np.asarray(p))).to(device) for p in parts)
