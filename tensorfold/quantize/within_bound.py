"""int8 that stays within a bound on the held-out samples, in the format that is fast on the provider.

For one float model: prepare and calibrate it (quantize/static.py), choose the calibration method
by the fully quantized model's held-out error, then return to float the units of nodes that cost the
most output error until the bound holds (quantize/mixed.py), and check what onnxruntime fused
(quantize/fusion.py). A model whose weights sit mostly in MatMul/Gemm/LSTM also gets a dynamic
quantization candidate; which one is written is the caller's choice by measured latency or size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from tensorfold.errors import TensorfoldError
from tensorfold.graph.verify import Reference, Verification, class_axes
from tensorfold.progress import bar as progress_bar
from tensorfold.quantize.formats import Int8Format
from tensorfold.quantize.fragile import fragile_nodes
from tensorfold.quantize.fusion import FusionReport, fused_kernels
from tensorfold.quantize.mixed import Build, Unit, keep_within, score_units
from tensorfold.quantize.static import CALIBRATION_METHODS, DYNAMIC_COMPUTE_OPS, DYNAMIC_OPS, StaticQuantizer
from tensorfold.runtime.latency_model import SPEED_MARGIN

# dynamic quantization is tried where at least this share of the weights sits in DYNAMIC_OPS
DYNAMIC_WEIGHT_SHARE = 0.5


@dataclass
class Int8Result:
    """One int8 candidate: the model (None when no mixed-precision plan met the bound) and how."""

    kind: str  # "static" | "dynamic"
    format: Int8Format
    model: onnx.ModelProto | None
    verification: Verification | None
    calibration: str | None = None  # the calibration method chosen (static)
    calibration_errors: dict[str, float] = field(default_factory=dict)  # method -> fully quantized error
    float_nodes: dict[str, str] = field(default_factory=dict)  # node -> why it stayed float
    quantized_nodes: int = 0
    fusion: FusionReport | None = None
    trials: list[dict[str, object]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failure: str = ""  # onnxruntime's quantizer failed on the model: why (model None)

    def as_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "format": self.format.as_dict(),
            "calibration": self.calibration,
            "calibration_errors": self.calibration_errors,
            "float_nodes": self.float_nodes,
            "quantized_nodes": self.quantized_nodes,
            "fusion": self.fusion.as_dict() if self.fusion else None,
            "trials": self.trials,
            "max_error": self.verification.max_error if self.verification else None,
            "notes": self.notes,
            "failure": self.failure or None,
        }


def quantize_within(
    model: onnx.ModelProto,
    fit: dict[str, np.ndarray],
    reference: Reference,
    bound: float,
    fmt: Int8Format,
    provider: str = "cpu",
    methods: tuple[str, ...] = CALIBRATION_METHODS,
    class_outputs: set[str] | None = None,
    progress: bool = True,
    timing: Timing | None = None,
    smooth: bool = True,
) -> list[Int8Result]:
    """The int8 candidates of `model` within `bound` on `reference` (static, and dynamic where the
    weights sit in matrix products); a candidate no plan could hold, or that onnxruntime's quantizer
    failed on, has model None and says why. `timing` (the objective is latency): a static search
    that cannot beat the dynamic candidate's speed is not run. `smooth`: the dynamic candidate's
    activations smoothed where every node in int8 is over the bound (_smoothed)."""
    bar = progress_bar(desc="int8", unit="model", show=progress, leave=False)
    try:
        try:
            return _search(
                model, fit, reference, bound, fmt, provider, methods, class_outputs, bar, timing=timing, smooth=smooth
            )
        except _PreprocessedFailed as failed:
            # magika: onnxruntime's quantizer fails on the model its own pre-processing wrote, and
            # quantizes the model as it is
            results = _search(
                model, fit, reference, bound, fmt, provider, methods, class_outputs, bar, False, timing, smooth
            )
            if results[0].failure:
                return results
            for r in results:
                r.notes.append(f"quantized without onnxruntime's pre-processing: on the model it wrote, {failed}")
            return results
    finally:
        bar.close()


class _PreprocessedFailed(Exception):
    """Every calibration method failed on onnxruntime's pre-processed model: worth a try without."""


def _search(
    model: onnx.ModelProto,
    fit: dict[str, np.ndarray],
    reference: Reference,
    bound: float,
    fmt: Int8Format,
    provider: str,
    methods: tuple[str, ...],
    class_outputs: set[str] | None,
    bar: Any,
    preprocess: bool = True,
    timing: Timing | None = None,
    smooth: bool = True,
) -> list[Int8Result]:
    """quantize_within on one preparation of the model (the static candidate first); raises
    _PreprocessedFailed where onnxruntime pre-processed the model and its quantizer failed on it for
    every calibration method."""
    with StaticQuantizer(model, fit, fmt, preprocess=preprocess) as quantizer:
        prepared = quantizer.model
        classes = class_axes(prepared) if class_outputs is None else class_outputs
        fragile = fragile_nodes(prepared, set(classes))
        weighted = weight_nodes(prepared)
        # the dynamic candidate is searched first where it is tried: within the bound, it may settle
        # the static search (below) before the slow calibrations
        job = _Job(quantizer, fmt, reference, bound, fragile, provider, bar)
        dynamic = None
        if _dynamic_share(prepared) >= DYNAMIC_WEIGHT_SHARE:
            dynamic = _dynamic_candidate(job, smooth)
            _in_name_only(dynamic, weighted)
        static = _static_candidate(job, methods, timing, dynamic)
        _in_name_only(static, weighted)
        return [static] if dynamic is None else [static, dynamic]


@dataclass(frozen=True)
class _Job:
    """What both candidates of one preparation are searched with."""

    quantizer: StaticQuantizer
    fmt: Int8Format
    reference: Reference
    bound: float
    fragile: dict[str, str]
    provider: str
    bar: Any


def _dynamic_candidate(job: _Job, smooth: bool = True) -> Int8Result:
    """Dynamic int8 of the matrix products and recurrent cells within the bound (activations
    quantized at run time: nothing to calibrate)."""
    quantizer, fmt, reference, bound = job.quantizer, job.fmt, job.reference, job.bound
    dynamic_fmt = Int8Format(
        "dynamic, int8 per-channel weights",
        "uint8",
        per_channel=fmt.per_channel,
        reduce_range=fmt.reduce_range,
        why="activations quantized at run time: no calibration, MatMulInteger kernels for MatMul/LSTM-heavy models",
    )
    nodes = [n.name for n in quantizer.model.graph.node if n.op_type in DYNAMIC_OPS]
    try:
        build: Build = quantizer.quantize_dynamic
        quantized = build(frozenset())
        full = (quantized, reference.verify(quantized))
        note = ""
        if smooth and not full[1].within(bound):  # every node in int8 is over: smoothed activations may not be
            job.bar.set_postfix_str("dynamic: smoothing")
            smoothed = _smoothed(quantizer, reference, full)
            if smoothed is not None:
                build, full, note = smoothed
        result = _within(job, build, "dynamic", dynamic_fmt, nodes, full=full)
        if note:
            result.notes.append(note)
        return result
    except TensorfoldError as exc:
        return Int8Result("dynamic", dynamic_fmt, None, None, failure=str(exc))


def _smoothed(
    quantizer: StaticQuantizer, reference: Reference, plain: tuple[onnx.ModelProto, Verification]
) -> tuple[Build, tuple[onnx.ModelProto, Verification], str] | None:
    """The dynamic int8 build on the prepared model with its activations smoothed (quantize/smooth.py)
    at the ALPHAS value whose fully quantized model is closest on the held-out share, where that is
    closer than without smoothing; None where no value is."""
    from tensorfold.quantize.smooth import ALPHAS, activation_maxima, smooth, smoothable_groups

    groups = smoothable_groups(quantizer.model)
    if not groups:
        return None
    maxima = activation_maxima(quantizer.model, quantizer.calls, [g.activation for g in groups])
    best: tuple[float, float, Path, tuple[onnx.ModelProto, Verification]] | None = None
    for alpha in ALPHAS:
        source = quantizer.variant(smooth(quantizer.model, groups, maxima, alpha), f"smoothed-{alpha:g}")
        quantized = quantizer.quantize_dynamic(source=source)
        check = reference.verify(quantized)
        if best is None or check.max_error < best[0]:
            best = (check.max_error, alpha, source, (quantized, check))
    assert best is not None
    error, alpha, source, full = best
    if error >= plain[1].max_error:
        return None
    note = (
        f"activations smoothed before dynamic int8 (SmoothQuant, alpha {alpha:g}, {len(groups)} tensors): "
        f"fully quantized, the held-out error {plain[1].max_error:.4f} -> {error:.4f}"
    )
    return (lambda exclude: quantizer.quantize_dynamic(exclude, source)), full, note


def _static_candidate(
    job: _Job, methods: tuple[str, ...], timing: Timing | None, dynamic: Int8Result | None
) -> Int8Result:
    """Static int8 within the bound, calibrated by the method whose fully quantized model is closest on
    the held-out share; where the objective is latency and the dynamic candidate already outruns the
    first fully quantized static model, no further method is calibrated nor any node searched."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    quantizer, fmt, reference, bound, bar = job.quantizer, job.fmt, job.reference, job.bound, job.bar
    errors, failed, full = {}, [], {}
    settled = ""
    for method in methods:
        bar.set_postfix_str(f"calibrating ({method})")
        try:
            quantized = quantizer.quantize(method)
            full[method] = (quantized, reference.verify(quantized))
            errors[method] = float(full[method][1].max_error)
        except TensorfoldError as exc:
            failed.append((method, str(exc)))
        bar.update()
        first = method in full and len(full) == 1  # the first method that calibrated: timed once
        if first and timing is not None and dynamic is not None:
            settled = _static_outrun(full[method][0], dynamic, timing)
            if settled:  # `method` stays the one calibrated
                break
    if not errors:
        reasons = sorted({why for _, why in failed})
        failure = reasons[0] if len(reasons) == 1 else "; ".join(f"{m}: {why}" for m, why in failed)
        if quantizer.preprocessed:
            raise _PreprocessedFailed(failure)
        return Int8Result("static", fmt, None, None, failure=failure)
    if settled and not full[method][1].within(bound):
        # the search would only return nodes to float, which cannot make static int8 faster
        result = Int8Result("static", fmt, None, None, calibration=method, calibration_errors=errors)
        result.notes.append(f"not searched: {settled}")
        return result
    method = min(errors, key=lambda m: errors[m])
    ops = set(QLinearOpsRegistry) | set(QDQRegistry)
    quantizable = [n.name for n in quantizer.model.graph.node if n.op_type in ops]
    result = _within(
        job,
        lambda ex: quantizer.quantize(method, ex),
        "static",
        fmt,
        quantizable,
        producers=_input_producers(quantizer.model),
        full=full.pop(method),
        calibration=method,
        calibration_errors=errors,
    )
    result.notes.extend(f"{m} calibration skipped: {why}" for m, why in failed)
    if settled:
        result.notes.append(f"static int8 calibrated with {method} only: {settled}")
    return result


@dataclass(frozen=True)
class Timing:
    """Where the objective is latency: the provider and threads int8 candidates are timed on, and
    the feeds of one call."""

    provider: str
    threads: int
    call: dict[str, np.ndarray]


def _static_outrun(static: onnx.ModelProto, dynamic: Int8Result, timing: Timing) -> str:
    """Why the static search can stop at its first calibration method, or "": the dynamic candidate
    is within the bound and runs as fast as the fully quantized static model or faster. Every node
    the static search returns to float, and every other calibration (the same graph, other ranges),
    leaves static int8 as slow or slower, so it cannot win on latency (ViT-S: the static search
    took 5.5 of 6 minutes, kept 255 nodes in float and ran 0.97x the input, the dynamic candidate
    1.44x; docs/results/int8-search.md)."""
    from tensorfold.runtime.latency import timed_for_budget

    if dynamic.model is None:
        return ""
    models: list[tuple[onnx.ModelProto | str, dict[str, np.ndarray]]] = [
        (static, timing.call),
        (dynamic.model, timing.call),
    ]
    (s, d), rounds = timed_for_budget(models, timing.provider, timing.threads)
    if s.median * (1 + SPEED_MARGIN) <= d.median:
        return ""
    return (
        f"fully quantized, static int8 ran {d.median / s.median:.2f}x the speed of the dynamic candidate "
        f"within the bound on {timing.provider} (median of {rounds} interleaved calls): keeping nodes "
        "in float or other ranges would not make it faster"
    )


# the nodes whose weights int8 stores in 8 bits: a candidate that keeps every one of them in float
# is int8 in name only (openWakeWord's melspectrogram: 4 weight nodes, all float, 1.04 MiB both)
WEIGHT_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm", "LSTM", "GRU", "Attention", "Gather")


def weight_nodes(model: onnx.ModelProto) -> set[str]:
    """The WEIGHT_OPS nodes that read a weight (an initializer of two or more axes): not an
    attention-score MatMul of two activations, nor the Gather of one dim of a Shape."""
    weights = {t.name for t in model.graph.initializer if len(t.dims) >= 2}
    return {n.name for n in model.graph.node if n.op_type in WEIGHT_OPS and weights.intersection(n.input)}


def _in_name_only(result: Int8Result, weighted: set[str]) -> None:
    """Drop a candidate that left every weight node of the model in float, and say so."""
    if result.model is None or not weighted or not weighted <= set(result.float_nodes):
        return
    result.model, result.verification = None, None
    result.notes.append(f"{result.kind} int8: every weight node stayed in float within the bound: no int8 candidate")


def _within(
    job: _Job,
    build: Build,
    kind: str,
    fmt: Int8Format,
    quantizable: list[str],
    producers: dict[str, onnx.NodeProto] | None = None,
    full: tuple[onnx.ModelProto, Verification] | None = None,
    **extra: Any,
) -> Int8Result:
    """int8 within the job's bound: the fully quantized model (`full` where the caller built it
    already), and only where it is over the bound, units scored and returned to float."""
    reference, bound, bar, provider = job.reference, job.bound, job.bar, job.provider
    if full is None:
        quantized = build(frozenset())
        full = (quantized, reference.verify(quantized))
    units: list[Unit] = []
    if not full[1].within(bound) and quantizable:
        bar.set_postfix_str(f"{kind}: scoring")
        units = score_units(build, reference, quantizable, job.fragile, bound, bar)
    bar.set_postfix_str(f"{kind}: nodes to float")
    mixed = keep_within(build, reference, bound, units, bar, full=full)
    result = Int8Result(
        kind,
        fmt,
        mixed.model,
        mixed.verification,
        float_nodes=mixed.float_nodes,
        quantized_nodes=len(quantizable) - len(mixed.float_nodes),
        trials=mixed.trials,
        **extra,
    )
    if mixed.model is None:
        result.notes.append(f"{kind} int8: no set of float nodes kept the held-out error within {bound:g}")
        return result
    try:
        result.fusion = fused_kernels(mixed.model, provider)
    except Exception as exc:  # noqa: BLE001 - the count is a report; the model itself was verified
        result.notes.append(f"could not count the fused int8 kernels: {str(exc).splitlines()[0][:200]}")
        return result
    if result.fusion.slow_spots and producers is not None:
        _float_slow_spots(result, build, reference, bound, quantizable, producers, provider)
    return result


def _float_slow_spots(
    result: Int8Result,
    build: Build,
    reference: Reference,
    bound: float,
    quantizable: list[str],
    producers: dict[str, onnx.NodeProto],
    provider: str,
) -> None:
    """A weight op onnxruntime has no int8 kernel for (ConvTranspose on the CPU) runs in float on a
    dequantized weight; onnxruntime quantizes its weight itself when its input arrives quantized.
    Keeping the op and the producer of its input in float drops that Q/DQ work: tried once, kept
    when it stays within the bound and leaves fewer slow spots."""
    assert result.fusion is not None
    slow = set(result.fusion.slow_spots)
    nodes = {n for n in slow if n in quantizable}
    nodes |= {producers[n].name for n in slow if n in producers and producers[n].name in quantizable}
    if not nodes:
        return
    model = build(frozenset(result.float_nodes) | nodes)
    check = reference.verify(model)
    if not check.within(bound) or check.broken:
        return
    fusion = fused_kernels(model, provider)
    if len(fusion.slow_spots) >= len(slow):
        return
    result.model, result.verification, result.fusion = model, check, fusion
    result.float_nodes.update(
        {n: "around a weight op with no int8 kernel on this provider" for n in nodes if n not in result.float_nodes}
    )
    result.quantized_nodes = len(quantizable) - len(result.float_nodes)


def _input_producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """Node name -> the node producing its first (activation) input."""
    made = {o: n for n in model.graph.node for o in n.output}
    return {n.name: made[n.input[0]] for n in model.graph.node if n.input and n.input[0] in made}


def _dynamic_share(model: onnx.ModelProto) -> float:
    """The share of the compute weights (those read by convs, matrix products and recurrent cells;
    an embedding table is looked up, not multiplied) that matrix products and recurrent cells read."""
    sizes = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer}
    compute = {i for n in model.graph.node if n.op_type in COMPUTE_OPS for i in n.input if i in sizes}
    dynamic = {i for n in model.graph.node if n.op_type in DYNAMIC_COMPUTE_OPS for i in n.input if i in sizes}
    total = sum(sizes[i] for i in compute)
    return sum(sizes[i] for i in dynamic) / total if total else 0.0


COMPUTE_OPS = (*DYNAMIC_COMPUTE_OPS, "Conv", "ConvTranspose")
