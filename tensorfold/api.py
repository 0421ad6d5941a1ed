"""The Python API; the CLI is a thin layer over it.

from tensorfold.api import optimize
report = optimize("model.onnx", "small.onnx", method="tucker", ratio=4)
"""

from __future__ import annotations

import os

import numpy as np
import onnx

from tensorfold.calibration.data import load_samples, parse_normalize
from tensorfold.calibration.stats import collect_input_grams
from tensorfold.errors import TensorfoldError
from tensorfold.graph.io import check_model_path, load_model, save_model
from tensorfold.graph.model import constant_tensors
from tensorfold.graph.normalize import normalize as normalize_model
from tensorfold.graph.stats import model_stats
from tensorfold.graph.verify import class_axes, parse_class_outputs, verify_models
from tensorfold.onnxrt import large
from tensorfold.onnxrt.batching import feeds_for
from tensorfold.onnxrt.inputs import (
    DEFAULT_DYNAMIC_DIM,
    dynamic_warning,
    load_inputs,
    model_inputs,
    parse_shapes,
    random_inputs,
    resolve_shapes,
    zero_inputs,
)
from tensorfold.optimize import OptimizeOptions
from tensorfold.optimize import run as run_optimize
from tensorfold.outputs import guard_inputs
from tensorfold.passes import METHODS, PassContext, get_pass
from tensorfold.passes.layers import ensure_node_names, find_layers
from tensorfold.report import (
    InspectReport,
    NasReport,
    OptimizeReport,
    ProfileReport,
    RankSearchReport,
    RecoverReport,
    VerifyReport,
)


def optimize(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike | None = None,
    options: OptimizeOptions | None = None,
    **kwargs,
) -> OptimizeReport:
    """Load, normalize, rewrite, verify, (int8,) save: the stages of tensorfold/optimize/. Nothing is
    written unless every stage succeeded. The options are OptimizeOptions' fields, given as keywords
    or as one OptimizeOptions."""
    if options is not None and kwargs:
        raise TypeError("give either an OptimizeOptions or keyword options, not both")
    opts = options if options is not None else OptimizeOptions(**kwargs)
    check_model_path(input_path)
    with guard_inputs(
        *(p for p in (input_path, opts.inputs, opts.config, opts.calibration, opts.recover_data) if p is not None)
    ):
        return run_optimize(input_path, output_path, opts)


def compare(
    path_a: str | os.PathLike,
    path_b: str | os.PathLike,
    *,
    shapes: tuple[str, ...] = (),
    inputs: str | None = None,
    seed: int = 0,
    class_outputs: tuple[str, ...] | str = (),
) -> VerifyReport:
    """Run two models on the same inputs and compare their outputs (`tensorfold verify A B`);
    `class_outputs` (NAME or NAME:AXIS) are judged by argmax agreement too, beside those the graph
    marks as class scores (a Softmax, an ArgMax)."""
    named = parse_class_outputs((class_outputs,) if isinstance(class_outputs, str) else tuple(class_outputs))
    a, b = load_model(path_a), load_model(path_b)
    class_axes(a, named)  # an unknown output name is said before any run
    feeds, label, _ = feeds_for(a, parse_shapes(tuple(shapes)), inputs, seed)
    return VerifyReport.of(verify_models(a, b, feeds, label, class_outputs=named))


def inspect(
    input_path: str | os.PathLike,
    *,
    shapes: tuple[str, ...] = (),
    calibration: str | os.PathLike | None = None,
    normalize: tuple | str | None = None,
    progress: bool = False,
) -> InspectReport:
    """What is in a model and, per weight-heavy node, which methods can rewrite it. With
    calibration samples also each layer's sensitivity: the layer's own output error and the
    model's output error when that layer alone keeps half its parameters (data-fitted Tucker-2/SVD)."""
    from tensorfold.passes import PASSES
    from tensorfold.passes.layers import find_layers

    original = load_model(input_path)
    shape_map = parse_shapes(tuple(shapes))
    samples = None
    if calibration:
        norm = parse_normalize(normalize) if isinstance(normalize, str) or normalize is None else normalize
        samples = load_samples(calibration, original, shapes=shape_map, normalize=norm)
        if not shape_map:  # FLOPs at the size the samples have, as optimize counts them (one sample)
            shape_map = {name: [1, *array.shape[1:]] for name, array in samples.arrays.items()}
    input_shapes = resolve_shapes(original, shape_map)
    model, norm_stats = normalize_model(original)
    ensure_node_names(model)
    stats = model_stats(original, input_shapes)
    node_flops = model_stats(model, input_shapes).node_flops
    layers, skipped = find_layers(model)
    sens = _sensitivity(original, model, samples, progress) if samples is not None else {}
    readers: dict[str, list[str]] = {}
    for layer in layers:
        readers.setdefault(layer.node.input[1], []).append(layer.name)
    rows = []
    for layer in layers:
        methods = {}
        for name in METHODS:
            reason = PASSES[name]().supports(layer)
            methods[name] = "yes" if reason is None else reason
        rows.append(
            {
                "node": layer.name,
                "op": layer.node.op_type,
                "weight_shape": list(layer.weight.shape),
                "groups": layer.groups,
                "params": layer.params,
                "flops": node_flops.get(layer.name),
                "methods": methods,
                "weight": layer.node.input[1],
                "shared_with": [n for n in readers[layer.node.input[1]] if n != layer.name],
            }
        )
        if layer.name in sens:
            rows[-1]["sensitivity"] = sens[layer.name].as_dict()
    return InspectReport(
        input=str(input_path),
        opset=max((i.version for i in original.opset_import if i.domain in ("", "ai.onnx")), default=None),
        producer=f"{original.producer_name} {original.producer_version}".strip(),
        inputs=input_shapes,
        outputs=[o.name for o in original.graph.output],
        params=stats.params,
        flops=stats.flops,
        size_bytes=stats.size_bytes,
        ops=dict(sorted(stats.ops.items())),
        normalization=norm_stats,
        layers=rows,
        skipped=skipped,
        # a weight read by several layers counts once
        factorizable_params=sum({r["weight"]: r["params"] for r in rows}.values()),
        calibration=str(calibration) if calibration else None,
        # FLOPs at a defaulted dynamic dim say little: a 488x488 table model read at 64x64 shows 61M, not 3.6G
        warnings=[w for w in [dynamic_warning(original, shape_map, "FLOPs counted", inputs_option=False)] if w],
    )


def _sensitivity(original, model, samples, progress) -> dict:
    from tensorfold.calibration.sensitivity import measure_sensitivity, probe_reference

    chosen = get_pass("tucker")
    layers, _ = find_layers(model)
    ctx = PassContext(progress=progress, stats=collect_input_grams(model, layers, samples, progress=progress))
    return measure_sensitivity(chosen, model, ctx, probe_reference(original, samples))


def profile(
    path: str | os.PathLike,
    *,
    provider: str = "cpu",
    device: str | None = None,
    batches: tuple[int, ...] = (1,),
    runs: int = 30,
    warmup: int = 5,
    threads: int = 0,
    optimization: str = "all",
    compare_with: str | os.PathLike | None = None,
    top: int = 10,
    shapes: tuple[str, ...] = (),
    seed: int = 0,
    inputs: str | os.PathLike | None = None,
) -> ProfileReport:
    """Latency (measured on `provider`, or predicted for `device`), FLOPs, params, size, memory,
    per-op and per-node tables; with `compare_with`, both models interleaved with ratios.

    The shapes timed: the first sample of `inputs` (an .npz; needed for integer inputs), else
    `shapes`, else the model's static dims with dynamic ones at DEFAULT_DYNAMIC_DIM, which the
    report warns about (a detector's speed at 64x64 says nothing about its speed at 640x640)."""
    from tensorfold.limits import PROFILED_RUNS
    from tensorfold.onnxrt.batching import fixed_batch
    from tensorfold.runtime.devices import describe
    from tensorfold.runtime.latency import available_memory_bytes, by_op_type, node_profile, peak_rss_mb, with_batch
    from tensorfold.runtime.latency_model import latency_model
    from tensorfold.runtime.memory import predict_memory

    for name, value, least in (("runs", runs, 1), ("warmup", warmup, 0), ("top", top, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise TensorfoldError(f"{name}={value!r}: a whole number >= {least} is needed (--{name})")
    model = load_model(path)
    other = load_model(compare_with) if compare_with else None
    if other is not None:
        ours, theirs = ([v.name for v in model_inputs(m)] for m in (model, other))
        if sorted(ours) != sorted(theirs):
            raise TensorfoldError(
                f"--compare {compare_with} takes the inputs {theirs}, {path} takes {ours}: "
                "the two models are timed on the same inputs, so they must take the same ones"
            )
    shape_map = parse_shapes(tuple(shapes))
    warnings = []
    if inputs is not None:
        from tensorfold.onnxrt.batching import one_call

        feeds = one_call(model, load_inputs(inputs, model))  # --batch repeats it
        shapes_from = f"--inputs {inputs} (its first call)"
    else:
        # a prediction needs shapes only; a measurement runs the model on random values
        feeds = zero_inputs(model, shape_map) if device else random_inputs(model, shape_map, seed)
        shapes_from = "--shape" if shape_map else "the model's static dims"
        warning = dynamic_warning(model, shape_map)
        if warning:
            warnings.append(warning)
            shapes_from = f"{shapes_from}, dynamic ones at {DEFAULT_DYNAMIC_DIM}"
    base_shapes = {k: list(v.shape) for k, v in feeds.items()}
    fixed = fixed_batch(model)
    if fixed is not None and set(batches) != {fixed}:
        if tuple(batches) != (1,):
            warnings.append(
                f"the model's batch is fixed at {fixed}: timed at batch {fixed}, not --batch "
                f"{','.join(str(b) for b in batches)}"
            )
        batches = (fixed,)

    def batched(batch: int) -> dict:
        """The user's call is timed as given; --batch repeats the inputs along their first axis."""
        if batch == fixed or (batch == 1 and inputs is not None):
            return feeds
        return with_batch(feeds, batch)

    stats = model_stats(model, base_shapes)
    latency = latency_model(provider, threads, device, runs=runs, warmup=warmup, optimization=optimization)
    if not latency.predicted:
        _check_memory(model, base_shapes, max(batches), available_memory_bytes())
    capacity = latency.device.memory_bytes if latency.predicted else None
    rows = {}
    for batch in batches:
        bfeeds = batched(batch)
        bshapes = {k: list(v.shape) for k, v in bfeeds.items()}
        row = {"flops": model_stats(model, bshapes).flops}
        row.update(latency.stats(model, bfeeds, other))
        # what one call holds at once: weights, live activations, a conv's im2col (runtime/memory.py)
        memory = predict_memory(model, bshapes)
        row["predicted_memory"] = memory.as_dict()
        if capacity and memory.total_bytes > capacity:
            warnings.append(
                f"batch {batch} needs about {memory.total_bytes / 2**30:.1f} GiB, more than the "
                f"{capacity / 2**30:.0f} GiB of {latency.device.name}"
            )
        rows[str(batch)] = row
    sizes = {name: int(np.prod(t.dims)) for name, t in constant_tensors(model).items()}  # Constant nodes' too
    per_node = [
        {
            "node": n.name or n.output[0],
            "op": n.op_type,
            "flops": stats.node_flops.get(n.name or n.output[0]),
            "params": sum(sizes.get(i, 0) for i in n.input),
        }
        for n in model.graph.node
        if (n.name or n.output[0]) in stats.node_flops
    ]
    report = ProfileReport(
        model=str(path),
        params=stats.params,
        flops=stats.flops,
        size_bytes=stats.size_bytes,
        provider=None if latency.predicted else provider,
        device=describe(latency.device) if latency.predicted else None,
        batches=rows,
        input_shapes=base_shapes,
        shapes_from=shapes_from,
        warnings=warnings,
        graph_nodes=sorted(per_node, key=lambda r: -(r["flops"] or 0))[:top],
    )
    if other is not None:
        ostats = model_stats(other, base_shapes)
        report.compare = {
            "model": str(compare_with),
            "params": ostats.params,
            "flops": ostats.flops,
            "size_bytes": ostats.size_bytes,
        }
    if not latency.predicted:
        report.profiled_runs = min(runs, PROFILED_RUNS)
        times = node_profile(model, batched(batches[0]), provider, threads, runs=report.profiled_runs)
        report.ops = [
            {"op": op, "ms": round(ms, 4), "share": round(share, 4), "nodes": n}
            for op, ms, share, n in by_op_type(times)
        ][:top]
        report.nodes = [
            {"node": t.node, "op": t.op, "ms": round(t.mean_ms, 4), "share": round(t.share, 4)} for t in times[:top]
        ]
        report.peak_rss_mb = round(peak_rss_mb(), 1)
    return report


def _check_memory(model: onnx.ModelProto, input_shapes: dict, batch: int, available: int | None) -> None:
    """Refuse up front a run that cannot fit: weights twice (proto + session) plus every activation."""
    if available is None:
        return
    from tensorfold.graph.shapes import concrete_shapes

    shapes = concrete_shapes(model, input_shapes)
    activations = (
        sum(int(np.prod(s)) for name, s in shapes.items() if name not in {t.name for t in model.graph.initializer})
        * 4
        * batch
    )
    need = 2 * large.serialized_size(model) + activations
    if need > available:
        raise TensorfoldError(
            f"profiling needs about {need / 2**30:.1f} GiB at batch {batch}, "
            f"only {available / 2**30:.1f} GiB is available; use a smaller --batch"
        )


def recover(student_path, output_path, **kwargs) -> RecoverReport:
    """Fine-tune a factorized model with distillation; see tensorfold.recovery.run.recover. The
    CLI's names work too: `teacher=` for teacher_path, RecoverConfig's fields (max_steps=, lr=,
    batch_size=, ...) as keywords or `cfg=` as a RecoverConfig or a dict, `classes=` as a list or
    the CLI's comma-separated string."""
    import inspect
    from dataclasses import fields, replace

    from tensorfold.recovery.config import RecoverConfig
    from tensorfold.recovery.run import recover as _recover

    if "teacher" in kwargs:
        kwargs["teacher_path"] = kwargs.pop("teacher")
    if "torch_device" in kwargs:  # the CLI's --torch-device is RecoverConfig's device
        kwargs["device"] = kwargs.pop("torch_device")
    cfg = kwargs.pop("cfg", None)
    if isinstance(cfg, dict):
        cfg = RecoverConfig(**cfg)
    elif cfg is not None and not isinstance(cfg, RecoverConfig):
        raise TypeError(f"recover(cfg=...) takes a RecoverConfig or a dict of its fields, not {type(cfg).__name__}")
    config_fields = {f.name for f in fields(RecoverConfig)}
    given = {k: kwargs.pop(k) for k in list(kwargs) if k in config_fields}
    if given:
        cfg = replace(cfg or RecoverConfig(), **given)
    if isinstance(kwargs.get("classes"), str):
        kwargs["classes"] = [c.strip() for c in kwargs["classes"].split(",") if c.strip()]
    allowed = set(inspect.signature(_recover).parameters) - {"student_path", "output_path"}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise TypeError(
            f"recover() got unknown option(s) {', '.join(unknown)}; it takes "
            f"{', '.join(sorted(allowed | config_fields | {'teacher', 'cfg', 'torch_device'}))}"
        )
    return RecoverReport.from_dict(_recover(student_path, output_path, cfg=cfg, **kwargs))


def search_ranks(model_path, **kwargs) -> RankSearchReport:
    """The Pareto front of per-layer methods and ranks; see tensorfold.search.ranks.RankSearchOptions."""
    from tensorfold.search.ranks import search_ranks as _search_ranks

    return RankSearchReport.from_dict(_search_ranks(model_path, **kwargs))


def search_nas(**kwargs) -> NasReport:
    """A cell architecture searched, trained, exported and measured; see tensorfold.search.nas.options.NasOptions."""
    from tensorfold.search.nas.run import search_nas as _search_nas

    return NasReport.from_dict(_search_nas(**kwargs))


def compress(
    module,
    example_input,
    output_path: str | os.PathLike,
    *,
    method: str = "auto",
    ratio: float | None = None,
    data: str | None = None,
    recover_config=None,
    **optimize_kwargs,
):
    """torch module -> ONNX -> factorized -> recovered, in one call. Returns (optimize report,
    recover report or None). The exported original and the factorized model are written beside
    output_path as `<name>.original.onnx` and `<name>.factorized.onnx`. Recovery runs only on the
    `data` the caller names (a folder, an .npz, `fashion-mnist`, ...): no data, no training.
    Every argument is checked before any work; a call that fails removes the files it created."""
    import torch

    from tensorfold.export import export_onnx
    from tensorfold.outputs import check_output
    from tensorfold.recovery.config import RecoverConfig

    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"compress() takes a torch.nn.Module, not {type(module).__name__}")
    if isinstance(recover_config, dict):
        recover_config = RecoverConfig(**recover_config)
    elif recover_config is not None and not isinstance(recover_config, RecoverConfig):
        raise TypeError(
            f"recover_config takes a RecoverConfig or a dict of its fields, not {type(recover_config).__name__}"
        )
    options = OptimizeOptions(method=method, ratio=ratio, **optimize_kwargs)  # refused now, not after the export
    example = example_input if isinstance(example_input, torch.Tensor) else torch.as_tensor(example_input)
    out = check_output(output_path, "output_path")
    original = check_output(out.with_name(out.stem + ".original.onnx"), "output_path")
    factorized = check_output(out.with_name(out.stem + ".factorized.onnx"), "output_path")
    created = [p for p in (out, original, factorized) if not p.exists()]
    try:
        try:
            export_onnx(module.eval(), example, original)
        except Exception as exc:  # the module's own error on this input (a wrong shape): one line
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:240]
            raise TensorfoldError(
                f"compress(): the module does not run on example_input of shape {list(example.shape)}: {first}"
            ) from None
        report = optimize(original, factorized, options)
        if data is None:
            save_model(load_model(factorized), out)
            return report, None
        rec = recover(factorized, out, teacher_path=original, data=data, cfg=recover_config)
        return report, rec
    except BaseException:
        for path in created:
            path.unlink(missing_ok=True)
        raise
