"""The stages of `optimize`, each a function with typed input and output.

inputs   = load(path, options)              the model, the samples split, the references
prepared = prepare(inputs, options)         normalized model, the pass, its context and statistics
built    = build(inputs, prepared, options) the factorization (bound search / hardware-aware / as asked)
refuse_larger(...)                          right after the build: more parameters than the input
verify(...)                                 the factorized model against the reference
deployed = deploy(...)                      --int8/--objective: candidates measured, one picked
report   = make_report(...)                 what the user reads
save(...)                                   atomically, only when every stage succeeded
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import onnx

from tensorfold import __version__
from tensorfold.calibration.budget_search import Trial, answer_recovered
from tensorfold.calibration.data import Samples, load_samples, parse_normalize, split_holdout
from tensorfold.calibration.deploy import (
    DeployChoice,
    DeploySettings,
    Split,
    factorization_of,
    search_candidates,
    split_models_for_int8,
)
from tensorfold.calibration.stats import collect_input_grams
from tensorfold.errors import TensorfoldError, Terminated, VerificationFailed
from tensorfold.graph.io import first_line, load_model, save_model
from tensorfold.graph.model import count_params
from tensorfold.graph.normalize import normalize as normalize_model
from tensorfold.graph.stats import ModelStats, model_stats
from tensorfold.graph.verify import Reference, Verification
from tensorfold.log import warn
from tensorfold.onnxrt import large
from tensorfold.onnxrt.batching import call_shapes, feeds_for
from tensorfold.onnxrt.inputs import dynamic_warning, resolve_shapes
from tensorfold.optimize.options import DEFAULT_OUTPUT_ERROR, OUTPUT_ERROR_WARNING, OptimizeOptions
from tensorfold.outputs import check_output
from tensorfold.passes import PassContext, PassResult, get_pass
from tensorfold.passes.factorize import FactorizePass
from tensorfold.passes.layers import ensure_node_names, find_layers
from tensorfold.quantize.static import quantized_nodes
from tensorfold.report import OptimizeReport

if TYPE_CHECKING:
    from tensorfold.optimize.recovery import Recoverer


@dataclass
class Inputs:
    """The loaded model and the samples every later stage checks against."""

    path: str | os.PathLike[str]
    original: onnx.ModelProto | None  # released after `prepare` unless it is a deploy candidate
    fit: Samples | None  # calibration samples the factors and int8 ranges are fitted on
    held: Samples | None  # the held-out share, never fitted
    search_reference: Reference | None  # the held-out share: every choice (bound, int8) is made on it
    reference: Reference | None  # what the report verifies on (--inputs when given)
    feeds: dict[str, np.ndarray] | None
    input_shapes: dict[str, list[int]]


@dataclass
class Prepared:
    """The normalized model, the pass that rewrites it and the context it runs with."""

    model: onnx.ModelProto | None  # released after `build` unless int8 quantizes it
    norm_stats: dict[str, int]
    chosen: FactorizePass | None  # None: --method none
    method: str
    ctx: PassContext | None  # released after `build`: its cached factors are as large as the weights
    before: ModelStats
    input_stage: dict[str, object]
    recoverer: Recoverer | None = None  # --recover: fine-tunes each candidate before it is judged


@dataclass
class Built:
    """The factorization the options asked for."""

    result: PassResult
    verification: Verification | None = None  # on the search reference, where a bound search made one
    trials: list[Trial] | None = None  # --max-output-error: every ratio tried
    # --hardware-aware: target, input ms, speedup (every other rewrite: _time_against_input)
    latency: dict[str, object] | None = None
    split_models: list[Split] = field(default_factory=list)  # for factorized + int8
    recovery: dict[str, Any] | None = None  # --recover: how, and (without a bound) before/after

    @property
    def recovered(self) -> bool:
        """Whether the factorization written is a recovered one: with --recover at a ratio always;
        with a bound where the search's answer is a recovered candidate (which beat the unrecovered
        search's answer: recovered candidates are tried only above it)."""
        if self.recovery is None:
            return False
        return self.trials is None or answer_recovered(self.trials)


@dataclass
class Deployed:
    """What --int8/--objective picked, with the factorization behind it."""

    model: onnx.ModelProto
    verification: Verification | None
    result: PassResult
    choice: DeployChoice
    notes: list[str]


def run(
    input_path: str | os.PathLike[str], output_path: str | os.PathLike[str] | None, o: OptimizeOptions
) -> OptimizeReport:
    """Every stage in order; nothing is written unless all of them succeeded."""
    start = time.perf_counter()
    if output_path is not None:
        check_output(output_path)
    checkpoints = _checkpoint_path(output_path, o)
    if os.environ.get("WORLD_SIZE", "1") in ("", "1"):  # one process (torch need not be installed)
        return _search(input_path, output_path, o, checkpoints, start)
    from tensorfold.recovery.distributed import start as start_processes
    from tensorfold.recovery.distributed import stop as stop_processes
    from tensorfold.recovery.distributed import world

    # torchrun: rank 0 searches, checks and writes; every rank trains each candidate with it
    w = world()
    if o.recover is None:
        raise TensorfoldError(
            "under torchrun, optimize trains its candidates with --recover: add it, or run without torchrun"
        )
    o = replace(o, torch_device=start_processes(w, o.torch_device), progress=o.progress and w.main)
    try:
        if not w.main:
            return _serve(input_path, o, start)
        warn(
            f"optimize --recover: {w.size} processes train each candidate (DistributedDataParallel over "
            f"{'nccl' if o.torch_device.startswith('cuda') else 'gloo'}); rank 0 searches and writes"
        )
        return _search(input_path, output_path, o, checkpoints, start)
    finally:
        stop_processes(w)


def _serve(input_path: str | os.PathLike[str], o: OptimizeOptions, start: float) -> OptimizeReport:
    """A torchrun worker: the same inputs as rank 0, then each candidate it sends, trained with it."""
    inputs = load(input_path, o)
    recoverer = _recoverer(inputs, o, None)
    assert recoverer is not None and inputs.original is not None
    recoverer.serve()
    stats = model_stats(inputs.original, inputs.input_shapes)
    note = f"rank {recoverer.w.rank} of {recoverer.w.size}: trained rank 0's candidates; rank 0 searched, wrote and reports"
    return OptimizeReport(
        str(input_path), None, o.method, "", inputs.input_shapes, stats, stats, [], [], None, {},
        time.perf_counter() - start, notes=[note],
    )  # fmt: skip


def _search(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str] | None,
    o: OptimizeOptions,
    checkpoints: Path | None,
    start: float,
) -> OptimizeReport:
    inputs = load(input_path, o)
    prepared = prepare(inputs, o, checkpoints)
    try:
        report = _run_prepared(inputs, prepared, output_path, o)
    except (KeyboardInterrupt, Terminated) as exc:
        if prepared.recoverer is not None and prepared.recoverer.checkpoints is not None:
            if prepared.recoverer.checkpoints.abandoned():  # kept for --resume once a candidate is in it
                where = prepared.recoverer.checkpoints.path
                raise type(exc)(
                    f"{where} keeps the recovered candidates: the same command with --resume continues"
                ) from None
        raise
    except BaseException:
        if prepared.recoverer is not None and prepared.recoverer.checkpoints is not None:
            prepared.recoverer.checkpoints.abandoned()
        raise
    finally:
        if prepared.recoverer is not None:
            prepared.recoverer.release()
    if prepared.recoverer is not None and prepared.recoverer.checkpoints is not None:
        prepared.recoverer.checkpoints.finished()
    report.seconds = time.perf_counter() - start
    return report


def _checkpoint_path(output_path: str | os.PathLike[str] | None, o: OptimizeOptions) -> Path | None:
    """Where --recover keeps its recovered candidates: --checkpoints, else OUTPUT.ckpt; without either
    (the API with no output) a temporary folder per candidate, and nothing to resume."""
    if o.recover is None:
        return None
    if o.checkpoints is not None:
        return Path(o.checkpoints)
    if output_path is not None:
        return Path(str(output_path) + ".ckpt")
    if o.resume:
        raise TensorfoldError("--resume needs the search's folder: give OUTPUT or --checkpoints")
    return None


def _run_prepared(
    inputs: Inputs, prepared: Prepared, output_path: str | os.PathLike[str] | None, o: OptimizeOptions
) -> OptimizeReport:
    deploying = o.deploy_objective is not None
    if not deploying and o.recover is None:  # recovery distills from it
        inputs.original = None  # the normalized model stands for it: a 2 GB model is held twice, not three times
    built = build(inputs, prepared, o)
    prepared.ctx = None
    if not deploying:  # deploying: int8 quantizes it, and the exact rewrite is a candidate
        prepared.model = None
    refuse_larger(built.result.model, prepared.before, o)
    ranks = o.describe_ranks()
    record_run(built.result.model, prepared.method, ranks, built.result)
    verification = verify(inputs, built, o)
    stages = [prepared.input_stage]
    if prepared.chosen is not None:
        stages.append(_stage("recovered" if built.recovered else "factorized", built.result.model, verification))
    deployed = deploy(inputs, prepared, built, verification, o) if deploying else None
    report = make_report(inputs, prepared, built, verification, deployed, stages, ranks, output_path, o)
    if o.verify and deployed is None and built.latency is None and built.result.rewritten:
        _time_against_input(report, inputs, built.result.model, o)
    for checked in (verification, report.verification):
        if checked is not None and checked.broken:
            raise VerificationFailed(
                f"the rewritten model outputs NaN/Inf where the input model does not: "
                f"{', '.join(checked.broken)}; nothing written"
            )
    if output_path is not None:
        save_model(deployed.model if deployed is not None else built.result.model, output_path)
    return report


def load(input_path: str | os.PathLike[str], o: OptimizeOptions) -> Inputs:
    """Load the model, split the calibration samples, and compute the references once."""
    original = load_model(input_path)
    if o.int8 and (already := quantized_nodes(original)):
        warn(
            f"--int8: the model is quantized already ({already} quantization nodes); "
            "onnxruntime cannot quantize it again: the candidates are the float ones"
        )
    fit, held, label = _calibration_split(original, o)
    classes = o.class_map
    # the bound search (and every int8 candidate) selects on the held-out share; the report verifies
    # on --inputs when given (then independent of every choice), else on that same held-out share
    selecting = held is not None and (o.output_bound is not None or o.int8)
    search_reference = (
        Reference(original, held.arrays, label or "held-out", class_outputs=classes)
        if selecting and held is not None
        else None
    )
    feeds: dict[str, np.ndarray] | None
    if o.inputs is not None or (held is None and o.verify):
        feeds, label, input_shapes = feeds_for(original, o.shape_map, o.inputs, o.seed)
    elif held is not None:
        feeds, input_shapes = held.arrays, call_shapes(original, held.arrays)
    else:
        feeds, label, input_shapes = None, None, resolve_shapes(original, o.shape_map)
    reference = None
    if o.verify and feeds is not None:
        reference = (
            search_reference
            if search_reference is not None and o.inputs is None
            else Reference(original, feeds, label or "inputs", class_outputs=classes)
        )
    return Inputs(input_path, original, fit, held, search_reference, reference, feeds, input_shapes)


def _recoverer(inputs: Inputs, o: OptimizeOptions, checkpoints: Path | None) -> Recoverer | None:
    """--recover's trainer, built before any work (it checks torch can run the model)."""
    if o.recover is None or inputs.fit is None:
        return None
    from tensorfold.optimize.recovery import Recoverer

    assert inputs.original is not None  # released only after the build

    return Recoverer(
        inputs.original,
        inputs.fit,
        o.recover,
        extra=None if o.recover_data is None else str(o.recover_data),
        normalize=parse_normalize(o.normalize) if isinstance(o.normalize, str) else o.normalize,
        shapes=o.shape_map,
        lr=o.lr,
        batch_size=o.batch_size,
        recompute_segments=o.recompute_segments,
        train=o.train,
        seed=o.seed,
        threads=o.threads,
        device=o.torch_device,
        progress=o.progress,
        checkpoints=checkpoints,
        resume=o.resume,
    )


def prepare(inputs: Inputs, o: OptimizeOptions, checkpoints: Path | None = None) -> Prepared:
    """Normalize (exact folds), pick the pass, and fit what it needs to the calibration samples:
    each layer's input statistics and, for a global budget, each layer's sensitivity."""
    if o.config is not None:
        from tensorfold.passes.planned import PlannedPass

        planned = PlannedPass()
        chosen: FactorizePass | None = planned
        method = "config"
    else:
        chosen = None if o.method == "none" else cast(FactorizePass, get_pass(o.method))
        method = o.method
    assert inputs.original is not None
    recoverer = _recoverer(inputs, o, checkpoints)
    model, norm_stats = normalize_model(inputs.original)
    if o.config is not None:
        planned.choices = _config_plan(model, o.config)
    ctx = PassContext(
        spec=o.spec, include=o.include, exclude=o.exclude, force=o.force, progress=o.progress, seed=o.seed
    )
    if inputs.fit is not None and chosen is not None:
        ensure_node_names(model)  # the names the passes give, so statistics find their layers
        layers, _ = find_layers(model, ctx.include, ctx.exclude)
        ctx.stats = collect_input_grams(model, layers, inputs.fit, progress=o.progress)
        if o.sensitivity and (o.spec.ratio is not None or o.output_bound is not None):
            from tensorfold.calibration.sensitivity import measure_sensitivity, probe_reference, sensitivity_weights

            probe = probe_reference(inputs.original, inputs.fit)
            ctx.layer_weights = sensitivity_weights(measure_sensitivity(chosen, model, ctx, probe))
    before = model_stats(inputs.original, inputs.input_shapes)
    return Prepared(model, norm_stats, chosen, method, ctx, before, _stage("input", inputs.original, None), recoverer)


def build(inputs: Inputs, prepared: Prepared, o: OptimizeOptions) -> Built:
    """The factorization: none, the bound search, the hardware-aware plan, or the ranks as asked."""
    chosen, model, ctx = prepared.chosen, prepared.model, prepared.ctx
    assert model is not None and ctx is not None
    bound = o.output_bound
    if chosen is None:
        return Built(PassResult(model, False, notes=["--method none: no layer factorized"]))
    if bound is not None:
        from tensorfold.calibration.budget_search import search_budget

        assert inputs.search_reference is not None  # a bound needs --calibration (options check it)
        refine = (lambda m: recoverer(m).model) if (recoverer := prepared.recoverer) is not None else None
        warm = None
        if refine is not None and o.warm_start:
            from tensorfold.optimize.warm_start import dense_equivalent

            warm = lambda recovered: dense_equivalent(recovered, model)  # noqa: E731
        result, verification, trials = search_budget(
            chosen, model, ctx, inputs.search_reference, bound, refine=refine, warm=warm
        )
        splits = split_models_for_int8(chosen, model, ctx, inputs.search_reference, bound, refine) if o.int8 else []
        recovery = recoverer.describe if recoverer is not None else None
        return Built(result, verification, trials, split_models=splits, recovery=recovery)
    if o.hardware_aware:
        from tensorfold.onnxrt.batching import one_call
        from tensorfold.planning.hardware_aware import optimize_hardware_aware

        feeds = inputs.feeds
        # one call of the batch the report labels: a chunk of the usual size timed a batch of 8 as
        # "batch 1" (a ViT: 505 ms against profile's 78)
        timing_feeds = one_call(model, feeds) if feeds is not None and o.inputs is not None else None
        result, latency = optimize_hardware_aware(
            chosen,
            model,
            ctx,
            inputs.input_shapes,
            o.provider,
            o.device,
            o.threads,
            o.max_error,
            o.target_latency,
            o.speedup,
            o.seed,
            feeds=timing_feeds,
        )
        warning = None if o.inputs is not None or inputs.held is not None else dynamic_warning(model, o.shape_map)
        if warning:
            result.notes.append(warning)
        return Built(result, latency=latency)
    result = chosen(model, ctx)
    if prepared.recoverer is None or not result.rewritten:
        return Built(result)
    return _recovered(inputs, prepared.recoverer, result)


def _recovered(inputs: Inputs, recoverer: Recoverer, result: PassResult) -> Built:
    """The factorized model fine-tuned (the ranks as asked, no bound), with its held-out error
    before and after."""
    judge = inputs.search_reference or inputs.reference
    before = judge.verify(result.model).max_relative_error if judge is not None else None
    recovered = recoverer(result.model)
    verification = judge.verify(recovered.model) if judge is not None else None
    result = replace(result, model=recovered.model)
    info = {**recoverer.describe, **recovered.as_dict(), "before": None if before is None else float(before)}
    if verification is not None:
        info["after"] = float(verification.max_relative_error)
    return Built(result, verification if judge is inputs.reference else None, recovery=info)


def refuse_larger(model: onnx.ModelProto, before: ModelStats, o: OptimizeOptions) -> None:
    """Known right after the build, so no verification or int8 is spent on it."""
    after = count_params(model)
    if after > before.params and not o.force:
        raise TensorfoldError(
            f"the rewritten model would hold {after:,} parameters, more than the "
            f"input's {before.params:,}: nothing written (--force writes it anyway)"
        )


def verify(inputs: Inputs, built: Built, o: OptimizeOptions) -> Verification | None:
    """The factorized model against the report's reference (the bound search's own check where it
    ran on that same reference)."""
    if built.verification is not None and inputs.reference is inputs.search_reference:
        return built.verification
    if o.verify and inputs.reference is not None:
        return inputs.reference.verify(built.result.model)
    return None


def deploy(
    inputs: Inputs, prepared: Prepared, built: Built, verification: Verification | None, o: OptimizeOptions
) -> Deployed:
    """--int8 / --objective: the candidates, built and verified on the held-out share, and the one
    the objective picks (calibration/deploy.py)."""
    assert o.deploy_objective is not None and inputs.original is not None
    if inputs.fit is None:
        raise TensorfoldError(
            "--int8 and --objective need --calibration: every candidate is checked on held-out samples"
        )
    choice = search_candidates(
        inputs.original,
        prepared.model,
        built.result,
        verification if inputs.reference is inputs.search_reference else None,
        built.split_models,
        inputs.fit.arrays,
        inputs.held.arrays if inputs.held is not None else None,
        inputs.search_reference,
        o.output_bound,
        DeploySettings(o.deploy_objective, o.int8, o.provider, o.threads, DEFAULT_OUTPUT_ERROR, o.progress),
        recovered=built.recovered,
        lossless=any(prepared.norm_stats.values()),
    )
    picked = choice.chosen
    checked = picked.verification
    if picked.name == "input":
        checked = None
    elif inputs.reference is not None and inputs.reference is not inputs.search_reference:
        checked = inputs.reference.verify(picked.model)
    notes = list(choice.notes)
    if picked.int8 is not None:
        q = picked.int8
        notes.append(
            f"int8: {q.format.name} ({q.format.why}); calibration {q.calibration or 'none (dynamic)'}; "
            f"{q.quantized_nodes} node(s) quantized, {len(q.float_nodes)} left in float"
        )
        notes.extend(q.notes)
        if q.fusion is not None:
            notes.append(q.fusion.describe())
    return Deployed(picked.model, checked, factorization_of(picked, built.result, built.split_models), choice, notes)


def make_report(
    inputs: Inputs,
    prepared: Prepared,
    built: Built,
    verification: Verification | None,
    deployed: Deployed | None,
    stages: list[dict[str, object]],
    ranks: str,
    output_path: str | os.PathLike[str] | None,
    o: OptimizeOptions,
) -> OptimizeReport:
    result = deployed.result if deployed is not None else built.result
    final = deployed.model if deployed is not None else built.result.model
    kept_input = deployed is not None and deployed.choice.chosen.name == "input"
    checked = deployed.verification if deployed is not None else verification
    report = OptimizeReport(
        input=str(inputs.path),
        output=str(output_path) if output_path else None,
        method=prepared.method,
        ranks=ranks,
        input_shapes=inputs.input_shapes,
        before=prepared.before,
        after=model_stats(final, inputs.input_shapes),
        layers=result.rewritten,
        skipped=result.skipped,
        verification=checked,
        normalization=prepared.norm_stats,
        seconds=0.0,
        # the input written back holds none of normalization's folds: no note says it does
        notes=(_fold_notes(prepared.norm_stats) if not kept_input else [])
        + result.notes
        + (deployed.notes if deployed is not None else []),
        eligible_params=(result.eligible_params, result.eligible_params_after),
        latency=built.latency,
        stages=stages if (inputs.fit is not None and deployed is None) else [],
        budget_search=[t.as_dict() for t in built.trials] if built.trials is not None else None,
        deploy=deployed.choice.as_dict() if deployed is not None else None,
        recovery=built.recovery,
    )
    if o.default_bound:
        report.notes.append(
            f"with --calibration and no --ratio/--energy/--rank the default is --max-output-error "
            f"{DEFAULT_OUTPUT_ERROR:g}: the best model within that held-out error"
        )
    if not result.rewritten and prepared.chosen is not None and (deployed is None or kept_input):
        report.notes.append(
            "no layer was rewritten; the output equals the " + ("input" if deployed is not None else "normalized input")
        )
    _output_warnings(report, checked, o, o.output_bound)
    if inputs.held is not None and o.inputs is None and report.layers and inputs.held.n < FEW_HELD_OUT:
        # one or two held-out samples judge a lossy model by chance (a QA run on a compact
        # classifier: 100% agreement on its one held-out image, 50% on other images)
        report.warnings.append(
            f"the written model was judged on {inputs.held.n} held-out sample(s) only, which says little "
            f"about other inputs: give --calibration at least {4 * FEW_HELD_OUT} samples (a quarter is held out)"
        )
    # without --force only int8 can add parameters (its scales, smoothing divisors) to a smaller file
    if report.after.params > report.before.params and o.force:
        report.notes.append(
            f"the written model holds more parameters than the input ({report.after.params:,} vs "
            f"{report.before.params:,}): --force"
        )
    return report


# fewer held-out samples than this judge a lossy model by chance: a warning says so
FEW_HELD_OUT = 8


# a model above this many bytes is not timed after the rewrite: reading it again and timing both
# would cost as much as a hardware-aware run, which is there for it
TIMED_BYTES = 512 * 2**20


def _time_against_input(report: OptimizeReport, inputs: Inputs, written: onnx.ModelProto, o: OptimizeOptions) -> None:
    """One call of the written model against one of the input file, interleaved on --provider: the
    report's latency row, and a warning where the rewrite made it slower (the demo CNN at the
    default energy: 1.15x fewer FLOPs at 0.37x the speed; each factor chain adds calls that a small
    layer's work does not repay). --device (a predicted target) and --hardware-aware (which times
    every choice) are left to their own paths, --no-verify runs neither model (benchmarks that time
    optimize itself pass it); a model that cannot be timed is named in a note, not a failure. The
    input is read again from its file: without --recover or --int8 the run no longer holds it."""
    from tensorfold.onnxrt.batching import one_call
    from tensorfold.runtime.latency import compare
    from tensorfold.runtime.latency_model import SPEED_MARGIN

    if o.device is not None or inputs.feeds is None or report.before.size_bytes > TIMED_BYTES:
        return
    try:
        original = load_model(inputs.path)
        feeds = one_call(original, inputs.feeds)
        timing = compare(written, original, feeds, o.provider, o.threads, warmup=3, runs=20)
    except Exception as exc:  # noqa: BLE001 - the rewrite is verified; its speed is a reading
        report.notes.append(f"the written model was not timed against the input: {first_line(exc)}")
        return
    report.latency = {
        "target": f"provider {o.provider} (measured)",
        "input_ms": round(timing.b.median, 4),
        "speedup": round(timing.speedup, 4),
    }
    if o.inputs is None and inputs.held is None:  # random inputs: a dynamic dim may have defaulted
        from tensorfold.onnxrt.inputs import dynamic_warning

        if (defaulted := dynamic_warning(original, o.shape_map)) is not None:
            report.notes.append(defaulted)
    if timing.speedup < 1 - SPEED_MARGIN:
        report.warnings.append(
            f"the written model is slower than the input on {o.provider}: {timing.speedup:.2f}x its speed "
            f"(one call each, timed in turn): --hardware-aware rewrites only the layers whose chains are "
            f"faster there"
        )


def _output_warnings(
    report: OptimizeReport, check: Verification | None, o: OptimizeOptions, bound: float | None
) -> None:
    """A `warning:` whenever the written model's error is above the bound the user gave, or, without
    one, above OUTPUT_ERROR_WARNING (a user who asked for 0.25 and got 0.235 was warned of 0.05),
    and a note when the bound lies inside that error's bootstrap interval (within or over it is then
    a matter of which samples were held out)."""
    if check is None:
        return
    if bound is not None and (noise := check.noise_note(bound)) is not None:
        report.notes.append(noise)
    what = f"output error {check.max_error:.3f}"
    if bound is not None and check.max_error > bound:
        report.warnings.append(f"{what} on {check.inputs} is above the bound {bound:g}")
    elif o.calibration is None:  # a --config replay too: the search's own error was on its inputs
        # without real samples the worst channel of a map counts too: one L2 can hide a class-score channel
        worst = max(check.max_error, check.max_channel_error)
        if check.max_channel_error > 2 * check.max_error:
            what += f" (worst output channel {check.max_channel_error:.3f})"
        if worst > OUTPUT_ERROR_WARNING:
            report.warnings.append(
                f"{what} on {check.inputs} is above {OUTPUT_ERROR_WARNING:g}: rewrite with real "
                "samples (--calibration FILE) and a bound on what the user sees "
                "(--max-output-error E)"
            )
        elif o.inputs is None and report.layers:
            # random inputs excite directions real ones do not: PP-OCR cls at --ratio 2 measured
            # 0.028 on them and 0.76 (48% argmax agreement) on 48 real text lines (tools/bench_random_inputs.py)
            report.warnings.append(
                f"{what} was measured on {check.inputs} only, which says little about real inputs: "
                "check with real samples (--inputs FILE, or --calibration FILE to fit and bound on them)"
            )
    elif bound is None and check.max_error > OUTPUT_ERROR_WARNING:  # a bound the user gave is theirs
        report.warnings.append(f"{what} on {check.inputs} is above {OUTPUT_ERROR_WARNING:g}")


def _calibration_split(
    original: onnx.ModelProto, o: OptimizeOptions
) -> tuple[Samples | None, Samples | None, str | None]:
    """(samples to fit on, samples held out, a label for the latter); all None without calibration."""
    if o.calibration is None:
        return None, None, None
    norm = parse_normalize(o.normalize) if isinstance(o.normalize, str) or o.normalize is None else o.normalize
    samples = load_samples(o.calibration, original, shapes=o.shape_map, normalize=norm)
    fit, held = split_holdout(samples, o.holdout, o.seed)
    return fit, held, f"{held.n} held-out of {samples.n} samples of {samples.source} (fitted on the other {fit.n})"


def _stage(name: str, model: onnx.ModelProto, verification: Verification | None) -> dict[str, object]:
    row: dict[str, object] = {"stage": name, "params": count_params(model), "size_bytes": large.serialized_size(model)}
    if verification is not None:
        row["max_relative_error"] = verification.max_relative_error
        row["max_disagreement"] = verification.max_disagreement if verification.counts_disagreement else None
    return row


def _config_plan(model: onnx.ModelProto, config: str | os.PathLike[str]) -> dict[str, Any]:
    from tensorfold.search.config import read_config

    named = onnx.ModelProto()
    named.CopyFrom(model)
    ensure_node_names(named)
    layers, _ = find_layers(named)
    return read_config(config, {layer.name: layer for layer in layers})


def _fold_notes(norm_stats: dict[str, int]) -> list[str]:
    """What normalization changed beyond bookkeeping: exact folds the user should know about."""
    parts = [
        f"{norm_stats[key]} {label}"
        for key, label in (
            ("batchnorms_folded", "BatchNorm(s) folded into convs"),
            ("affines_folded", "affine op chain(s) folded into convs"),
            ("hard_swish_rewritten", "hard-swish(es) written as x * HardSigmoid(x)"),
        )
        if norm_stats.get(key)
    ]
    return [f"normalize: {'; '.join(parts)} (exact, verified with the rest)"] if parts else []


def record_run(model: onnx.ModelProto, method: str, ranks: str, result: PassResult) -> None:
    """Provenance in metadata_props, so the file says what was done to it (Netron shows these)."""
    run_info = {
        "version": __version__,
        "method": method,
        "ranks": ranks,
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
    entry.key, entry.value = key, json.dumps(run_info)
