"""Training a discrete network: the short proxy run that scores a candidate during a search, and
the final training of the chosen one, optionally distilled from an ONNX teacher."""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def train_network(
    net: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    steps: int,
    batch: int = 64,
    lr: float = 0.05,
    seed: int = 0,
    teacher=None,
    temperature: float = 4.0,
    alpha: float = 0.7,
    progress: bool = False,
    device: str = "cpu",
    deadline: float | None = None,
) -> dict:
    """SGD (Nesterov, cosine) for `steps` steps; with `teacher` (an OnnxTeacher) the loss is
    alpha * Hinton KD + (1 - alpha) * cross-entropy. With `deadline` (a time.perf_counter() value)
    the steps shrink, once the first three are timed, to what ends by then (the cosine schedule
    follows the new count)."""
    from tensorfold.progress import bar as progress_bar
    from tensorfold.recovery.distill import hinton_kd

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=3e-4)
    net.to(device)
    xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y.astype(np.int64)).to(device)
    order, pos = rng.permutation(len(x)), 0
    net.train()
    start = time.perf_counter()
    bar = progress_bar(total=steps, desc="train", unit="step", show=progress, leave=False)
    step = 0
    while step < steps:
        if deadline is not None and step == 3:
            fit = 3 + int((deadline - time.perf_counter()) / ((time.perf_counter() - start) / 3))
            if fit < steps:
                steps = max(4, fit)
                bar.total = steps
        if pos + batch > len(order):
            order, pos = rng.permutation(len(x)), 0
        idx = torch.from_numpy(order[pos : pos + batch]).to(device)
        pos += batch
        for g in opt.param_groups:
            g["lr"] = 0.5 * lr * (1 + math.cos(math.pi * step / steps))
        logits = net(xt[idx])
        loss = F.cross_entropy(logits, yt[idx])
        if teacher is not None:
            t_outs, _ = teacher(xt[idx])
            t_logits = t_outs[0]
            loss = alpha * hinton_kd(logits, t_logits, temperature) + (1 - alpha) * loss
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        step += 1
        bar.update(1)
    bar.close()
    return {"steps": steps, "seconds": time.perf_counter() - start}


@torch.no_grad()
def accuracy(net: nn.Module, x, y, batch: int = 500) -> float:
    """Top-1 accuracy on x, y (numpy arrays or tensors, on any device)."""
    net.eval()
    device = next(net.parameters()).device
    correct = 0
    for i in range(0, len(x), batch):
        pred = net(torch.as_tensor(x[i : i + batch]).to(device)).argmax(1).cpu()
        correct += int((pred == torch.as_tensor(y[i : i + batch]).cpu()).sum())
    return correct / max(1, len(x))
