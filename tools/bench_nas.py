"""NAS benchmark: DARTS (collapse guard on and off), aging evolution and random search within the
same budget, 3 seeds, the same final training; multi-objective NSGA-II vs random by hypervolume.

    .venv/bin/python tools/bench_nas.py [--budget-minutes 3] [--seeds 3] [--jobs 2] [--out docs/results/nas.md]

Every run is one `tensorfold search nas` process, single-threaded, so --jobs runs side by side;
the results are read from each run's --output-dir. Hypervolume: (1 - proxy accuracy, rx580
latency as a share of the all-conv_5x5 network's) against the reference point (1, 1).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from tensorfold.bench.report import publish


def runs(seeds: int):
    single = ["--objectives", "accuracy"]
    multi = ["--objectives", "accuracy,latency", "--device", "rx580"]
    out = []
    for seed in range(seeds):
        out.append(
            ("darts (guard)", seed, ["--strategy", "darts", "--guard", "earlystop", "--train-size", "1000", *single])
        )
        out.append(
            ("darts (no guard)", seed, ["--strategy", "darts", "--guard", "none", "--train-size", "1000", *single])
        )
        out.append(("evolution", seed, ["--strategy", "evolution", *single]))
        out.append(("random", seed, ["--strategy", "random", *single]))
        out.append(("nsga2 (acc, rx580 ms)", seed, ["--strategy", "evolution", *multi]))
        out.append(("random (acc, rx580 ms)", seed, ["--strategy", "random", *multi]))
    return out


def one(label, seed, extra, args, work: Path) -> dict:
    d = work / f"{label.split()[0]}-{abs(hash(label)) % 1000}-{seed}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "tensorfold.cli",
        "search",
        "nas",
        *extra,
        "--seed",
        str(seed),
        "--threads",
        "1",
        "--budget-minutes",
        str(args.budget_minutes),
        "--final-steps",
        str(args.final_steps),
        "--proxy-steps",
        str(args.proxy_steps),
        "--torch-device",
        args.torch_device,
        "--data",
        args.data,
        "--output-dir",
        str(d),
        "--json",
    ] + ([] if "--device" in extra else ["--device", "rx580"])
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode:
        return {"label": label, "seed": seed, "error": p.stderr.strip().splitlines()[-1:]}
    report = json.loads((d / "report.json").read_text())
    report["label"], report["seed"], report["dir"] = label, seed, str(d)
    report["all"] = json.loads((d / "candidates.json").read_text())
    print(label, seed, report["final"]["test_accuracy"], report["candidates"], file=sys.stderr, flush=True)
    return report


def hypervolume_of(report, ref_ms: float, key: str = "all") -> float:
    """The front decides the hypervolume, so a report's front is enough (key="front")."""
    from tensorfold.search.pareto import hypervolume

    pts = [[1 - c["metrics"]["accuracy"], c["metrics"]["device_ms"] / ref_ms] for c in report[key]]
    return hypervolume(pts, [1.0, 1.0])


def rescore(path: Path) -> list[str]:
    """Recompute the rx580 latencies of the fronts in a saved nas-runs.json with the current op table
    (device predictions are deterministic, so this needs no rerun of the searches)."""
    from tensorfold.runtime.devices import get_device
    from tensorfold.search.nas.latency import OpLatencyTable
    from tensorfold.search.nas.space import NetConfig, Network, genotype_from_dict

    table = OpLatencyTable(device=get_device("rx580"))
    reports = [r for r in json.loads(path.read_text()) if "rx580" in r.get("label", "")]
    ref = reference_ms()
    lines = [
        f"Hypervolume of each run's front in (1 - proxy accuracy, rx580 ms / {ref:.3f} ms of the all-conv_5x5 "
        "network), reference (1, 1); higher is better. Rescored with "
        f"`.venv/bin/python tools/bench_nas.py --rescore {path}`.",
        "",
        "| strategy | hypervolume | front points | per seed |",
        "|---|---:|---:|---|",
    ]
    for label in dict.fromkeys(r["label"] for r in reports):
        rs = [r for r in reports if r["label"] == label]
        for r in rs:
            for c in r["front"]:
                net = Network(
                    genotype_from_dict(c["genotype"]),
                    NetConfig(channels=r["space"]["channels"], layers=r["space"]["layers"]),
                )
                c["metrics"]["device_ms"] = table.network_ms(net, (1, 28, 28))
        hv = [hypervolume_of(r, ref, "front") for r in rs]
        lines.append(
            f"| {label} | {np.mean(hv):.4f} +- {np.std(hv, ddof=1) if len(hv) > 1 else 0:.4f} | "
            f"{np.mean([len(r['front']) for r in rs]):.1f} | " + ", ".join(f"{v:.4f}" for v in hv) + " |"
        )
    return lines


def proxy_check(n: int, args) -> list[str]:
    """Does the search's proxy rank networks as the final training does? n random genotypes, each
    scored by the proxy (as a search would) and trained like a final network; Kendall tau."""
    from scipy.stats import kendalltau

    from tensorfold.search.nas.final import train_final
    from tensorfold.search.nas.scoring import load_split
    from tensorfold.search.nas.space import NetConfig, Network, random_genotype
    from tensorfold.search.nas.train import accuracy, train_network

    rng = np.random.default_rng(args.seeds)
    (tx, ty, vx, vy), _ = load_split(args.data, 4000, 1000, 0)
    proxy, final = [], []
    for i in range(n):
        g = random_genotype(rng)
        net = Network(g, NetConfig())
        train_network(net, tx, ty, steps=args.proxy_steps, seed=i)
        proxy.append(accuracy(net, vx, vy))
        final.append(
            train_final(g, NetConfig(), args.data, args.final_steps, i, None, "cpu", 0, None, False)["test_accuracy"]
        )
        print(i, proxy[-1], final[-1], file=sys.stderr, flush=True)
    tau = kendalltau(proxy, final).statistic
    return [
        f"Proxy check: {n} random genotypes, proxy = accuracy on 1000 held-out training images after "
        f"{args.proxy_steps} steps from scratch on 4000; final = test accuracy after {args.final_steps} steps on "
        f"the full training split. Kendall tau {tau:.2f}.",
        "",
        "| genotype | proxy | final |",
        "|---:|---:|---:|",
    ] + [f"| {i} | {p:.2%} | {f:.2%} |" for i, (p, f) in enumerate(zip(proxy, final))]


def reference_ms() -> float:
    from tensorfold.runtime.devices import get_device
    from tensorfold.search.nas.latency import OpLatencyTable
    from tensorfold.search.nas.space import NetConfig, Network, heaviest_genotype

    net = Network(heaviest_genotype(3), NetConfig())
    return OpLatencyTable(device=get_device("rx580")).network_ms(net, (1, 28, 28))


def plot(reports, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colors = {"nsga2 (acc, rx580 ms)": "tab:red", "random (acc, rx580 ms)": "tab:blue"}
    for ax, key, label in (
        (axes[0], "device_ms", "rx580 latency, predicted (ms)"),
        (axes[1], "host_ms", "host latency, measured (ms)"),
    ):
        for name, color in colors.items():
            cands = [c for r in reports if r.get("label") == name for c in r["all"]]
            ax.scatter(
                [c["metrics"][key] for c in cands],
                [c["metrics"]["accuracy"] for c in cands],
                s=10,
                color=color,
                alpha=0.6,
                label=name,
            )
        ax.set_xlabel(label)
        ax.set_ylabel("proxy accuracy (held-out training images)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget-minutes", type=float, default=3.0)
    ap.add_argument("--final-steps", type=int, default=800)
    ap.add_argument("--proxy-steps", type=int, default=60)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--plots", type=Path, help="folder for the Pareto plot and the raw JSON")
    ap.add_argument("--rescore", type=Path, help="only recompute the multi-objective table from a nas-runs.json")
    ap.add_argument("--only", help="comma-separated strategy labels to run (prefixes: darts, evolution, random, nsga2)")
    ap.add_argument("--torch-device", default="cpu", help="where torch trains (cuda on a GPU machine)")
    ap.add_argument("--proxy-check", type=int, help="only: rank correlation of the proxy with final training, N nets")
    args = ap.parse_args()
    if args.proxy_check:
        publish(proxy_check(args.proxy_check, args), args.out)
        return
    if args.rescore:
        publish(rescore(args.rescore), None)
        return
    work = Path(tempfile.mkdtemp(prefix="tensorfold-nas-"))
    with ThreadPoolExecutor(args.jobs) as pool:
        todo = [r for r in runs(args.seeds) if not args.only or r[0].startswith(tuple(args.only.split(",")))]
        reports = list(pool.map(lambda r: one(*r, args, work), todo))
    failed = [r for r in reports if "error" in r]
    ok = [r for r in reports if "error" not in r]
    if not ok:
        publish(
            ["# Architecture search: every run failed", ""]
            + [f"- {r['label']} seed {r['seed']}: {r['error']}" for r in failed],
            args.out,
        )
        return
    ref = reference_ms()
    lines = [
        "# Architecture search on Fashion-MNIST",
        "",
        f"Command: `.venv/bin/python tools/bench_nas.py --budget-minutes {args.budget_minutes:g} --seeds "
        f"{args.seeds} --jobs {args.jobs} --final-steps {args.final_steps} --proxy-steps {args.proxy_steps}"
        + (f" --only {args.only}" if args.only else "")
        + (f" --torch-device {args.torch_device}" if args.torch_device != "cpu" else "")
        + "`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, {args.jobs} runs side by side, each "
        f"single-threaded (torch and onnxruntime), CPU only  ",
        f"Date: {datetime.date.today().isoformat()}",
        "",
        f"Every run searches for {args.budget_minutes:g} min of wall-clock time on a subset of the training "
        f"split (evolution and random: 4000 images, candidates scored by accuracy on 1000 held-out training "
        f"images after {args.proxy_steps} SGD steps from scratch, no weight sharing; DARTS: 1000 images, half for w and half "
        f"for alpha, first order), then trains the chosen network for {args.final_steps} SGD steps (batch 64, "
        "8 channels, 5 cells) on the full training split; test accuracy on the 10,000 test images. Latency: "
        "host measured by onnxruntime's CPU provider at batch 1, rx580 predicted by the roofline device model.",
        "",
        "## Same budget, same final training (mean +- std over seeds)",
        "",
        "| strategy | test accuracy | candidates scored | params | host ms | rx580 ms (predicted) | per seed |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    labels = list(dict.fromkeys(r["label"] for r in ok))
    for label in labels:
        rs = [r for r in ok if r["label"] == label]
        acc = [r["final"]["test_accuracy"] for r in rs]
        lines.append(
            f"| {label} | {np.mean(acc):.2%} +- {np.std(acc, ddof=1) if len(acc) > 1 else 0:.2%} | "
            f"{np.mean([r['candidates'] for r in rs]):.0f} | {np.mean([r['final']['params'] for r in rs]):,.0f}"
            f" | {np.mean([r['final']['host_ms'] for r in rs]):.3f} | "
            f"{np.mean([r['final']['device_ms'] for r in rs]):.3f} | " + ", ".join(f"{a:.2%}" for a in acc) + " |"
        )
    lines += [
        "",
        "## DARTS and its collapse guard",
        "",
        "| run | epochs | skips in the normal cell (per epoch) | stopped | test accuracy |",
        "|---|---:|---|---|---:|",
    ]
    for r in ok:
        if r["darts"]:
            d = r["darts"]
            lines.append(
                f"| {r['label']} seed {r['seed']} | {d['epochs']} | "
                f"{' '.join(str(h['skips_normal']) for h in d['history'])} | {d['stopped']} | "
                f"{r['final']['test_accuracy']:.2%} |"
            )
    lines += [
        "",
        f"Peak memory of a DARTS run: {max((r['darts']['peak_memory_mb'] for r in ok if r['darts']), default=0):.0f} MB.",
        "",
        "## Multi-objective: accuracy and rx580 latency",
        "",
        f"Hypervolume of all scored candidates in (1 - proxy accuracy, rx580 ms / {ref:.3f} ms of the "
        "all-conv_5x5 network), reference (1, 1); higher is better.",
        "",
        "| strategy | hypervolume | candidates | per seed |",
        "|---|---:|---:|---|",
    ]
    for label in [lb for lb in labels if "rx580" in lb]:
        rs = [r for r in ok if r["label"] == label]
        hv = [hypervolume_of(r, ref) for r in rs]
        lines.append(
            f"| {label} | {np.mean(hv):.4f} +- {np.std(hv, ddof=1) if len(hv) > 1 else 0:.4f} | "
            f"{np.mean([r['candidates'] for r in rs]):.0f} | " + ", ".join(f"{v:.4f}" for v in hv) + " |"
        )
    if args.plots:
        args.plots.mkdir(parents=True, exist_ok=True)
        plot(ok, args.plots / "nas-pareto.png")
        lines += ["", f"![accuracy vs latency]({args.plots.name}/nas-pareto.png)"]
        (args.plots / "nas-runs.json").write_text(
            json.dumps([{k: v for k, v in r.items() if k != "all"} for r in reports], indent=1, default=str)
        )
    if failed:
        lines += ["", "Failed runs: " + "; ".join(f"{r['label']} seed {r['seed']}: {r['error']}" for r in failed)]
    publish(lines, args.out)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
