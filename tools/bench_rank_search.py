"""Rank search benchmark: NSGA-II and TPE against random search, and two workers against one.

    .venv/bin/python tools/bench_rank_search.py [--trials 40] [--seeds 3] [--out docs/results/rank-search.md]

Models: the demo CNN (tensorfold/data/fmnist_cnn.onnx) and a ResNet-18-style CIFAR network at width
0.25 trained 3 epochs on Fashion-MNIST (the bench suite's cached baseline; trained on first use).
Objectives: params and output error on 256 real Fashion-MNIST test images. Hypervolume is taken
on normalized objectives (params as a share of the original's, error as is) against the
reference point (1, 1); see tensorfold/search/pareto.py. Single-threaded onnxruntime and BLAS.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from tensorfold.bench.report import publish  # noqa: E402
from tensorfold.bench.train import Recipe, baseline  # noqa: E402
from tensorfold.datasets import load_data, prepare_inputs  # noqa: E402
from tensorfold.demo import demo_model_path  # noqa: E402
from tensorfold.graph.io import load_model  # noqa: E402
from tensorfold.paths import cache_dir  # noqa: E402
from tensorfold.search.pareto import front_hypervolume, spread  # noqa: E402
from tensorfold.search.ranks import search_ranks  # noqa: E402
from tensorfold.search.storage import open_storage  # noqa: E402


def real_inputs(model_path: Path, out: Path, n: int = 256) -> Path:
    m = load_model(model_path)
    shape = [d.dim_value or 1 for d in m.graph.input[0].type.tensor_type.shape.dim]
    x, _, _ = load_data("fashion-mnist", "test", tuple(shape[2:4]), shape[1])
    np.savez(out, **{m.graph.input[0].name: prepare_inputs(x[:n], shape, None)})
    return out


def worker_run(model, extra, storage, study, trials, workers, tmp) -> float:
    code = "from tensorfold.cli import main; main()"
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                code,
                "search",
                "ranks",
                str(model),
                *extra,
                "--storage",
                storage,
                "--study",
                study,
                "--n-trials",
                str(trials),
                "--threads",
                "1",
                "-o",
                str(tmp / f"{study}-{i}"),
                "--no-models",
                "--json",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(workers)
    ]
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            raise SystemExit(err[-2000:])
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--models", default="fmnist-cnn,resnet18")
    ap.add_argument("--parts", default="samplers,workers")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    cache = cache_dir() / "baselines"
    cache.mkdir(parents=True, exist_ok=True)
    models = {"fmnist-cnn": demo_model_path()}
    if "resnet18" in args.models:
        models["resnet18"] = baseline("resnet18", 0.25, "fashion-mnist", Recipe(epochs=3), cache)[0]
    rows, workers_rows = [], []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for label, path in models.items():
            if label not in args.models.split(","):
                continue
            inputs = real_inputs(path, tmp / f"{label}.npz")
            for sampler in ("nsga2", "tpe", "random") if "samplers" in args.parts else ():
                hv, per_trial, fronts = [], [], []
                for seed in range(args.seeds):
                    rep = search_ranks(
                        path,
                        objectives="params,error",
                        n_trials=args.trials,
                        sampler=sampler,
                        seed=seed,
                        inputs=str(inputs),
                        threads=1,
                        output_dir=None,
                        progress=False,
                    )
                    hv.append(rep["hypervolume"])
                    per_trial.append(rep["seconds_per_trial"]["median"])
                    fronts.append(len(rep["front"]))
                    print(label, sampler, seed, rep["hypervolume"], rep["trials"], file=sys.stderr)
                rows.append(
                    {
                        "model": label,
                        "sampler": sampler,
                        "hv": spread(hv),
                        "hv_all": hv,
                        "per_trial": float(np.median(per_trial)),
                        "front": float(np.mean(fronts)),
                        "layers": rep["space"]["layers"],
                        "mode": rep["space"]["mode"],
                    }
                )
            # two workers sharing a journal file vs one worker with the same total
            setups = [("params,error", ["--inputs", str(inputs)], 2 * args.trials)]
            if label == "fmnist-cnn":  # trials that cost seconds: a short recovery each, validation accuracy
                setups.append(
                    (
                        "params,accuracy",
                        ["--objectives", "params,accuracy", "--data", "fashion-mnist", "--recover-steps", "20"],
                        args.trials // 2,
                    )
                )
            for objectives, extra, total in setups if "workers" in args.parts else ():
                for workers in (1, 2):
                    storage = f"journal:{tmp / f'{label}-{objectives}-{workers}.log'}"
                    wall = worker_run(path, extra, storage, "s", total // workers, workers, tmp)
                    study = optuna.load_study(study_name="s", storage=open_storage(storage))
                    hv = front_hypervolume(
                        study.get_trials(), objectives.split(","), study.user_attrs["tensorfold.baseline"]
                    )
                    per = [(t.datetime_complete - t.datetime_start).total_seconds() for t in study.trials]
                    workers_rows.append(
                        {
                            "model": label,
                            "objectives": objectives,
                            "workers": workers,
                            "trials": len(study.trials),
                            "wall": wall,
                            "hv": hv,
                            "per_trial": float(np.median(per)),
                        }
                    )
                    print(workers_rows[-1], file=sys.stderr)
    lines = [
        "# Rank search: samplers and workers",
        "",
        f"Command: `.venv/bin/python tools/bench_rank_search.py --trials {args.trials} --seeds {args.seeds}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared), CPU only  ",
        f"Date: {datetime.date.today().isoformat()}",
        "",
        "Objectives: parameters and output error (max relative L2 over the outputs, against the original, on "
        "256 real Fashion-MNIST test images). Search space: per layer keep/svd/tucker and a size (share of the "
        "layer's parameters, log scale). Hypervolume on (params share, error) against the reference (1, 1); "
        "higher is better. NSGA-II generation: trials/5. Each sampler: "
        f"{args.seeds} seeds x {args.trials} trials, mean +- standard deviation.",
        "",
        "| model | layers | sampler | hypervolume | front points | s per trial (median) |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['layers']} | {r['sampler']} | {r['hv'][0]:.4f} +- {r['hv'][1]:.4f} "
            f"| {r['front']:.1f} | {r['per_trial']:.3f} |"
        )
    lines += [
        "",
        "Per seed: "
        + "; ".join(f"{r['model']} {r['sampler']} " + ", ".join(f"{v:.4f}" for v in r["hv_all"]) for r in rows),
        "",
        "## Two workers on one study (journal file)",
        "",
        "Each worker is a `tensorfold search ranks --storage journal:FILE --study s` process, single-threaded, "
        "NSGA-II; the wall time includes each worker's start-up (imports, search space, baseline) "
        "and its report (re-verifying and plotting the front). The same total number of trials is split "
        "between the workers.",
        "",
        "| model | objectives | workers | trials | s per trial (median) | wall time | ratio to one worker "
        "| hypervolume |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in workers_rows:
        one = next(
            w
            for w in workers_rows
            if w["model"] == r["model"] and w["objectives"] == r["objectives"] and w["workers"] == 1
        )
        lines.append(
            f"| {r['model']} | {r['objectives']} | {r['workers']} | {r['trials']} | {r['per_trial']:.2f} | "
            f"{r['wall']:.1f} s | {r['wall'] / one['wall']:.2f} | {r['hv']:.4f} |"
        )
    publish(lines, args.out)
    json.dump({"samplers": rows, "workers": workers_rows}, sys.stderr, default=str)


if __name__ == "__main__":
    main()
