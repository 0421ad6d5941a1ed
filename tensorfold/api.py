"""The Python API; the CLI is a thin layer over it.

    from tensorfold.api import optimize
    report = optimize("model.onnx", "small.onnx", method="tucker", ratio=4)
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from tensorfold import __version__
from tensorfold.calibration.data import DEFAULT_HOLDOUT, load_samples, parse_normalize, split_holdout
from tensorfold.calibration.deploy import (
    DeploySettings,
    check_objective,
    factorization_of,
    search_candidates,
    split_models_for_int8,
)
from tensorfold.calibration.stats import collect_input_grams
from tensorfold.errors import TensorfoldError, VerificationFailed
from tensorfold.graph.io import load_model, save_model
from tensorfold.graph.normalize import normalize as normalize_model
from tensorfold.graph.stats import model_stats
from tensorfold.graph.verify import Reference, parse_class_outputs, verify_models
from tensorfold.onnxrt import large
from tensorfold.onnxrt.batching import call_shapes, feeds_for
from tensorfold.onnxrt.inputs import (
    DEFAULT_DYNAMIC_DIM,
    dynamic_warning,
    load_inputs,
    parse_shapes,
    random_inputs,
    resolve_shapes,
    zero_inputs,
)
from tensorfold.outputs import check_output, guard_inputs
from tensorfold.passes import METHODS, PassContext, PassResult, RankSpec, get_pass
from tensorfold.passes.layers import ensure_node_names, find_layers
from tensorfold.quantize.formats import format_for
from tensorfold.report import (
    InspectReport,
    NasReport,
    OptimizeReport,
    ProfileReport,
    RankSearchReport,
    RecoverReport,
    VerifyReport,
)

# --calibration without a rank option: the most compressed model within this held-out output error
DEFAULT_OUTPUT_ERROR = 0.05
# a run without --calibration whose verified output error is above this says so and names the fix
OUTPUT_ERROR_WARNING = 0.05
# calibration samples each layer's sensitivity probe runs on (one model run per layer)
SENSITIVITY_SAMPLES = 8


@dataclass(frozen=True)
class OptimizeOptions:
    """Every option of `optimize`, checked once here (the CLI and Python callers build the same thing).

    method "none": no factorization (with int8=True: int8 alone, for comparison).

    hardware_aware: time each candidate chain on `provider` (or predict it for `device`), rewrite a
    layer only where its chain is faster, and check the whole model is faster than the input;
    where it is not, layers go back to the input's form (see planning/hardware_aware.py). Implied
    by max_error, target_latency and speedup.

    config: a rank configuration (YAML, written by `tensorfold search ranks`) naming the method and
    ranks of each layer; it replaces method and the rank options.

    calibration: real samples (an .npz with one array per input, or a folder of images scaled to
    [0, 1], `normalize` = "MEAN,STD"). Factors and rank curves are fitted to each layer's output on
    them (decompose/data_aware.py); a seeded `holdout` share is kept out of the fit and the report's
    verification runs on it (on `inputs` instead when given: the bound search selects on the held-out
    share, so only `inputs` are independent of every choice).
    max_output_error: the most compressed model whose held-out relative output error (and argmax
    disagreement on class axes) stays within this bound; with calibration and no rank option it
    defaults to DEFAULT_OUTPUT_ERROR. int8: onnxruntime int8 quantization in the format that is fast
    on `provider`, calibrated on the same samples, with the nodes that cost the most held-out error
    left in float; with a bound (given, or the default) the bound holds for the model as written and
    the candidates (input, factorized, int8 alone, factorized + int8) are compared by `objective`:
    "latency" (the default with int8: the fastest, measured on `provider`) or "size" (the smallest
    file); the input is kept when no candidate beats it. With a rank option instead of a bound, int8
    may add at most DEFAULT_OUTPUT_ERROR to the factorized model's error. class_outputs: outputs
    that hold class scores ("NAME" or "NAME:AXIS"), judged by argmax agreement besides their error
    (the graph marks them itself with a Softmax or an ArgMax). sensitivity: with calibration and a global budget, weigh each
    layer's error curve by how much the model's output moves when that layer alone is compressed
    (calibration/sensitivity.py; one model run per layer on a few samples)."""

    method: str = "auto"
    rank: int | None = None
    energy: float | None = None
    ratio: float | None = None
    evbmf: bool = False
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    force: bool = False
    shapes: tuple[str, ...] | dict = ()
    inputs: str | os.PathLike | None = None
    verify: bool = True
    progress: bool = True
    seed: int = 0
    hardware_aware: bool = False
    provider: str = "cpu"
    device: str | None = None
    threads: int = 0
    max_error: float | None = None
    target_latency: float | None = None
    speedup: float | None = None
    config: str | os.PathLike | None = None
    calibration: str | os.PathLike | None = None
    normalize: tuple | str | None = None
    holdout: float = DEFAULT_HOLDOUT
    max_output_error: float | None = None
    int8: bool = False
    sensitivity: bool = True
    objective: str | None = None
    class_outputs: tuple[str, ...] | dict = ()

    def __post_init__(self):
        put = functools.partial(object.__setattr__, self)
        put("include", tuple(self.include))
        put("exclude", tuple(self.exclude))
        put("shapes", self.shapes if isinstance(self.shapes, dict) else parse_shapes(tuple(self.shapes)))
        put("hardware_aware", self.hardware_aware or any(v is not None for v in (
            self.max_error, self.target_latency, self.speedup)))
        put("class_outputs", self.class_outputs if isinstance(self.class_outputs, dict)
            else parse_class_outputs(tuple(self.class_outputs)))
        if self.method not in (*METHODS, "none"):
            raise TensorfoldError(f"unknown method '{self.method}' (choose from {', '.join((*METHODS, 'none'))})")
        spec = self.spec        # RankSpec checks the rank options themselves
        rank_flags = [flag for flag, on in (("--rank", spec.rank is not None), ("--energy", spec.energy is not None),
                                            ("--ratio", spec.ratio is not None), ("--evbmf", spec.evbmf)) if on]
        hardware = ["--hardware-aware"] if self.hardware_aware else []
        if self.config is not None:
            given = rank_flags + (["--method"] if self.method != "auto" else []) + hardware
            if given:
                raise TensorfoldError(f"--config sets the method and ranks of every layer; drop {', '.join(given)}")
        if self.calibration is None:
            for flag, on in (("--max-output-error", self.max_output_error is not None), ("--int8", self.int8)):
                if on:
                    raise TensorfoldError(f"{flag} needs --calibration (real samples to fit and verify on)")
        if not 0 < self.holdout < 1:
            raise TensorfoldError(f"the held-out share must be in (0, 1) (got {self.holdout})")
        if self.max_output_error is not None:
            if not self.max_output_error > 0:
                raise TensorfoldError(f"--max-output-error must be > 0 (got {self.max_output_error})")
            given = rank_flags + (["--config"] if self.config is not None else []) + hardware + \
                (["--method none"] if self.method == "none" and not self.int8 else [])
            if given:
                raise TensorfoldError(f"--max-output-error searches the global budget itself; drop {', '.join(given)}")
        if self.method == "none" and (rank_flags or self.hardware_aware or self.config is not None):
            raise TensorfoldError("--method none factorizes nothing; drop the rank and hardware-aware options")
        check_objective(self.objective)
        if self.objective is not None and not self.int8 and self.output_bound is None:
            raise TensorfoldError(f"--objective {self.objective} picks among models within an error bound: add --int8 "
                                  "or --max-output-error (both need --calibration)")
        if self.int8 and self.deploy_objective == "latency":
            if self.device is not None:
                raise TensorfoldError("--int8 is timed on a provider: the device models (--device) predict float "
                                      "kernels only; drop --device, or use --objective size")
            format_for(self.provider)      # a provider without int8 kernels is refused here, before any work

    @property
    def spec(self) -> RankSpec:
        return RankSpec(rank=self.rank, energy=self.energy, ratio=self.ratio, evbmf=self.evbmf)

    @property
    def default_bound(self) -> bool:
        """With real data and no rank option the safe default is a bound on what the user sees, not an
        energy (also for int8 alone: a quantized model is held to what the user sees, too)."""
        return (self.calibration is not None and self.max_output_error is None
                and (self.method != "none" or self.int8)
                and self.config is None and not self.hardware_aware and self.spec == RankSpec())

    @property
    def deploy_objective(self) -> str | None:
        """What picks among the candidates: given, or `latency` whenever int8 is asked for."""
        return self.objective or ("latency" if self.int8 else None)

    @property
    def output_bound(self) -> float | None:
        return DEFAULT_OUTPUT_ERROR if self.default_bound else self.max_output_error

    def describe_ranks(self) -> str:
        if self.config is not None:
            text = f"config {Path(self.config).name}"
        elif self.output_bound is not None:
            text = f"max output error {self.output_bound:g}"
        else:
            text = self.spec.describe()
        return text + (", fitted to calibration data" if self.calibration is not None and self.method != "none"
                       else "")


def optimize(input_path: str | os.PathLike, output_path: str | os.PathLike | None = None,
             options: OptimizeOptions | None = None, **kwargs) -> OptimizeReport:
    """Load, normalize, rewrite, verify, save. Nothing is written unless every step succeeded.
    The options are OptimizeOptions' fields, given as keywords or as one OptimizeOptions."""
    if options is not None and kwargs:
        raise TypeError("give either an OptimizeOptions or keyword options, not both")
    opts = options if options is not None else OptimizeOptions(**kwargs)
    with guard_inputs(*(p for p in (input_path, opts.inputs, opts.config, opts.calibration) if p is not None)):
        return _optimize(input_path, output_path, opts)


def _optimize(input_path, output_path, o: OptimizeOptions) -> OptimizeReport:
    start = time.perf_counter()
    spec, max_output_error = o.spec, o.output_bound
    if o.config is not None:
        from tensorfold.passes.planned import PlannedPass

        chosen, method = PlannedPass(), "config"
    else:
        chosen, method = (None if o.method == "none" else get_pass(o.method)), o.method
    if output_path is not None:
        check_output(output_path)
    original = load_model(input_path)
    fit, held, label = _calibration_split(original, o.calibration, o.shapes, o.normalize, o.holdout, o.seed)
    classes = o.class_outputs or None
    # the bound search (and every int8 candidate) selects on the held-out share; the report verifies
    # on --inputs when given (then independent of every choice), else on that same held-out share
    selecting = held is not None and (max_output_error is not None or o.int8)
    search_reference = Reference(original, held.arrays, label, class_outputs=classes) if selecting else None
    if o.inputs is not None or (held is None and o.verify):
        feeds, label, input_shapes = feeds_for(original, o.shapes, o.inputs, o.seed)
    elif held is not None:
        feeds, input_shapes = held.arrays, call_shapes(original, held.arrays)
    else:
        feeds, label, input_shapes = None, None, resolve_shapes(original, o.shapes)
    reference = None
    if o.verify and feeds is not None:
        reference = (search_reference if search_reference is not None and o.inputs is None
                     else Reference(original, feeds, label, class_outputs=classes))
    model, norm_stats = normalize_model(original)
    if o.config is not None:
        chosen.choices = _config_plan(model, o.config)
    ctx = PassContext(spec=spec, include=o.include, exclude=o.exclude, force=o.force, progress=o.progress, seed=o.seed)
    if fit is not None and chosen is not None:
        ensure_node_names(model)   # the names the passes give, so statistics find their layers
        layers, _ = find_layers(model, ctx.include, ctx.exclude)
        ctx.stats = collect_input_grams(model, layers, fit, progress=o.progress)
        if o.sensitivity and (spec.ratio is not None or max_output_error is not None):
            from tensorfold.calibration.sensitivity import measure_sensitivity, sensitivity_weights

            probe = Reference(original, fit.take(np.arange(min(fit.n, SENSITIVITY_SAMPLES))).arrays, "probe")
            ctx.layer_weights = sensitivity_weights(measure_sensitivity(chosen, model, ctx, probe))
    before, input_stage = model_stats(original, input_shapes), _stage("input", original, None)
    deploying = o.deploy_objective is not None
    # from here on the normalized model stands for the input: a 2 GB model is held twice, not three
    # times (a run that compares candidates keeps the input: it is one of them)
    kept_input = original if deploying else None
    del original
    latency, budget_trials, verification, split_models = None, None, None, []
    if chosen is None:
        result = PassResult(model, False, notes=["--method none: no layer factorized"])
    elif max_output_error is not None:
        from tensorfold.calibration.budget_search import search_budget

        result, verification, budget_trials = search_budget(chosen, model, ctx, search_reference, max_output_error)
        if o.int8:
            split_models = split_models_for_int8(chosen, model, ctx, search_reference, max_output_error)
        if reference is not search_reference:
            verification = None
    elif o.hardware_aware:
        from tensorfold.onnxrt.batching import chunks
        from tensorfold.planning.hardware_aware import optimize_hardware_aware

        timing_feeds = next(iter(chunks(model, feeds))) if feeds is not None and o.inputs is not None else None
        result, latency = optimize_hardware_aware(chosen, model, ctx, input_shapes, o.provider, o.device, o.threads,
                                                  o.max_error, o.target_latency, o.speedup, o.seed, feeds=timing_feeds)
        warning = None if o.inputs is not None or held is not None else dynamic_warning(model, o.shapes)
        if warning:
            result.notes.append(warning)
    else:
        result = chosen(model, ctx)
    rewritten = result.model
    # the factors the passes cached (float64, as large as the result's weights) are done with
    del ctx
    ranks_desc = o.describe_ranks()
    _record_run(rewritten, method, ranks_desc, result)
    if o.verify and verification is None and reference is not None:
        verification = reference.verify(rewritten)
    stages = [input_stage]
    if chosen is not None:
        stages.append(_stage("factorized", rewritten, verification))
    final_verification, deploy, notes = verification, None, []
    if deploying:
        deploy = search_candidates(
            kept_input, model, result, verification if reference is search_reference else None, split_models,
            fit.arrays, held.arrays if held is not None else None, search_reference, max_output_error,
            DeploySettings(o.deploy_objective, o.int8, o.provider, o.threads, DEFAULT_OUTPUT_ERROR, o.progress))
        picked = deploy.chosen
        rewritten = picked.model
        final_verification = picked.verification
        result = factorization_of(picked, result, split_models)
        if picked.name == "input":
            final_verification = None
        elif reference is not None and reference is not search_reference:
            final_verification = reference.verify(rewritten)
        notes = deploy.notes
        if picked.int8 is not None:
            notes = notes + [f"int8: {picked.int8.format.name} ({picked.int8.format.why}); calibration "
                             f"{picked.int8.calibration or 'none (dynamic)'}; {picked.int8.quantized_nodes} node(s) "
                             f"quantized, {len(picked.int8.float_nodes)} left in float"] + picked.int8.notes
            if picked.int8.fusion is not None:
                notes.append(picked.int8.fusion.describe())
    del model
    report = OptimizeReport(
        input=str(input_path), output=str(output_path) if output_path else None, method=method,
        ranks=ranks_desc, input_shapes=input_shapes,
        before=before, after=model_stats(rewritten, input_shapes),
        layers=result.rewritten, skipped=result.skipped, verification=final_verification,
        normalization=norm_stats, seconds=0.0, notes=_fold_notes(norm_stats) + result.notes + notes,
        eligible_params=(result.eligible_params, result.eligible_params_after), latency=latency,
        stages=stages if (fit is not None and deploy is None) else [],
        budget_search=[t.as_dict() for t in budget_trials] if budget_trials is not None else None,
        deploy=deploy.as_dict() if deploy is not None else None,
    )
    if o.default_bound:
        report.notes.append(f"with --calibration and no --ratio/--energy/--rank the default is --max-output-error "
                            f"{DEFAULT_OUTPUT_ERROR:g}: the best model within that held-out error")
    if not result.rewritten and chosen is not None and (deploy is None or deploy.chosen.name == "input"):
        report.notes.append("no layer was rewritten; the output equals the "
                            + ("input" if deploy is not None else "normalized input"))
    _output_warnings(report, final_verification, o, max_output_error)
    if report.after.params > report.before.params:
        if not o.force:
            raise TensorfoldError(f"the rewritten model would hold {report.after.params:,} parameters, more than the "
                                  f"input's {report.before.params:,}: nothing written (--force writes it anyway)")
        report.notes.append(f"the written model holds more parameters than the input ({report.after.params:,} vs "
                            f"{report.before.params:,}): --force")
    for checked in (verification, final_verification):
        if checked is not None and checked.broken:
            raise VerificationFailed(f"the rewritten model outputs NaN/Inf where the input model does not: "
                                     f"{', '.join(checked.broken)}; nothing written")
    if output_path is not None:
        save_model(rewritten, output_path)
    report.seconds = time.perf_counter() - start
    return report


def _output_warnings(report: OptimizeReport, check, o: OptimizeOptions, bound: float | None) -> None:
    """A `warning:` whenever the written model's error is above OUTPUT_ERROR_WARNING or the bound."""
    if check is None:
        return
    worst = max(check.max_error, check.max_channel_error)
    what = f"output error {check.max_error:.3f}"
    if check.max_channel_error > max(2 * check.max_error, OUTPUT_ERROR_WARNING if check.max_error <= OUTPUT_ERROR_WARNING
                                     else 0.0):
        what += f" (worst output channel {check.max_channel_error:.3f})"
    if bound is not None and check.max_error > bound:
        report.warnings.append(f"{what} on {check.inputs} is above the bound {bound:g}")
    elif worst > OUTPUT_ERROR_WARNING:
        if o.calibration is None and o.config is None:
            report.warnings.append(f"{what} on {check.inputs} is above {OUTPUT_ERROR_WARNING:g}: rewrite with real "
                                   "samples (--calibration FILE) and a bound on what the user sees "
                                   "(--max-output-error E)")
        else:
            report.warnings.append(f"{what} on {check.inputs} is above {OUTPUT_ERROR_WARNING:g}")


def _calibration_split(original, calibration, shape_map, normalize, holdout, seed):
    """(samples to fit on, samples held out, a label for the latter); all None without calibration."""
    if calibration is None:
        return None, None, None
    norm = parse_normalize(normalize) if isinstance(normalize, str) or normalize is None else normalize
    samples = load_samples(calibration, original, shapes=shape_map, normalize=norm)
    fit, held = split_holdout(samples, holdout, seed)
    return fit, held, f"{held.n} held-out of {samples.n} samples of {samples.source} (fitted on the other {fit.n})"


def _stage(name: str, model: onnx.ModelProto, verification) -> dict:
    from tensorfold.graph.model import count_params

    row = {"stage": name, "params": count_params(model), "size_bytes": large.serialized_size(model)}
    if verification is not None:
        row["max_relative_error"] = verification.max_relative_error
        row["max_disagreement"] = verification.max_disagreement
    return row


def _config_plan(model: onnx.ModelProto, config) -> dict:
    from tensorfold.passes.layers import ensure_node_names, find_layers
    from tensorfold.search.config import read_config

    named = onnx.ModelProto()
    named.CopyFrom(model)
    ensure_node_names(named)
    layers, _ = find_layers(named)
    return read_config(config, {layer.name: layer for layer in layers})


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
            inputs: str | None = None, seed: int = 0) -> VerifyReport:
    """Run two models on the same inputs and compare their outputs (`tensorfold verify A B`)."""
    a, b = load_model(path_a), load_model(path_b)
    feeds, label, _ = feeds_for(a, parse_shapes(tuple(shapes)), inputs, seed)
    return VerifyReport(verify_models(a, b, feeds, label).as_dict())


def inspect(input_path: str | os.PathLike, *, shapes: tuple[str, ...] = (),
            calibration: str | os.PathLike | None = None, normalize: tuple | str | None = None,
            progress: bool = False) -> InspectReport:
    """What is in a model and, per weight-heavy node, which methods can rewrite it. With
    calibration samples also each layer's sensitivity: the layer's own output error and the
    model's output error when that layer alone keeps half its parameters (data-fitted Tucker-2/SVD)."""
    from tensorfold.passes import PASSES
    from tensorfold.passes.layers import ensure_node_names, find_layers

    original = load_model(input_path)
    shape_map = parse_shapes(tuple(shapes))
    input_shapes = resolve_shapes(original, shape_map)
    model, norm_stats = normalize_model(original)
    ensure_node_names(model)
    stats = model_stats(original, input_shapes)
    node_flops = model_stats(model, input_shapes).node_flops
    layers, skipped = find_layers(model)
    sens = _sensitivity(original, model, calibration, normalize, shape_map, progress) if calibration else {}
    readers: dict[str, list[str]] = {}
    for layer in layers:
        readers.setdefault(layer.node.input[1], []).append(layer.name)
    rows = []
    for layer in layers:
        methods = {}
        for name in METHODS:
            reason = PASSES[name]().supports(layer)
            methods[name] = "yes" if reason is None else reason
        rows.append({"node": layer.name, "op": layer.node.op_type, "weight_shape": list(layer.weight.shape),
                     "groups": layer.groups, "params": layer.params, "flops": node_flops.get(layer.name),
                     "methods": methods, "weight": layer.node.input[1],
                     "shared_with": [n for n in readers[layer.node.input[1]] if n != layer.name]})
        if layer.name in sens:
            rows[-1]["sensitivity"] = sens[layer.name].as_dict()
    return InspectReport({
        "input": str(input_path), "opset": max((i.version for i in original.opset_import
                                               if i.domain in ("", "ai.onnx")), default=None),
        "producer": f"{original.producer_name} {original.producer_version}".strip(),
        "inputs": input_shapes, "outputs": [o.name for o in original.graph.output],
        "params": stats.params, "flops": stats.flops, "size_bytes": stats.size_bytes,
        "ops": dict(sorted(stats.ops.items())), "normalization": norm_stats,
        "layers": rows, "skipped": [s.as_dict() for s in skipped],
        # a weight read by several layers counts once
        "factorizable_params": sum({r["weight"]: r["params"] for r in rows}.values()),
        "calibration": str(calibration) if calibration else None,
        # FLOPs at a defaulted dynamic dim say little: a 488x488 table model read at 64x64 shows 61M, not 3.6G
        "warnings": [w.replace("timed at", "FLOPs counted at").replace(" or real inputs with --inputs", "")
                     for w in [dynamic_warning(original, shape_map)] if w],
    })


def _sensitivity(original, model, calibration, normalize, shape_map, progress) -> dict:
    from tensorfold.calibration.sensitivity import measure_sensitivity

    norm = parse_normalize(normalize) if isinstance(normalize, str) or normalize is None else normalize
    samples = load_samples(calibration, original, shapes=shape_map, normalize=norm)
    chosen = get_pass("tucker")
    layers, _ = find_layers(model)
    ctx = PassContext(progress=progress, stats=collect_input_grams(model, layers, samples, progress=progress))
    probe = Reference(original, samples.take(np.arange(min(samples.n, SENSITIVITY_SAMPLES))).arrays, "probe")
    return measure_sensitivity(chosen, model, ctx, probe)


def profile(path: str | os.PathLike, *, provider: str = "cpu", device: str | None = None,
            batches: tuple[int, ...] = (1,), runs: int = 30, warmup: int = 5, threads: int = 0,
            optimization: str = "all", compare_with: str | os.PathLike | None = None, top: int = 10,
            shapes: tuple[str, ...] = (), seed: int = 0, inputs: str | os.PathLike | None = None) -> ProfileReport:
    """Latency (measured on `provider`, or predicted for `device`), FLOPs, params, size, memory,
    per-op and per-node tables; with `compare_with`, both models interleaved with ratios.

    The shapes timed: the first sample of `inputs` (an .npz; needed for integer inputs), else
    `shapes`, else the model's static dims with dynamic ones at DEFAULT_DYNAMIC_DIM, which the
    report warns about (a detector's speed at 64x64 says nothing about its speed at 640x640)."""
    from tensorfold.onnxrt.batching import fixed_batch
    from tensorfold.runtime.devices import describe
    from tensorfold.runtime.latency import available_memory_bytes, by_op_type, node_profile, peak_rss_mb, with_batch
    from tensorfold.runtime.latency_model import latency_model
    from tensorfold.runtime.memory import predict_memory

    model = load_model(path)
    other = load_model(compare_with) if compare_with else None
    shape_map = parse_shapes(tuple(shapes))
    warnings = []
    if inputs is not None:
        from tensorfold.onnxrt.batching import chunks

        feeds = next(iter(chunks(model, load_inputs(inputs, model), max_batch=1)))   # --batch repeats it
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
            warnings.append(f"the model's batch is fixed at {fixed}: timed at batch {fixed}, not --batch "
                            f"{','.join(str(b) for b in batches)}")
        batches = (fixed,)

    def batched(batch: int) -> dict:
        """The user's call is timed as given; --batch repeats the inputs along their first axis."""
        if batch == fixed or (batch == 1 and inputs is not None):
            return feeds
        return with_batch(feeds, batch)

    stats = model_stats(model, base_shapes)
    report = ProfileReport({"model": str(path), "params": stats.params, "flops": stats.flops, "size_bytes": stats.size_bytes,
                    "provider": None, "device": None, "batches": {}, "input_shapes": base_shapes,
                    "shapes_from": shapes_from, "warnings": warnings})
    latency = latency_model(provider, threads, device, runs=runs, warmup=warmup,
                            optimization=optimization)
    if latency.predicted:
        report["device"] = describe(latency.device)
    else:
        _check_memory(model, base_shapes, max(batches), available_memory_bytes())
        report["provider"] = provider
    capacity = latency.device.memory_bytes if latency.predicted else None
    for batch in batches:
        bfeeds = batched(batch)
        bshapes = {k: list(v.shape) for k, v in bfeeds.items()}
        row = {"flops": model_stats(model, bshapes).flops}
        row.update(latency.stats(model, bfeeds, other))
        # what one call holds at once: weights, live activations, a conv's im2col (runtime/memory.py)
        memory = predict_memory(model, bshapes)
        row["predicted_memory"] = memory.as_dict()
        if capacity and memory.total_bytes > capacity:
            warnings.append(f"batch {batch} needs about {memory.total_bytes / 2**30:.1f} GiB, more than the "
                            f"{capacity / 2**30:.0f} GiB of {latency.device.name}")
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
    if not latency.predicted:
        times = node_profile(model, batched(batches[0]), provider, threads, runs=min(runs, 10))
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
    need = 2 * large.serialized_size(model) + activations
    if need > available:
        raise TensorfoldError(f"profiling needs about {need / 2**30:.1f} GiB at batch {batch}, "
                              f"only {available / 2**30:.1f} GiB is available; use a smaller --batch")


def recover(student_path, output_path, **kwargs) -> RecoverReport:
    """Fine-tune a factorized model with distillation; see tensorfold.recovery.run.recover."""
    from tensorfold.recovery.run import recover as _recover

    return RecoverReport(_recover(student_path, output_path, **kwargs))


def search_ranks(model_path, **kwargs) -> RankSearchReport:
    """The Pareto front of per-layer methods and ranks; see tensorfold.search.ranks.RankSearchOptions."""
    from tensorfold.search.ranks import search_ranks as _search_ranks

    return RankSearchReport(_search_ranks(model_path, **kwargs))


def search_nas(**kwargs) -> NasReport:
    """A cell architecture searched, trained, exported and measured; see tensorfold.search.nas.run.NasOptions."""
    from tensorfold.search.nas.run import search_nas as _search_nas

    return NasReport(_search_nas(**kwargs))


def compress(module, example_input, output_path: str | os.PathLike, *, method: str = "auto",
             ratio: float | None = None, data: str | None = None, recover_config=None, **optimize_kwargs):
    """torch module -> ONNX -> factorized -> recovered, in one call. Returns (optimize report,
    recover report or None). The exported original and the factorized model are written beside
    output_path as `<name>.original.onnx` and `<name>.factorized.onnx`. Recovery runs only on the
    `data` the caller names (a folder, an .npz, `fashion-mnist`, ...): no data, no training."""
    import torch

    from tensorfold.export import export_onnx

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
