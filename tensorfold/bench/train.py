"""Baseline training for the benchmark zoo, cached by (model, width, data, recipe)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tensorfold.datasets import load_data, prepare_inputs
from tensorfold.runtime.evaluation import evaluate_onnx


@dataclass(frozen=True)
class Recipe:
    epochs: int = 10
    batch_size: int = 128
    max_lr: float = 0.1  # SGD, Nesterov momentum 0.9, OneCycle
    weight_decay: float = 5e-4
    augment: bool = True  # random crop (pad 2) + horizontal flip
    train_limit: int | None = None  # first N training images (smoke runs)
    seed: int = 0


def _augment(xb, rng):
    import torch

    n, _, h, w = xb.shape
    padded = torch.nn.functional.pad(xb, (2, 2, 2, 2))
    dy, dx = rng.integers(0, 5, 2)
    out = padded[:, :, dy : dy + h, dx : dx + w]
    flip = torch.from_numpy(rng.random(n) < 0.5)
    out[flip] = out[flip].flip(-1)
    return out


def baseline(
    model: str, width: float, data: str, recipe: Recipe, cache: Path, device: str | None = None, progress: bool = True
) -> tuple[Path, dict]:
    """The trained baseline's ONNX path and its metadata (test accuracy, time, recipe)."""
    import torch
    from tqdm import tqdm

    from tensorfold.bench.zoo import build
    from tensorfold.export import export_onnx

    key = hashlib.sha1(json.dumps([model, width, data, asdict(recipe)], sort_keys=True).encode()).hexdigest()[:12]
    path = cache / f"{model}-w{width:g}-{key}.onnx"
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        return path, json.loads(meta_path.read_text())
    cache.mkdir(parents=True, exist_ok=True)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    x, y, desc = load_data(data, "train")
    if recipe.train_limit:
        x, y = x[: recipe.train_limit], y[: recipe.train_limit]
    tx, ty, _ = load_data(data, "test")
    in_ch = 1 if x.ndim == 3 else 3
    x = prepare_inputs(x, [1, in_ch, -1, -1])
    tx = prepare_inputs(tx, [1, in_ch, -1, -1])
    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    net = build(model, 10, in_ch, width).to(device)
    steps = recipe.epochs * (len(x) // recipe.batch_size)
    opt = torch.optim.SGD(
        net.parameters(), lr=recipe.max_lr, momentum=0.9, nesterov=True, weight_decay=recipe.weight_decay
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, recipe.max_lr, total_steps=steps, pct_start=0.15)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    start = time.perf_counter()
    bar = tqdm(total=steps, desc=f"train {model} w{width:g}", unit="step", disable=not progress)
    for _ in range(recipe.epochs):
        net.train()
        order = torch.from_numpy(rng.permutation(len(x)))
        for i in range(len(x) // recipe.batch_size):
            idx = order[i * recipe.batch_size : (i + 1) * recipe.batch_size]
            xb = xt[idx]
            if recipe.augment:
                xb = _augment(xb, rng)
            loss = torch.nn.functional.cross_entropy(net(xb.to(device)), yt[idx].to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
    bar.close()
    seconds = time.perf_counter() - start
    net = net.cpu().eval()
    tmp = path.with_name(path.name + ".tmp.onnx")
    export_onnx(net, torch.from_numpy(x[:1]), tmp)
    accuracy = evaluate_onnx(tmp, tx, ty)
    meta = {
        "model": model,
        "width": width,
        "data": desc,
        "recipe": asdict(recipe),
        "test_accuracy": accuracy,
        "params": int(sum(p.numel() for p in net.parameters())),
        "train_seconds": round(seconds, 1),
        "device": device,
        "torch": torch.__version__,
    }
    os.replace(tmp, path)
    meta_path.write_text(json.dumps(meta, indent=1))
    return path, meta
