"""Do the data's labels number the classes as the teacher does?

An image folder's classes are numbered by sorted name (torchvision's rule), which is often not the
order of a pretrained model's outputs: a run on such a folder trains the student toward labels
that contradict its teacher and reports a low accuracy beside a high agreement, silently. Before
training, the teacher labels a sample; where renumbering the labels (the best one-to-one matching
of label to predicted class, Hungarian) would make them agree far more often, the warning names
that renumbering and the `--classes` order that gives it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from tensorfold.datasets import samples_subset
from tensorfold.recovery.distill import Outputs, Teacher
from tensorfold.recovery.validation import tensors

# samples the teacher labels for the check
CHECK_SAMPLES = 256
# how much more often the renumbered labels must agree with the teacher before the run warns
GAIN = 0.2


def label_order_warning(
    teacher: Teacher,
    x: Any,
    y: np.ndarray,
    spec: Outputs,
    class_names: list[str],
    device: str = "cpu",
    batch: int = 64,
    seed: int = 0,
) -> str | None:
    """One warning when the labels agree with the teacher's predictions much less often than a
    renumbering of them would; None when their order looks right (or cannot be judged)."""
    n = min(CHECK_SAMPLES, len(y))
    if n < 2:
        return None
    idx = np.sort(np.random.default_rng(seed).choice(len(y), n, replace=False))
    axis = spec.axes.get(0, -1)
    sample = samples_subset(x, idx)
    preds = []
    with torch.no_grad():
        for start in range(0, n, batch):
            outputs, _ = teacher(*tensors(sample[start : start + batch], device))
            scores = outputs[0]
            preds.append((scores if not scores.is_floating_point() else scores.argmax(axis)).reshape(-1).cpu().numpy())
    pred = np.concatenate(preds).astype(np.int64)
    labels = y[idx].astype(np.int64)
    if len(pred) != len(labels):  # not one prediction per sample (a sequence model): nothing to judge
        return None
    size = int(max(labels.max(), pred.max())) + 1
    counts = np.zeros((size, size), dtype=np.int64)
    np.add.at(counts, (labels, pred), 1)
    rows, cols = linear_sum_assignment(-counts)
    agree = float(np.trace(counts)) / n
    matched = float(counts[rows, cols].sum()) / n
    if matched - agree < GAIN or matched < 0.5:
        return None
    name = {i: (class_names[i] if i < len(class_names) else f"label {i}") for i in range(size)}
    moved = [(int(i), int(j)) for i, j in zip(rows, cols) if i != j and counts[i, j] > 0]
    shown = ", ".join(f"{name[i]} -> output {j}" for i, j in moved[:6]) + (" ..." if len(moved) > 6 else "")
    message = (
        f"the labels agree with the teacher's predictions on {agree:.0%} of {n} training samples, "
        f"renumbered on {matched:.0%} ({shown}): "
    )
    if class_names:
        by_output = {int(j): int(i) for i, j in zip(rows, cols)}
        order = [name[by_output[j]] for j in range(len(class_names)) if j in by_output]
        if len(order) == len(class_names):
            return message + (
                "the folder's classes are numbered in name order; if the teacher's outputs follow "
                f"another, give it: --classes {','.join(order)} (or a classes.txt in the folder)"
            )
    return message + "check that the labels number the classes in the order of the model's outputs"
