"""search_nas(): search (DARTS, evolution, random) within a budget, then train the chosen network
(optionally distilled from a teacher), export it to ONNX and measure it.

Candidates in the discrete strategies are scored by a proxy stated in every report: accuracy on a
validation split held out of the training data after `proxy_steps` SGD steps from scratch on a
subset (no weight sharing). Latency during the search comes from the per-op table (nas/latency.py):
measured on the host provider, or predicted for --device; the final network is measured whole.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tensorfold.errors import TensorfoldError
from tensorfold.search.nas.budget import FINAL_OVERHEAD_S, FINAL_STEPS, plan_budget
from tensorfold.search.nas.space import Genotype, NetConfig, Network, to_onnx
from tensorfold.search.nas.strategies import Scored, aging_evolution, nsga2_search, random_search
from tensorfold.search.nas.train import accuracy, train_network
from tensorfold.search.objectives import DIRECTIONS, parse_names

STRATEGIES = ("darts", "evolution", "random")
NAS_OBJECTIVES = ("accuracy", "params", "flops", "latency", "memory")
IMAGE = (1, 28, 28)


def parse_nas_objectives(text) -> tuple[str, ...]:
    return parse_names(text, NAS_OBJECTIVES, "NAS objective")


def net_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


class Scorer:
    """Proxy-trains and measures genotypes; every candidate gets accuracy, params, flops, and host
    (and device) latency from the op table, whatever the objectives, so fronts can be re-plotted."""

    def __init__(self, cfg: NetConfig, data, objectives, proxy_steps: int, seed: int, host_table, device_table,
                 max_latency: float | None = None, device: str = "cpu", max_memory_mb: float | None = None):
        self.cfg, (self.tx, self.ty, self.vx, self.vy) = cfg, data
        self.objectives, self.proxy_steps, self.seed = objectives, proxy_steps, seed
        self.host_table, self.device_table = host_table, device_table
        self.max_latency, self.max_memory_mb = max_latency, max_memory_mb
        self.device = device
        self.count = 0
        self.bar = None            # a progress bar the search loop sets; each candidate moves it

    def metrics(self, net) -> dict:
        from tensorfold.graph.stats import model_stats
        from tensorfold.runtime.memory import predict_memory

        model = to_onnx(net)
        m = {"params": net_params(net), "flops": model_stats(model, {"input": [1, *IMAGE]}).flops,
             # predicted peak of one call (weights, live activations, im2col): what the device must hold
             "memory": predict_memory(model, {"input": [1, *IMAGE]}).total_bytes / 2**20,
             "host_ms": self.host_table.network_ms(net, IMAGE)}
        if self.device_table is not None:
            m["device_ms"] = self.device_table.network_ms(net, IMAGE)
        m["latency"] = m.get("device_ms", m["host_ms"])
        return m

    def __call__(self, genotype: Genotype) -> Scored:
        start = time.perf_counter()
        net = Network(genotype, self.cfg)
        train_network(net, self.tx, self.ty, steps=self.proxy_steps, seed=self.seed + self.count, device=self.device)
        m = {"accuracy": accuracy(net, self.vx, self.vy), **self.metrics(net)}
        s = Scored(self.count, genotype, [m[o] for o in self.objectives], m, time.perf_counter() - start,
                   weights={k: v.detach().cpu().clone() for k, v in net.state_dict().items()})
        # <= 0 is feasible, as Optuna's constraints
        bounds = [(m["latency"], self.max_latency), (m["memory"], self.max_memory_mb)]
        if any(bound is not None for _, bound in bounds):
            s.user_attrs["constraints"] = [value - bound for value, bound in bounds if bound is not None]
        self.count += 1
        if self.bar is not None:
            self.bar.update(min(time.perf_counter() - start, self.bar.total - self.bar.n))
            self.bar.set_postfix(candidates=self.count, accuracy=f"{m['accuracy']:.3f}")
        return s


def load_split(data: str, train_size: int, val_size: int, seed: int):
    """Search data from the training split only: (train, val) subsets, disjoint."""
    from tensorfold.datasets import load_data, prepare_inputs

    x, y, desc = load_data(data, "train", IMAGE[1:], IMAGE[0])
    if y is None:
        raise TensorfoldError(f"--data {data} has no labels; architecture search needs them")
    order = np.random.default_rng(seed).permutation(len(x))
    val_size = min(val_size, len(x) // 5)
    train_size = min(train_size, len(x) - val_size)
    v, t = order[:val_size], order[val_size:val_size + train_size]
    x = prepare_inputs(x, [1, *IMAGE], None)
    return (x[t], y[t].astype(np.int64), x[v], y[v].astype(np.int64)), desc


@dataclass(frozen=True)
class NasOptions:
    """Every option of an architecture search, checked once (the CLI and Python callers build the same thing).

    genotype: a genotype JSON file (from an earlier run's --output-dir): no search, only the
    final training, export and measurement. torch_device: where the search and the final training
    run ("cuda" on a GPU machine); measurement is always onnxruntime on `provider`."""

    strategy: str = "evolution"
    objectives: tuple[str, ...] | str = ("accuracy",)
    data: str = "fashion-mnist"
    budget_minutes: float = 10.0
    device: str | None = None
    provider: str = "cpu"
    threads: int = 1
    teacher: str | os.PathLike | None = None
    output: str | os.PathLike | None = None
    output_dir: str | os.PathLike | None = None
    seed: int = 0
    channels: int | None = None          # None: fit the budget (8, else 6 or 4 for the candidates)
    layers: int = 5
    nodes: int = 3
    train_size: int = 4000
    val_size: int = 1000
    proxy_steps: int | None = None       # None: fit the budget (100, down to 30)
    final_steps: int | None = None       # None: fit the budget (600, down to 100)
    final_channels: int | None = None
    order: int = 1
    guard: str = "earlystop"
    population: int = 10
    sample: int = 3
    max_candidates: int | None = None    # evolution/random: stop after this many, budget or not
    max_epochs: int = 50                 # DARTS: epochs of its schedule (the budget may stop it sooner)
    genotype: str | os.PathLike | None = None
    max_latency: float | None = None
    max_memory_mb: float | None = None
    torch_device: str = "cpu"
    progress: bool = True
    started: float | None = None         # time.perf_counter() when the budget began (default: this call);
                                         # the CLI passes its start, so imports count against the budget

    def __post_init__(self):
        object.__setattr__(self, "order", int(self.order))
        if self.strategy not in STRATEGIES:
            raise TensorfoldError(f"unknown strategy '{self.strategy}' (choose from {', '.join(STRATEGIES)})")
        objectives = parse_nas_objectives(self.objectives)
        object.__setattr__(self, "objectives", objectives)
        if self.strategy == "darts" and objectives != ("accuracy",):
            raise TensorfoldError("DARTS optimizes accuracy alone; use --strategy evolution or random for "
                                  f"{','.join(objectives)}")
        if self.max_latency is not None and not self.max_latency > 0:
            raise TensorfoldError(f"--max-latency must be > 0 ms (got {self.max_latency})")
        if self.max_memory_mb is not None and not self.max_memory_mb > 0:
            raise TensorfoldError(f"--max-memory-mb must be > 0 (got {self.max_memory_mb})")
        if not self.budget_minutes > 0:
            raise TensorfoldError(f"--budget-minutes must be > 0 (got {self.budget_minutes})")


def search_nas(options: NasOptions | None = None, **kwargs) -> dict:
    """The options are NasOptions' fields, given as keywords or as one NasOptions."""
    if options is not None and kwargs:
        raise TypeError("give either a NasOptions or keyword options, not both")
    return _search_nas(options if options is not None else NasOptions(**kwargs))


def _search_nas(opts: NasOptions) -> dict:
    from tensorfold.runtime.devices import get_device
    from tensorfold.search.nas.latency import OpLatencyTable

    start = opts.started if opts.started is not None else time.perf_counter()
    strategy = opts.strategy
    given = None
    if opts.genotype is not None:
        from tensorfold.search.nas.space import load_genotype

        given = load_genotype(opts.genotype)       # a bad file fails before any data is loaded
    if opts.torch_device != "cpu":
        try:
            torch.empty(1, device=opts.torch_device)
        except (RuntimeError, AssertionError) as exc:
            raise TensorfoldError(f"--torch-device {opts.torch_device}: {str(exc).splitlines()[0]}") from None
    dev = get_device(opts.device, opts.provider, opts.threads) if opts.device else None
    out_dir = Path(opts.output_dir) if opts.output_dir else None
    for p in ([Path(opts.output).parent] if opts.output else []) + ([out_dir.parent] if out_dir else []):
        if str(p) and not p.is_dir():
            raise TensorfoldError(f"output folder {p} does not exist")
    teacher_model = _load_teacher(opts.teacher)
    # small cells on a few cores: more threads than cores' worth of work slows a step 10x on a busy
    # 2-core host (54-75 s vs 3-4.5 s per supernet step measured with 2 threads and 1)
    threads = opts.threads or (1 if (os.cpu_count() or 1) <= 4 else min(8, (os.cpu_count() or 2) // 2))
    torch.set_num_threads(threads)
    split, desc = load_split(opts.data, opts.train_size, opts.val_size, opts.seed)
    budget_s = opts.budget_minutes * 60
    plan = plan_budget(opts, split, budget_s, time.perf_counter() - start)
    cfg = NetConfig(channels=plan.channels, layers=opts.layers)
    host_table = OpLatencyTable(opts.provider, opts.threads)
    device_table = OpLatencyTable(device=dev) if dev is not None else None
    # a candidate starts only if the costliest one would still end before the final training's share
    deadline = plan.search_deadline(start) - plan.proxy_steps * plan.step_s
    scorer = Scorer(cfg, split, opts.objectives, plan.proxy_steps, opts.seed, host_table, device_table,
                    opts.max_latency, opts.torch_device, opts.max_memory_mb)
    rng = np.random.default_rng(opts.seed)
    darts_info = None
    if given is not None:
        strategy = "given"
        candidates = [Scored(0, given, [], scorer.metrics(Network(given, cfg)), 0.0)]
    elif strategy == "darts":
        res, cfg = _run_darts(opts, plan, split, start)
        darts_info = {"epochs": res.epochs, "steps": res.steps, "stopped": res.stopped, "history": res.history,
                      "subset": res.subset,
                      "guard": opts.guard, "order": opts.order, "peak_memory_mb": round(res.peak_memory_mb, 1),
                      "seconds": round(res.seconds, 1)}
        candidates = [Scored(0, res.genotype, [], scorer.metrics(Network(res.genotype, cfg)), res.seconds)]
    else:
        from tqdm import tqdm

        # the budget's seconds as the bar; each scored candidate moves it and shows the count and accuracy
        scorer.bar = tqdm(total=round(max(0.0, deadline - time.perf_counter())), desc=f"nas {strategy}", unit="s",
                          disable=not opts.progress)
        try:
            if strategy == "random":
                candidates = random_search(scorer, deadline, rng, opts.nodes, opts.max_candidates)
            elif len(opts.objectives) == 1:
                candidates = aging_evolution(scorer, deadline, rng, opts.nodes, opts.objectives, opts.population,
                                             opts.sample, opts.max_candidates)
            else:
                candidates = nsga2_search(scorer, deadline, opts.seed, opts.nodes, opts.objectives, opts.population,
                                          opts.max_candidates)
        finally:
            scorer.bar.close()
    host_table.save()
    if device_table is not None:
        device_table.save()
    search_seconds = time.perf_counter() - start
    if not candidates:
        raise TensorfoldError("the budget ended before any candidate was scored; raise --budget-minutes")
    front, chosen = _choose(candidates, opts.objectives)
    # steps the user left to the plan end with the budget, whatever the search left over
    final_deadline = start + budget_s - FINAL_OVERHEAD_S if opts.final_steps is None else None
    # (the plan's steps sized the reserve for the slowest network; the chosen one trains up to the
    # default and stops with the budget)
    steps = opts.final_steps or FINAL_STEPS[0]
    final = train_final(chosen.genotype, NetConfig(channels=plan.final_channels, layers=opts.layers), opts.data,
                        steps, opts.seed, teacher_model, opts.provider, opts.threads, dev, opts.progress,
                        opts.torch_device, final_deadline)
    if final["steps"] < steps:
        plan.notes.append(f"final training: {final['steps']} of {steps} steps fit the time the search left")
    report = {
        "strategy": strategy + (f" (order {opts.order}, guard {opts.guard})" if strategy == "darts" else
                                " (aging evolution)" if strategy == "evolution" and len(opts.objectives) == 1 else
                                " (NSGA-II)" if strategy == "evolution" else ""),
        "objectives": list(opts.objectives), "data": desc, "budget_minutes": opts.budget_minutes,
        "search_seconds": round(search_seconds, 1), "candidates": len(candidates),
        "proxy": (f"accuracy on {len(split[2])} held-out training images after {plan.proxy_steps} SGD steps from scratch "
                  f"on {len(split[0])} (no weight sharing)") if strategy != "darts" else
                 f"DARTS supernet on {len(split[0])} training images (half for w, half for alpha)"
                 + (f"; {darts_info['subset']}" if darts_info and darts_info.get("subset") else ""),
        "threads": threads, "budget": plan.as_dict(),
        "space": {"channels": plan.channels, "layers": opts.layers, "nodes": opts.nodes, "ops": "DARTS ops + conv 3x3/5x5"},
        "latency": {"host": f"{opts.provider} measured (op table)", "device": dev.name if dev else None,
                    "max_latency_ms": opts.max_latency, "max_memory_mb": opts.max_memory_mb},
        "darts": darts_info, "chosen": chosen.as_dict(), "front": [s.as_dict() for s in front],
        "final": final, "seconds": None,
    }
    model = final.pop("_model")
    if opts.output:
        from tensorfold.graph.io import save_model

        save_model(model, opts.output)
        report["output"] = str(opts.output)
    if out_dir is not None:
        _write_dir(out_dir, report, candidates, front, final, model, dev, cfg if len(opts.objectives) > 1 else None)
    report["seconds"] = round(time.perf_counter() - start, 1)
    if out_dir is not None:
        from tensorfold.outputs import write_text_atomic

        write_text_atomic(out_dir / "report.json", json.dumps(report, indent=2, default=str))
    return report


def _run_darts(opts: NasOptions, plan, split, start: float):
    """DARTS in the search's share of the budget; with --channels unset a supernet too slow for three
    short epochs is tried narrower (each try costs its three timed steps, out of the same share)."""
    from tensorfold.search.nas.budget import WIDTHS
    from tensorfold.search.nas.darts import DartsBudgetError, darts_search

    tx, ty, _, _ = split
    widths = [w for w in WIDTHS if w <= plan.channels] if opts.channels is None else [plan.channels]
    for k, width in enumerate(widths):
        cfg = NetConfig(channels=width, layers=opts.layers)
        try:
            res = darts_search(tx, ty, cfg, nodes=opts.nodes, budget_s=plan.search_deadline(start) - time.perf_counter(),
                               epochs=opts.max_epochs, order=opts.order, guard=opts.guard, seed=opts.seed,
                               progress=opts.progress, device=opts.torch_device)
            plan.channels = width
            return res, cfg
        except DartsBudgetError as exc:
            if k + 1 == len(widths):
                raise TensorfoldError(f"{exc} (the {opts.budget_minutes:g}-minute budget keeps "
                                      f"{plan.final_reserve_s:.0f} s for the final training)") from None
            plan.notes.append(f"DARTS supernet at {widths[k + 1]} channels: at {width}, {exc.short}")


def _load_teacher(teacher):
    if teacher is None:
        return None
    from tensorfold.graph.io import load_model
    from tensorfold.onnxrt.inputs import model_inputs

    model = load_model(teacher)
    ins = model_inputs(model)
    dims = [d.dim_value for d in ins[0].type.tensor_type.shape.dim] if ins else []
    if len(ins) != 1 or dims[1:] not in ([*IMAGE], [0, 0, 0]):
        raise TensorfoldError(f"--teacher {teacher} takes {dims[1:] or 'no'} inputs; the searched networks take "
                              f"{list(IMAGE)} images")
    return model


def _choose(candidates, objectives):
    from tensorfold.search.pareto import front as pareto_front

    if not candidates[0].values:          # DARTS or a given genotype: one network, nothing to choose
        return candidates, candidates[0]
    front = pareto_front(candidates, objectives)
    if not front:
        best = min(c.metrics["latency"] for c in candidates)
        raise TensorfoldError(f"no candidate met --max-latency (the fastest of {len(candidates)} took {best:.3f} ms)")
    # the front's most accurate point, or the best on the single objective
    key = "accuracy" if "accuracy" in objectives else objectives[0]
    sign = 1 if DIRECTIONS[key] == "maximize" else -1
    return front, max(front, key=lambda s: sign * s.metrics[key])


def train_final(genotype: Genotype, cfg: NetConfig, data: str, steps: int, seed: int, teacher_model, provider: str,
                threads: int, dev, progress: bool, torch_device: str = "cpu", deadline: float | None = None) -> dict:
    """Train on the whole training split, test on the test split (never seen by the search)."""
    from tensorfold.datasets import load_data, prepare_inputs
    from tensorfold.graph.stats import model_stats
    from tensorfold.runtime.devices import predict_seconds
    from tensorfold.runtime.evaluation import evaluate_onnx
    from tensorfold.runtime.latency import measure

    x, y, _ = load_data(data, "train", IMAGE[1:], IMAGE[0])
    x = prepare_inputs(x, [1, *IMAGE], None)
    teacher = None
    if teacher_model is not None:
        from tensorfold.recovery.distill import OnnxTeacher

        teacher = OnnxTeacher(teacher_model, [], threads)
    net = Network(genotype, cfg)
    t = train_network(net, x, y.astype(np.int64), steps=steps, seed=seed, teacher=teacher, progress=progress,
                      device=torch_device, deadline=deadline)
    model = to_onnx(net)
    out = {"genotype": genotype.as_dict(), "genotype_text": str(genotype), "channels": cfg.channels,
           "steps": t["steps"], "train_seconds": round(t["seconds"], 1), "distilled_from": bool(teacher)}
    try:
        xt, yt, _ = load_data(data, "test", IMAGE[1:], IMAGE[0])
        out["test_accuracy"] = evaluate_onnx(model, prepare_inputs(xt, [1, *IMAGE], None), yt, threads=threads)
    except TensorfoldError:
        out["test_accuracy"] = None       # data with no test split
    feeds = {"input": np.random.default_rng(0).standard_normal((1, *IMAGE)).astype(np.float32)}
    out["params"] = net_params(net)
    out["flops"] = model_stats(model, {"input": [1, *IMAGE]}).flops
    out["host_ms"] = measure(model, feeds, provider, threads, warmup=5, runs=50).median
    if dev is not None:
        out["device"] = dev.name
        out["device_ms"] = predict_seconds(model, {"input": [1, *IMAGE]}, dev) * 1e3
    out["_model"] = model
    return out


def _write_dir(out_dir: Path, report, candidates, front, final, model, dev, cfg: NetConfig | None = None) -> None:
    """model.onnx (the final network), genotype.json, candidates.json, front.png; with several
    objectives (`cfg` given) also every Pareto point as point-K.onnx (its proxy-trained network) and
    point-K.json (genotype, objectives, metrics), and front.json, as `search ranks` writes its front."""
    from tensorfold.graph.io import save_model
    from tensorfold.outputs import write_text_atomic

    out_dir.mkdir(exist_ok=True)
    for stale in out_dir.glob("point-*"):     # an earlier run's points would read as this run's front
        stale.unlink()
    if cfg is not None:
        points = []
        for k, s in enumerate(front, start=1):
            point = {"point": k, "candidate": s.number, "genotype": s.genotype.as_dict(),
                     "values": dict(zip(report["objectives"], s.values)), "metrics": s.metrics}
            write_text_atomic(out_dir / f"point-{k}.json", json.dumps(point, indent=2))
            if s.weights is not None:
                net = Network(s.genotype, cfg)
                net.load_state_dict(s.weights)
                point["model"] = str(save_model(to_onnx(net), out_dir / f"point-{k}.onnx"))
            points.append(point)
        write_text_atomic(out_dir / "front.json", json.dumps({"objectives": report["objectives"], "points": points},
                                                             indent=2))
        report["front_points"] = len(points)
    report["model"] = str(save_model(model, out_dir / "model.onnx"))
    write_text_atomic(out_dir / "genotype.json", json.dumps({"genotype": final["genotype"]}, indent=2))
    write_text_atomic(out_dir / "candidates.json", json.dumps([c.as_dict() for c in candidates], indent=2))
    plot = plot_nas(candidates, front, out_dir / "front.png", dev.name if dev else None)
    report["plot"] = str(plot) if plot else None


def plot_nas(candidates, front, path: Path, device: str | None) -> Path | None:
    """Accuracy against host-measured latency, and against the device's predicted latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [c for c in candidates if "accuracy" in c.metrics]
    if not scored:
        return None
    keys = [("host_ms", "host latency, measured (ms)")] + ([("device_ms", f"{device} latency, predicted (ms)")]
                                                          if device else [])
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4), squeeze=False)
    on_front = {c.number for c in front}
    for ax, (key, label) in zip(axes[0], keys):
        ax.scatter([c.metrics[key] for c in scored], [c.metrics["accuracy"] for c in scored], s=12, color="0.6",
                   label="candidates")
        f = [c for c in scored if c.number in on_front]
        ax.scatter([c.metrics[key] for c in f], [c.metrics["accuracy"] for c in f], s=30, color="tab:red",
                   label="front", zorder=3)
        ax.set_xlabel(label)
        ax.set_ylabel("proxy accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    from tensorfold.outputs import atomic_path

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path
