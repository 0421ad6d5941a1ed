#!/usr/bin/env python3
"""Train the demo model: a small 3-conv CNN on Fashion-MNIST, exported to ONNX.

Writes tensorfold/data/fmnist_cnn.onnx and fmnist_cnn.json (accuracy, seed, versions,
the command). The BatchNormalization nodes are kept in the export (not fused into
the convs), so the demo exercises tensorfold's own BN folding.

    .venv/bin/python tools/train_demo_model.py            # ~3 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import shlex
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tensorfold.datasets import FASHION_MNIST_ROOT, load_fashion_mnist, to_model_input  # noqa: E402


class FashionCNN(nn.Module):
    """conv3x3-BN-ReLU-maxpool x3 (32, 64, 128 channels), then one linear layer."""

    def __init__(self, channels=(32, 64, 128), num_classes=10):
        super().__init__()
        layers, c_in = [], 1
        for c_out in channels:
            layers += [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            c_in = c_out
        self.features = nn.Sequential(*layers)  # 28 -> 14 -> 7 -> 3
        self.classifier = nn.Linear(c_in * 3 * 3, num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def evaluate_torch(model, x, y, batch=1000):
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            correct += (model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum().item()
    return correct / len(x)


def evaluate_onnx(path, x, y, threads, batch=1000):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    predictions = np.concatenate(
        [session.run(["logits"], {"input": x[i : i + batch]})[0].argmax(1) for i in range(0, len(x), batch)]
    )
    return float((predictions == y).mean())


def export(model, path: Path):
    model.eval()
    # TrainingMode.PRESERVE on an eval-mode model exports inference-mode BatchNormalization
    # nodes; the default (EVAL) fuses them into the convs. The TorchScript exporter
    # (dynamo=False) writes initializers and a single self-contained file.
    with warnings.catch_warnings():
        # Its deprecation notice, and a constant-folding warning meant for train-mode models.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, 28, 28),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            do_constant_folding=True,
            training=torch.onnx.TrainingMode.PRESERVE,
        )
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    return proto


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--data", default=FASHION_MNIST_ROOT, help="directory of the Fashion-MNIST IDX files")
    parser.add_argument("--out", type=Path, default=REPO / "tensorfold" / "data" / "fmnist_cnn.onnx")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=4e-3, help="OneCycle peak learning rate (AdamW)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)

    train_images, train_labels = load_fashion_mnist(args.data, "train")
    test_images, test_labels = load_fashion_mnist(args.data, "test")
    x_train = torch.from_numpy(to_model_input(train_images))
    y_train = torch.from_numpy(train_labels)
    x_test_np = to_model_input(test_images)
    x_test, y_test = torch.from_numpy(x_test_np), torch.from_numpy(test_labels)

    model = FashionCNN()
    params = sum(p.numel() for p in model.parameters())
    steps_per_epoch = (len(x_train) + args.batch - 1) // args.batch
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, epochs=args.epochs, steps_per_epoch=steps_per_epoch
    )
    generator = torch.Generator().manual_seed(args.seed)

    start = time.time()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        total_loss = 0.0
        for i in range(0, len(x_train), args.batch):
            idx = order[i : i + args.batch]
            xb, yb = x_train[idx], y_train[idx]
            # Random horizontal flips: the one augmentation that is free and helps on this data.
            flip = torch.rand(len(xb), generator=generator) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * len(idx)
        accuracy = evaluate_torch(model, x_test, y_test)
        print(
            f"epoch {epoch + 1}/{args.epochs}: loss {total_loss / len(x_train):.4f}, "
            f"test accuracy {accuracy:.4f}, {time.time() - start:.0f} s",
            flush=True,
        )
    train_seconds = time.time() - start

    torch_accuracy = evaluate_torch(model, x_test, y_test)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    proto = export(model, args.out)
    onnx_accuracy = evaluate_onnx(args.out, x_test_np, test_labels, args.threads)
    if onnx_accuracy != torch_accuracy:
        sys.exit(f"ONNX accuracy {onnx_accuracy:.4f} != torch accuracy {torch_accuracy:.4f}")

    ops = collections.Counter(node.op_type for node in proto.graph.node)
    info = {
        "model": "3x(conv3x3-BN-ReLU-maxpool) 32-64-128 + linear, Fashion-MNIST",
        "test_accuracy": round(onnx_accuracy, 4),
        "epochs": args.epochs,
        "batch": args.batch,
        "optimizer": f"AdamW wd=5e-4, OneCycle max_lr={args.lr}, random horizontal flips",
        "seed": args.seed,
        "params": params,
        "onnx_bytes": args.out.stat().st_size,
        "onnx_ops": dict(sorted(ops.items())),
        "opset": 17,
        "train_seconds": round(train_seconds, 1),
        "threads": args.threads,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "date": datetime.date.today().isoformat(),
        "command": shlex.join([Path(sys.executable).name, "tools/train_demo_model.py", *sys.argv[1:]]),
    }
    args.out.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    print(
        f"wrote {args.out} ({info['onnx_bytes']} bytes, {params} params), "
        f"test accuracy {onnx_accuracy:.4f} (torch and onnxruntime agree)"
    )


if __name__ == "__main__":
    main()
