"""Found networks against hand-designed ones: is the plan's "NAS: 2-3x speedup over manual
architectures" there at equal accuracy? (docs/results/nas-vs-hand.md)

    .venv/bin/python tools/bench_nas_vs_hand.py [--runs docs/results/nas/nas-runs.json]
        [--hand resnet18:0.0625,resnet18:0.125,mobilenetv1:0.5] [--seeds 3] [--steps 800]
        [--rows docs/results/nas/hand-rows.jsonl] [--out docs/results/nas-vs-hand.md]

The found networks are those of the NAS benchmark (tools/bench_nas.py, docs/results/nas.md: every
strategy, 3 seeds, 4-minute budgets, each trained 800 SGD steps at batch 64 on the whole training
split); their test accuracies are that run's. The hand designs are the zoo's ResNet-18 and
MobileNetV1 at reduced widths, trained here with the very same final training (search/nas/train.py:
SGD, Nesterov, cosine, 800 steps, batch 64, no teacher) for each seed, tested on the 10,000 test
images. Latency: every network's ONNX (one per NAS run, one per hand design) timed together at batch 1
on onnxruntime's CPU provider, single-threaded as in the NAS benchmark, round-robin in one loop; RX 580
predicted by the roofline device model. Equal accuracy: for each strategy, the fastest hand design
whose mean accuracy is at least the strategy's.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from tensorfold.bench.report import publish


def nas_networks(path: Path) -> list[dict]:
    """Each NAS run's strategy, seed, recorded accuracy and its network (untrained: latency only)."""
    from tensorfold.search.nas.space import NetConfig, Network, genotype_from_dict, to_onnx

    out = []
    for run in json.loads(path.read_text()):
        final, space = run["final"], run["space"]
        objectives = ",".join(run["objectives"])
        label = run["strategy"] + ("" if objectives == "accuracy" else f" ({objectives})")
        net = Network(
            genotype_from_dict(final["genotype"]), NetConfig(channels=final["channels"], layers=space["layers"])
        )
        out.append(
            {
                "design": label,
                "kind": "NAS",
                "seed": run["seed"],
                "accuracy": final["test_accuracy"],
                "params": sum(p.numel() for p in net.parameters()),
                "model": to_onnx(net),
            }
        )
    return out


@functools.cache
def fashion_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST images as the networks take them, and labels (read once per run)."""
    from tensorfold.datasets import load_data, prepare_inputs
    from tensorfold.search.nas.options import IMAGE

    x, y, _ = load_data("fashion-mnist", split, IMAGE[1:], IMAGE[0])
    return prepare_inputs(x, [1, *IMAGE], None), np.asarray(y).astype(np.int64)


def train_hand(name: str, width: float, seed: int, steps: int) -> tuple[dict, object]:
    """A zoo network trained with the NAS final training; its row and ONNX model."""
    import torch

    from tensorfold.bench.zoo import build
    from tensorfold.runtime.evaluation import evaluate_onnx
    from tensorfold.search.nas.space import to_onnx
    from tensorfold.search.nas.train import train_network

    x, y = fashion_mnist("train")
    tx, ty = fashion_mnist("test")
    torch.manual_seed(seed)
    net = build(name, width=width)
    start = time.perf_counter()
    t = train_network(net, x, y, steps=steps, seed=seed)
    model = to_onnx(net)
    row = {
        "design": f"{name} width {width:g}",
        "kind": "hand",
        "seed": seed,
        "accuracy": evaluate_onnx(model, tx, ty),
        "params": sum(p.numel() for p in net.parameters()),
        "steps": t["steps"],
        "train_seconds": round(time.perf_counter() - start, 1),
    }
    return row, model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, default=Path("docs/results/nas/nas-runs.json"))
    ap.add_argument("--hand", default="resnet18:0.0625,resnet18:0.125,mobilenetv1:0.5")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--rows", type=Path, default=Path("docs/results/nas/hand-rows.jsonl"))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    from tensorfold.runtime.devices import get_device
    from tensorfold.runtime.latency import measure_interleaved
    from tensorfold.runtime.latency_model import Predicted
    from tensorfold.search.nas.options import IMAGE
    from tensorfold.search.nas.space import to_onnx

    nas = nas_networks(args.runs)
    done = {}
    if args.rows.exists():  # hand designs already trained (an interrupted run resumes)
        done = {(r["design"], r["seed"]): r for r in map(json.loads, args.rows.read_text().splitlines()) if r}
    hand, hand_models = [], {}
    for spec in args.hand.split(","):
        name, width = spec.split(":")
        for seed in range(args.seeds):
            key = (f"{name} width {float(width):g}", seed)
            if key in done:
                row = done[key]
            else:
                row, model = train_hand(name, float(width), seed, args.steps)
                hand_models[row["design"]] = model
                args.rows.parent.mkdir(parents=True, exist_ok=True)
                with open(args.rows, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
            hand.append(row)
    from tensorfold.bench.zoo import build

    for row in hand:  # latency needs only the architecture: an untrained copy where this run trained none
        if row["design"] not in hand_models:
            name, _, width = row["design"].split(" ")
            hand_models[row["design"]] = to_onnx(build(name, width=float(width)))

    # one network per design for hand, one per run for NAS: all timed in one round-robin loop
    timed = [(r["model"], r) for r in nas] + [(m, {"design": d}) for d, m in hand_models.items()]
    feeds = {"input": np.random.default_rng(0).standard_normal((1, *IMAGE)).astype(np.float32)}
    stats = measure_interleaved([(m, {m.graph.input[0].name: feeds["input"]}) for m, _ in timed], "cpu", 1, 5, 100)
    rx580 = Predicted(get_device("rx580"))
    host, device = {}, {}
    for (model, info), st in zip(timed, stats):
        host.setdefault(info["design"], []).append(st.median)
        device.setdefault(info["design"], []).append(rx580.ms(model, {model.graph.input[0].name: [1, *IMAGE]}))

    designs: dict[str, dict] = {}
    for r in nas + hand:
        d = designs.setdefault(r["design"], {"kind": r["kind"], "acc": [], "params": []})
        d["acc"].append(r["accuracy"])
        d["params"].append(r["params"])
    for name, d in designs.items():
        d["host_ms"] = float(np.median(host[name]))
        d["rx580_ms"] = float(np.median(device[name]))
        d["mean"], d["std"] = float(np.mean(d["acc"])), float(np.std(d["acc"]))

    lines = [
        "# Found networks against hand-designed ones, at equal accuracy",
        "",
        f"Command: `.venv/bin/python tools/bench_nas_vs_hand.py --runs {args.runs} --hand {args.hand} "
        f"--seeds {args.seeds} --steps {args.steps}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, CPU only (the hand designs' training and all "
        "latencies; the NAS networks' accuracies are the NAS benchmark's, docs/results/nas.md)  ",
        f"Date: {datetime.date.today()}",
        "",
        "| design | kind | test accuracy (mean +- std) | params | host ms (CPU provider, b1, 1 thread) "
        "| rx580 ms (predicted) | per seed |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for name, d in sorted(designs.items(), key=lambda kv: (kv[1]["kind"], -kv[1]["mean"])):
        lines.append(
            f"| {name} | {d['kind']} | {d['mean']:.2%} +- {d['std']:.2%} | {int(np.median(d['params'])):,} "
            f"| {d['host_ms']:.3f} | {d['rx580_ms']:.3f} | {', '.join(f'{a:.2%}' for a in d['acc'])} |"
        )
    lines += [
        "",
        "## At equal accuracy: the fastest hand design at least as accurate as each strategy",
        "",
        "| strategy | its accuracy | hand design | its accuracy | host speedup of NAS | rx580 speedup of NAS |",
        "|---|---:|---|---:|---:|---:|",
    ]
    hands = {k: v for k, v in designs.items() if v["kind"] == "hand"}
    for name, d in sorted(designs.items()):
        if d["kind"] != "NAS":
            continue
        match = [h for h in hands.items() if h[1]["mean"] >= d["mean"]]
        if not match:
            best = max(hands.items(), key=lambda h: h[1]["mean"])
            lines.append(
                f"| {name} | {d['mean']:.2%} | none as accurate (best: {best[0]}, {best[1]['mean']:.2%}) | | | |"
            )
            continue
        h_name, h = min(match, key=lambda h: h[1]["host_ms"])
        lines.append(
            f"| {name} | {d['mean']:.2%} | {h_name} | {h['mean']:.2%} | {h['host_ms'] / d['host_ms']:.2f}x "
            f"| {h['rx580_ms'] / d['rx580_ms']:.2f}x |"
        )
    publish(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
