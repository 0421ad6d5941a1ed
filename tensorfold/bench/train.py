"""Baseline training for the benchmark zoo, cached by (model, width, data, recipe)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tensorfold.datasets import image_channels, load_data, prepare_inputs
from tensorfold.errors import TensorfoldError
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


def suite_data(data: str, split: str) -> tuple[np.ndarray, np.ndarray | None, str]:
    """The benchmark's train or test split of `data`. A user's .npz is one set: a seeded sixth is
    its test split, never trained on (load_data gives every split the whole file, so the suite
    tested on the images it had trained on)."""
    if Path(data).suffix != ".npz":
        return load_data(data, split)  # type: ignore[return-value]  # no lazy folders here
    x, y, desc = load_data(data, "train")
    order = np.random.default_rng(0).permutation(len(x))
    held = max(1, len(x) // 6)
    idx = order[:held] if split == "test" else order[held:]
    part = f"a seeded sixth ({held})" if split == "test" else f"the other {len(x) - held}"
    return np.asarray(x)[idx], (y[idx] if y is not None else None), f"{desc}: {part}"


def cache_path(model: str, width: float, data: str, recipe: Recipe, cache: Path) -> Path:
    """Where the baseline of (model, width, data, recipe) is kept."""
    parts: list[object] = [model, width, data, asdict(recipe)]
    if Path(data).is_file():  # a user's file: another file at that path (or the same one changed) is other data
        stat = Path(data).stat()
        parts.append([str(Path(data).resolve()), stat.st_size, stat.st_mtime_ns, "test: a seeded sixth"])
    key = hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]
    return cache / f"{model}-w{width:g}-{key}.onnx"


def is_cached(path: Path) -> bool:
    return path.exists() and path.with_suffix(".json").exists()


def training_bytes(model: str, width: float, in_channels: int, size: tuple[int, int], batch: int) -> int:
    """What training `model` at `width` holds at its peak, estimated without allocating: the network
    is built on torch's meta device. Parameters, their gradients and SGD's momentum (plus an export
    copy: 16 bytes a parameter), and twice the activations autograd saves for one batch (the saved
    tensors and, in the backward pass, their gradients)."""
    import torch

    from tensorfold.bench.zoo import build

    with torch.device("meta"):
        net = build(model, 10, in_channels, width)
        x = torch.zeros(batch, in_channels, *size)
    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        if not (t.is_leaf and t.requires_grad):  # a parameter does not grow with the batch
            saved += t.untyped_storage().nbytes()
        return t

    net.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(x)
    return 16 * sum(p.numel() for p in net.parameters()) + 2 * saved


def check_fits(model: str, width: float, in_channels: int, size: tuple[int, int], batch: int, device: str) -> None:
    """One line, before any work, when training the baseline cannot fit the device's free memory
    (--width 100 asked ResNet-18 for some 1,800 GiB, and the kernel killed the run)."""
    import torch

    from tensorfold.runtime.latency import available_memory_bytes

    if device.startswith("cuda"):
        free = int(torch.cuda.mem_get_info(torch.device(device))[0])
    else:
        free = available_memory_bytes() or 0
    if not free:
        return
    need = training_bytes(model, width, in_channels, size, batch)
    if need > free:
        raise TensorfoldError(
            f"training {model} at width {width:g} needs about {need / 2**30:.1f} GiB "
            f"(batch {batch}), more than the {free / 2**30:.1f} GiB free on {device.split(':')[0]}: "
            f"ask for a smaller --width"
        )


def baseline(
    model: str, width: float, data: str, recipe: Recipe, cache: Path, device: str | None = None, progress: bool = True
) -> tuple[Path, dict]:
    """The trained baseline's ONNX path and its metadata (test accuracy, time, recipe)."""
    import torch

    from tensorfold.bench.zoo import build
    from tensorfold.export import export_onnx
    from tensorfold.progress import bar as progress_bar

    path = cache_path(model, width, data, recipe, cache)
    meta_path = path.with_suffix(".json")
    if is_cached(path):
        return path, json.loads(meta_path.read_text())
    cache.mkdir(parents=True, exist_ok=True)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    x, y, desc = suite_data(data, "train")
    if recipe.train_limit:
        x, y = x[: recipe.train_limit], y[: recipe.train_limit]
    tx, ty, _ = suite_data(data, "test")
    in_ch = image_channels(x)
    x = prepare_inputs(x, [1, in_ch, -1, -1])
    tx = prepare_inputs(tx, [1, in_ch, -1, -1])
    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    net = build(model, 10, in_ch, width).to(device)
    batch = min(recipe.batch_size, len(x))  # a user's set smaller than one batch trains on all of it
    steps = recipe.epochs * (len(x) // batch)
    opt = torch.optim.SGD(
        net.parameters(), lr=recipe.max_lr, momentum=0.9, nesterov=True, weight_decay=recipe.weight_decay
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, recipe.max_lr, total_steps=steps, pct_start=0.15)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    start = time.perf_counter()
    bar = progress_bar(total=steps, desc=f"train {model} w{width:g}", unit="step", show=progress)
    for _ in range(recipe.epochs):
        net.train()
        order = torch.from_numpy(rng.permutation(len(x)))
        for i in range(len(x) // batch):
            idx = order[i * batch : (i + 1) * batch]
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
