"""The Python API; the CLI is a thin layer over it.

    from tensorfold.api import optimize
    report = optimize("model.onnx", "small.onnx", method="tucker", ratio=4)
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import time
from pathlib import Path

import numpy as np
import onnx

from tensorfold import __version__
from tensorfold.errors import TensorfoldError
from tensorfold.graph.io import load_model, save_model
from tensorfold.graph.normalize import normalize
from tensorfold.graph.stats import model_stats
from tensorfold.graph.verify import verify_models
from tensorfold.passes import PassContext, RankSpec, get_pass
from tensorfold.report import OptimizeReport
from tensorfold.runtime.inputs import feeds_for, parse_shapes, random_inputs, resolve_shapes

METHODS = ("auto", "svd", "tucker", "cp", "tt")


def optimize(input_path: str | os.PathLike, output_path: str | os.PathLike | None = None, *,
             method: str = "auto", rank: int | None = None, energy: float | None = None,
             ratio: float | None = None, evbmf: bool = False, include: tuple[str, ...] = (), exclude: tuple[str, ...] = (),
             force: bool = False, shapes: tuple[str, ...] | dict = (), inputs: str | None = None,
             verify: bool = True, progress: bool = True, seed: int = 0, hardware_aware: bool = False,
             provider: str = "cpu", device: str | None = None, threads: int = 0, max_error: float | None = None,
             target_latency: float | None = None, speedup: float | None = None,
             config: str | os.PathLike | None = None) -> OptimizeReport:
    """Load, normalize, rewrite, verify, save. Nothing is written unless every step succeeded.

    hardware_aware: time each candidate chain on `provider` (or predict it for `device`), rewrite a
    layer only where its chain is faster, and check the whole model is faster than the input;
    where it is not, layers go back to the input's form (see runtime/hardware_aware.py).

    config: a rank configuration (YAML, written by `tensorfold search ranks`) naming the method and
    ranks of each layer; it replaces method and the rank options."""
    start = time.perf_counter()
    spec = RankSpec(rank=rank, energy=energy, ratio=ratio, evbmf=evbmf)
    hardware_aware = hardware_aware or max_error is not None or target_latency is not None or speedup is not None
    if config is not None:
        _check_config_alone(spec, method, hardware_aware)
        from tensorfold.passes.planned import PlannedPass

        chosen, method = PlannedPass(), "config"
    else:
        chosen = get_pass(method)
    if output_path is not None:
        _check_output(Path(input_path), Path(output_path))
    original = load_model(input_path)
    shape_map = shapes if isinstance(shapes, dict) else parse_shapes(tuple(shapes))
    if verify:
        feeds, label, input_shapes = feeds_for(original, shape_map, inputs, seed)
    else:
        feeds, label, input_shapes = None, None, resolve_shapes(original, shape_map)
    model, norm_stats = normalize(original)
    if config is not None:
        chosen.choices = _config_plan(model, config)
    ctx = PassContext(spec=spec, include=tuple(include), exclude=tuple(exclude), force=force,
                      progress=progress, seed=seed)
    latency = None
    if hardware_aware:
        from tensorfold.runtime.hardware_aware import optimize_hardware_aware

        result, latency = optimize_hardware_aware(chosen, model, ctx, input_shapes, provider, device, threads,
                                                  max_error, target_latency, speedup, seed)
    else:
        result = chosen(model, ctx)
    rewritten = result.model
    ranks_desc = f"config {Path(config).name}" if config is not None else spec.describe()
    _record_run(rewritten, method, ranks_desc, result)
    verification = verify_models(original, rewritten, feeds, label) if verify else None
    report = OptimizeReport(
        input=str(input_path), output=str(output_path) if output_path else None, method=method,
        ranks=ranks_desc, input_shapes=input_shapes,
        before=model_stats(original, input_shapes), after=model_stats(rewritten, input_shapes),
        layers=result.rewritten, skipped=result.skipped, verification=verification,
        normalization=norm_stats, seconds=0.0, notes=_fold_notes(norm_stats) + result.notes,
        eligible_params=(result.eligible_params, result.eligible_params_after), latency=latency,
    )
    if not result.rewritten:
        report.notes.append("no layer was rewritten; the output equals the normalized input")
    if output_path is not None:
        save_model(rewritten, output_path)
    report.seconds = time.perf_counter() - start
    return report


def _check_config_alone(spec: RankSpec, method: str, hardware_aware: bool) -> None:
    given = [flag for flag, on in (("--rank", spec.rank is not None), ("--energy", spec.energy is not None),
                                   ("--ratio", spec.ratio is not None), ("--evbmf", spec.evbmf),
                                   ("--method", method != "auto"), ("--hardware-aware", hardware_aware)) if on]
    if given:
        raise TensorfoldError(f"--config sets the method and ranks of every layer; drop {', '.join(given)}")


def _config_plan(model: onnx.ModelProto, config) -> dict:
    from tensorfold.passes.layers import ensure_node_names, find_layers
    from tensorfold.search.config import read_config

    named = onnx.ModelProto()
    named.CopyFrom(model)
    ensure_node_names(named)
    layers, _ = find_layers(named)
    return read_config(config, {layer.name: layer for layer in layers})


def _check_output(input_path: Path, output_path: Path) -> None:
    if output_path.exists() and input_path.exists() and os.path.samefile(input_path, output_path):
        raise TensorfoldError(f"-o {output_path} is the input file; tensorfold never overwrites its input")
    if output_path.is_dir():
        raise TensorfoldError(f"-o {output_path} is a folder; give a file name")


def _fold_notes(norm_stats: dict) -> list[str]:
    """What normalization changed beyond bookkeeping: exact folds the user should know about."""
    parts = [f"{norm_stats[key]} {label}" for key, label in (
        ("batchnorms_folded", "BatchNorm(s) folded into convs"),
        ("affines_folded", "affine op chain(s) folded into convs"),
        ("hard_swish_rewritten", "hard-swish(es) written as x * HardSigmoid(x)")) if norm_stats.get(key)]
    return [f"normalize: {'; '.join(parts)} (exact, verified with the rest)"] if parts else []


def _record_run(model: onnx.ModelProto, method: str, ranks: str, result) -> None:
    """Provenance in metadata_props, so the file says what was done to it (Netron shows these)."""
    run = {
        "version": __version__, "method": method, "ranks": ranks,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "layers_rewritten": len(result.rewritten),
        "params_before": sum(r.params_before for r in result.rewritten),
        "params_after": sum(r.params_after for r in result.rewritten),
    }
    taken = {p.key for p in model.metadata_props}
    key, n = "tensorfold", 1
    while key in taken:
        n += 1
        key = f"tensorfold.{n}"
    entry = model.metadata_props.add()
    entry.key, entry.value = key, json.dumps(run)


def compare(path_a: str | os.PathLike, path_b: str | os.PathLike, *, shapes: tuple[str, ...] = (),
            inputs: str | None = None, seed: int = 0):
    """Run two models on the same inputs and compare their outputs (`tensorfold verify A B`)."""
    a, b = load_model(path_a), load_model(path_b)
    feeds, label, _ = feeds_for(a, parse_shapes(tuple(shapes)), inputs, seed)
    return verify_models(a, b, feeds, label)


def inspect(input_path: str | os.PathLike, *, shapes: tuple[str, ...] = ()) -> dict:
    """What is in a model and, per weight-heavy node, which methods can rewrite it."""
    from tensorfold.passes import PASSES
    from tensorfold.passes.layers import ensure_node_names, find_layers

    original = load_model(input_path)
    input_shapes = resolve_shapes(original, parse_shapes(tuple(shapes)))
    model, norm_stats = normalize(original)
    ensure_node_names(model)
    stats = model_stats(original, input_shapes)
    node_flops = model_stats(model, input_shapes).node_flops
    layers, skipped = find_layers(model)
    rows = []
    for layer in layers:
        methods = {}
        for name in METHODS:
            reason = PASSES[name]().supports(layer)
            methods[name] = "yes" if reason is None else reason
        rows.append({"node": layer.name, "op": layer.node.op_type, "weight_shape": list(layer.weight.shape),
                     "groups": layer.groups, "params": layer.params, "flops": node_flops.get(layer.name),
                     "methods": methods})
    return {
        "input": str(input_path), "opset": max((i.version for i in original.opset_import
                                               if i.domain in ("", "ai.onnx")), default=None),
        "producer": f"{original.producer_name} {original.producer_version}".strip(),
        "inputs": input_shapes, "outputs": [o.name for o in original.graph.output],
        "params": stats.params, "flops": stats.flops, "size_bytes": stats.size_bytes,
        "ops": dict(sorted(stats.ops.items())), "normalization": norm_stats,
        "layers": rows, "skipped": [s.as_dict() for s in skipped],
        "factorizable_params": sum(r["params"] for r in rows),
    }


def profile(path: str | os.PathLike, *, provider: str = "cpu", device: str | None = None,
            batches: tuple[int, ...] = (1,), runs: int = 30, warmup: int = 5, threads: int = 0,
            optimization: str = "all", compare_with: str | os.PathLike | None = None, top: int = 10,
            shapes: tuple[str, ...] = (), seed: int = 0) -> dict:
    """Latency (measured on `provider`, or predicted for `device`), FLOPs, params, size, memory,
    per-op and per-node tables; with `compare_with`, both models interleaved with ratios."""
    from tensorfold.runtime.devices import describe, get_device, predict_seconds
    from tensorfold.runtime.latency import (available_memory_bytes, by_op_type, compare, measure, node_profile,
                                            peak_rss_mb, with_batch)

    model = load_model(path)
    other = load_model(compare_with) if compare_with else None
    shape_map = parse_shapes(tuple(shapes))
    base_shapes = resolve_shapes(model, shape_map)
    feeds = random_inputs(model, shape_map, seed)
    stats = model_stats(model, base_shapes)
    report: dict = {"model": str(path), "params": stats.params, "flops": stats.flops, "size_bytes": stats.size_bytes,
                    "provider": None, "device": None, "batches": {}}
    if device:
        dev = get_device(device, provider, threads)
        report["device"] = describe(dev)
    else:
        _check_memory(model, base_shapes, max(batches), available_memory_bytes())
        report["provider"] = provider
    for batch in batches:
        bfeeds = with_batch(feeds, batch)
        bshapes = {k: list(v.shape) for k, v in bfeeds.items()}
        row: dict = {"flops": model_stats(model, bshapes).flops}
        if device:
            row["predicted_ms"] = round(predict_seconds(model, bshapes, dev) * 1e3, 4)
            if other is not None:
                row["compare_predicted_ms"] = round(
                    predict_seconds(other, bshapes, dev) * 1e3, 4)
                row["predicted_speedup"] = round(row["compare_predicted_ms"] / row["predicted_ms"], 4)
        elif other is not None:
            cmp = compare(model, other, bfeeds, provider, threads, warmup, runs)
            row.update({"latency": cmp.a.as_dict(), "compare_latency": cmp.b.as_dict(),
                        "speedup": round(cmp.speedup, 4),
                        "speedup_p10_p90": [round(float(np.percentile(cmp.ratios, q)), 4) for q in (10, 90)]})
        else:
            row["latency"] = measure(model, bfeeds, provider, threads, warmup, runs, optimization).as_dict()
        report["batches"][str(batch)] = row
    sizes = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer}
    per_node = [{"node": n.name or n.output[0], "op": n.op_type, "flops": stats.node_flops.get(n.name or n.output[0]),
                 "params": sum(sizes.get(i, 0) for i in n.input)} for n in model.graph.node
                if (n.name or n.output[0]) in stats.node_flops]
    report["graph_nodes"] = sorted(per_node, key=lambda r: -(r["flops"] or 0))[:top]
    if other is not None:
        ostats = model_stats(other, base_shapes)
        report["compare"] = {"model": str(compare_with), "params": ostats.params, "flops": ostats.flops,
                             "size_bytes": ostats.size_bytes}
    if not device:
        times = node_profile(model, with_batch(feeds, batches[0]), provider, threads, runs=min(runs, 10))
        report["ops"] = [{"op": op, "ms": round(ms, 4), "share": round(share, 4), "nodes": n}
                         for op, ms, share, n in by_op_type(times)][:top]
        report["nodes"] = [{"node": t.node, "op": t.op, "ms": round(t.mean_ms, 4), "share": round(t.share, 4)}
                           for t in times[:top]]
        report["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return report


def _check_memory(model: onnx.ModelProto, input_shapes: dict, batch: int, available: int | None) -> None:
    """Refuse up front a run that cannot fit: weights twice (proto + session) plus every activation."""
    if available is None:
        return
    from tensorfold.graph.shapes import concrete_shapes

    shapes = concrete_shapes(model, input_shapes)
    activations = sum(int(np.prod(s)) for name, s in shapes.items()
                      if name not in {t.name for t in model.graph.initializer}) * 4 * batch
    need = 2 * model.ByteSize() + activations
    if need > available:
        raise TensorfoldError(f"profiling needs about {need / 2**30:.1f} GiB at batch {batch}, "
                              f"only {available / 2**30:.1f} GiB is available; use a smaller --batch")


def recover(student_path, output_path, **kwargs) -> dict:
    """Fine-tune a factorized model with distillation; see tensorfold.recovery.run.recover."""
    from tensorfold.recovery.run import recover as _recover

    return _recover(student_path, output_path, **kwargs)


def compress(module, example_input, output_path: str | os.PathLike, *, method: str = "auto",
             ratio: float | None = None, data: str | None = "fashion-mnist", recover_config=None, **optimize_kwargs):
    """torch module -> ONNX -> factorized -> recovered, in one call. Returns (optimize report,
    recover report or None). The exported original and the factorized model are written beside
    output_path as `<name>.original.onnx` and `<name>.factorized.onnx`."""
    import torch

    from tensorfold.bench.models import export_onnx

    out = Path(output_path)
    original = out.with_name(out.stem + ".original.onnx")
    factorized = out.with_name(out.stem + ".factorized.onnx")
    export_onnx(module.eval(), example_input if isinstance(example_input, torch.Tensor) else torch.as_tensor(example_input),
                original)
    report = optimize(original, factorized, method=method, ratio=ratio, **optimize_kwargs)
    if data is None:
        save_model(load_model(factorized), out)
        return report, None
    rec = recover(factorized, out, teacher_path=original, data=data, cfg=recover_config)
    return report, rec
