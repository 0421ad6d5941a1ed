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

import numpy as np
import torch

from tensorfold.errors import TensorfoldError
from tensorfold.outputs import OutputFolder, check_output, guard_inputs, write_text_atomic
from tensorfold.search.nas.artifacts import OUTPUT_NAMES, write_dir
from tensorfold.search.nas.budget import FINAL_OVERHEAD_S, FINAL_STEPS, plan_budget
from tensorfold.search.nas.final import load_teacher, train_final
from tensorfold.search.nas.options import NasOptions
from tensorfold.search.nas.scoring import Scorer, load_split
from tensorfold.search.nas.space import NetConfig, Network
from tensorfold.search.nas.strategies import Scored, aging_evolution, nsga2_search, random_search
from tensorfold.search.objectives import DIRECTIONS


def search_nas(options: NasOptions | None = None, **kwargs) -> dict:
    """The options are NasOptions' fields, given as keywords or as one NasOptions."""
    if options is not None and kwargs:
        raise TypeError("give either a NasOptions or keyword options, not both")
    opts = options if options is not None else NasOptions(**kwargs)
    with guard_inputs(opts.teacher, opts.genotype, opts.data):
        folder = None
        # every output is checked against every input before any work, not after the search
        if opts.output is not None:
            check_output(opts.output, "-o")
        if opts.output_dir is not None:
            folder = OutputFolder(opts.output_dir, "--output-dir", OUTPUT_NAMES, staged=True).check()
        if folder is None:
            return _search_nas(opts, None)
        with folder.writing():
            return _search_nas(opts, folder)


def _search_nas(opts: NasOptions, folder: OutputFolder | None) -> dict:
    from tensorfold.runtime.devices import get_device
    from tensorfold.search.nas.latency import OpLatencyTable

    start = opts.started if opts.started is not None else time.perf_counter()
    strategy = opts.strategy
    given = None
    if opts.genotype is not None:
        from tensorfold.search.nas.space import load_genotype

        given = load_genotype(opts.genotype)  # a bad file fails before any data is loaded
    if opts.torch_device != "cpu":
        try:
            torch.empty(1, device=opts.torch_device)
        except (RuntimeError, AssertionError) as exc:
            raise TensorfoldError(f"--torch-device {opts.torch_device}: {str(exc).splitlines()[0]}") from None
    dev = get_device(opts.device, opts.provider, opts.threads) if opts.device else None
    if folder is not None and not folder.path.absolute().parent.is_dir():
        raise TensorfoldError(f"--output-dir {folder.path}: folder {folder.path.parent} does not exist")
    teacher_model = load_teacher(opts.teacher)
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
    scorer = Scorer(
        cfg,
        split,
        opts.objectives,
        plan.proxy_steps,
        opts.seed,
        host_table,
        device_table,
        opts.max_latency,
        opts.torch_device,
        opts.max_memory_mb,
    )
    rng = np.random.default_rng(opts.seed)
    darts_info = None
    if given is not None:
        strategy = "given"
        candidates = [Scored(0, given, [], scorer.metrics(Network(given, cfg)), 0.0)]
    elif strategy == "darts":
        res, cfg = _run_darts(opts, plan, split, start)
        darts_info = {
            "epochs": res.epochs,
            "steps": res.steps,
            "stopped": res.stopped,
            "history": res.history,
            "subset": res.subset,
            "guard": opts.guard,
            "order": opts.order,
            "peak_memory_mb": round(res.peak_memory_mb, 1),
            "seconds": round(res.seconds, 1),
        }
        candidates = [Scored(0, res.genotype, [], scorer.metrics(Network(res.genotype, cfg)), res.seconds)]
    else:
        from tensorfold.progress import bar as progress_bar

        # the budget's seconds as the bar; each scored candidate moves it and shows the count and accuracy
        scorer.bar = progress_bar(
            total=round(max(0.0, deadline - time.perf_counter())),
            desc=f"nas {strategy}",
            unit="s",
            # the budget's share used, not "10.45/20 [1.00s/s]": the bar moves by fractional seconds
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}{postfix}",
            show=opts.progress,
        )
        try:
            if strategy == "random":
                candidates = random_search(scorer, deadline, rng, opts.nodes, opts.max_candidates)
            elif len(opts.objectives) == 1:
                candidates = aging_evolution(
                    scorer,
                    deadline,
                    rng,
                    opts.nodes,
                    opts.objectives,
                    opts.population,
                    opts.sample,
                    opts.max_candidates,
                )
            else:
                candidates = nsga2_search(
                    scorer, deadline, opts.seed, opts.nodes, opts.objectives, opts.population, opts.max_candidates
                )
        finally:
            scorer.bar.close()
    host_table.save()
    if device_table is not None:
        device_table.save()
    search_seconds = time.perf_counter() - start
    if not candidates:
        raise TensorfoldError("the budget ended before any candidate was scored; raise --budget-minutes")
    front, chosen = _choose(candidates, opts.objectives, {"latency": opts.max_latency, "memory": opts.max_memory_mb})
    # steps the user left to the plan end with the budget, whatever the search left over
    final_deadline = start + budget_s - FINAL_OVERHEAD_S if opts.final_steps is None else None
    # (the plan's steps sized the reserve for the slowest network; the chosen one trains up to the
    # default and stops with the budget)
    steps = opts.final_steps or FINAL_STEPS[0]
    final = train_final(
        chosen.genotype,
        NetConfig(channels=plan.final_channels, layers=opts.layers),
        opts.data,
        steps,
        opts.seed,
        teacher_model,
        opts.provider,
        opts.threads,
        dev,
        opts.progress,
        opts.torch_device,
        final_deadline,
    )
    if final["steps"] < steps:
        plan.notes.append(f"final training: {final['steps']} of {steps} steps fit the time the search left")
    report = {
        "strategy": strategy
        + (
            f" (order {opts.order}, guard {opts.guard})"
            if strategy == "darts"
            else " (aging evolution)"
            if strategy == "evolution" and len(opts.objectives) == 1
            else " (NSGA-II)"
            if strategy == "evolution"
            else ""
        ),
        "objectives": list(opts.objectives),
        "data": desc,
        "budget_minutes": opts.budget_minutes,
        "search_seconds": round(search_seconds, 1),
        "candidates": len(candidates),
        "proxy": (
            f"accuracy on {len(split[2])} held-out training images after {plan.proxy_steps} SGD steps from scratch "
            f"on {len(split[0])} (no weight sharing)"
        )
        if strategy != "darts"
        else f"DARTS supernet on {len(split[0])} training images (half for w, half for alpha)"
        + (f"; {darts_info['subset']}" if darts_info and darts_info.get("subset") else ""),
        "threads": threads,
        "budget": plan.as_dict(),
        "space": {
            "channels": plan.channels,
            "layers": opts.layers,
            "nodes": opts.nodes,
            "ops": "DARTS ops + conv 3x3/5x5",
        },
        "latency": {
            "host": f"{opts.provider} measured (op table)",
            "device": dev.name if dev else None,
            "max_latency_ms": opts.max_latency,
            "max_memory_mb": opts.max_memory_mb,
        },
        "darts": darts_info,
        "chosen": chosen.as_dict(),
        "front": [s.as_dict() for s in front],
        "final": final,
        "seconds": None,
    }
    model = final.pop("_model")
    if opts.output:
        from tensorfold.graph.io import save_model

        save_model(model, opts.output)
        report["output"] = str(opts.output)
    if folder is not None:
        write_dir(folder, report, candidates, front, final, model, dev, cfg if len(opts.objectives) > 1 else None)
    report["seconds"] = round(time.perf_counter() - start, 1)
    if folder is not None:
        write_text_atomic(folder.file("report.json"), json.dumps(report, indent=2, default=str))
        # an earlier run's files this one did not write again (a multi-objective run's front) would read as its
        folder.commit(stale=OUTPUT_NAMES)
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
            res = darts_search(
                tx,
                ty,
                cfg,
                nodes=opts.nodes,
                budget_s=plan.search_deadline(start) - time.perf_counter(),
                epochs=opts.max_epochs,
                order=opts.order,
                guard=opts.guard,
                seed=opts.seed,
                progress=opts.progress,
                device=opts.torch_device,
            )
            plan.channels = width
            return res, cfg
        except DartsBudgetError as exc:
            if k + 1 == len(widths):
                raise TensorfoldError(
                    f"{exc} (the {opts.budget_minutes:g}-minute budget keeps "
                    f"{plan.final_reserve_s:.0f} s for the final training)"
                ) from None
            plan.notes.append(f"DARTS supernet at {widths[k + 1]} channels: at {width}, {exc.short}")


# each constraint: its option, the metric it bounds, the unit shown
_CONSTRAINTS = {"latency": ("--max-latency", "ms"), "memory": ("--max-memory-mb", "MB")}


def _unmet(candidates, bounds: dict) -> str | None:
    """The line saying what no candidate met and how close each bound came; None when one met them all."""
    if any(all(v is None or c.metrics[m] <= v for m, v in bounds.items()) for c in candidates):
        return None
    given = {m: v for m, v in bounds.items() if v is not None}
    least = {m: min(c.metrics[m] for c in candidates) for m in given}
    failed = [m for m in given if least[m] > given[m]] or list(given)  # none alone: they fail together
    seen = f"the least of {len(candidates)}:" if len(candidates) > 1 else "it has"
    parts = [f"{_CONSTRAINTS[m][0]} {given[m]:g} ({seen} {least[m]:.3f} {_CONSTRAINTS[m][1]})" for m in failed]
    together = " together" if len(failed) > 1 and all(least[m] <= given[m] for m in failed) else ""
    if candidates[0].values:
        return f"no candidate met {' and '.join(parts)}{together}"
    return f"the network (DARTS' or --genotype's: nothing to choose from) does not meet {' and '.join(parts)}"


def _choose(candidates, objectives, bounds: dict):
    """The front and the chosen network; one line when no candidate meets the constraints (a single
    network from DARTS or --genotype included: it is checked, not searched)."""
    from tensorfold.search.pareto import front as pareto_front

    unmet = _unmet(candidates, bounds)
    if unmet is not None:
        raise TensorfoldError(unmet)
    if not candidates[0].values:  # DARTS or a given genotype: one network, nothing to choose
        return candidates, candidates[0]
    front = pareto_front(candidates, objectives)
    # the front's most accurate point, or the best on the single objective
    key = "accuracy" if "accuracy" in objectives else objectives[0]
    sign = 1 if DIRECTIONS[key] == "maximize" else -1
    return front, max(front, key=lambda s: sign * s.metrics[key])
