"""Hardware-aware rank selection: every candidate chain is timed on the target (or predicted by a
device model) beside the layer it replaces; a layer is rewritten only where its chain is faster.

Ranks are rounded up to multiples of 8 (16 on GPUs): channel counts that vector units and GPU
kernels handle without remainder loops. Three ways to choose among the faster chains:
- no budget: the rank spec's ranks (energy, ratio, ...), rounded, kept where faster;
- --max-error E: per layer the fastest chain whose relative weight error is <= E;
- --target-latency / --speedup: least total error whose summed layer latency meets the target
  (the same Lagrangian allocation as --ratio, with milliseconds in place of parameters).

Then the whole model decides: it is measured against the input; a reachable target it misses is
re-planned for proportionally more (the fastest model measured is kept), and a model that is not
faster gives layers back to the input's form until it is, or returns the input's layers.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from tensorfold.decompose.ranks import Option, allocate_budget
from tensorfold.errors import DecompositionError, TensorfoldError
from tensorfold.graph.model import GraphIndex
from tensorfold.passes.base import Choice, PassContext, PassResult
from tensorfold.passes.chains import ChainBuilder
from tensorfold.passes.factorize import FactorizePass
from tensorfold.passes.layers import Layer
from tensorfold.planning.latency_table import LatencyTable

FASTER = 0.9  # a chain must take at most 90% of the layer's time: isolated timings miss the
# fusions onnxruntime makes in the whole graph, so small gains do not survive
SLACK = 0.03  # of the whole model's time: how far from the fastest plan an unreachable target may land


@dataclass
class Timed:
    choice: Choice
    params: int
    error: float
    ms: float


@dataclass
class HardwareTarget:
    table: LatencyTable
    model: onnx.ModelProto  # the normalized model the pass rewrites
    shapes: dict  # concrete shapes of its values
    multiple: int = 8
    max_error: float | None = None
    target_ms: float | None = None  # whole-model latency to reach (--target-latency/--speedup)
    model_ms: float | None = None  # the input's whole-model latency
    timings: dict = field(default_factory=dict)  # layer -> (layer ms, [Timed]) for the report
    exclude: set = field(default_factory=set)  # layers the fallback returned to the input's form
    reasons: dict = field(default_factory=dict)  # layer -> why it is kept whole (read by the pass)
    out_of_reach: bool = False  # the last plan could not meet target_ms by its own estimate

    def __post_init__(self):
        self.initializers = GraphIndex(self.model).initializers  # built once, read for every candidate
        self.opset = model_opset(self.model)

    def __call__(self, pass_: FactorizePass, layers: list[Layer], ctx):
        self.reasons = {
            name: "hardware-aware: returned to the input's form, the whole model was not faster"
            for name in self.exclude
        }
        layers = [layer for layer in layers if layer.name not in self.exclude]
        base, notes = (
            ({}, []) if (self.max_error is not None or self.target_ms is not None) else pass_.spec_plan(layers, ctx)
        )
        options = {}
        from tensorfold.progress import bar as progress_bar

        # a first run on a model times every candidate (minutes on a large model); the cache makes reruns fast
        for layer in progress_bar(layers, desc="timing chains", unit="layer", show=ctx.progress, leave=False):
            layer_ms = self._layer_ms(layer, ctx)
            if layer.name in base:
                wanted = [base[layer.name]] if base[layer.name] is not None else []
            else:
                wanted = _spread(pass_, layer)
            timed = []
            for choice in {self._round(pass_, c) for c in wanted}:
                t = self._time(pass_, layer, choice, ctx)
                if t is not None and t.ms <= FASTER * layer_ms and (ctx.force or t.params < layer.params):
                    timed.append(t)
            self.timings[layer.name] = (layer_ms, timed)
            options[layer.name] = timed
        self.table.save()
        plan = {name: None for name in options}
        slower = sum(1 for v in options.values() if not v)
        if self.target_ms is not None:
            # the other nodes keep their time; the rewritten layers must fit in what is left
            layers_ms = sum(self.timings[layer.name][0] for layer in layers)
            budget = self.target_ms - (self.model_ms - layers_ms)
            fastest = sum(min([t.ms for t in options[layer.name]] + [self.timings[layer.name][0]]) for layer in layers)
            self.out_of_reach = budget < fastest
            if budget < fastest:
                # timings repeat to a few percent only: below that, "fastest" is noise, and the least
                # error within it is the better trade
                notes.append(
                    f"target {self.target_ms:.3f} ms is out of reach: the fastest chains give about "
                    f"{self.model_ms - layers_ms + fastest:.3f} ms; taking the least error within "
                    f"{SLACK:.0%} of that"
                )
                budget = fastest + SLACK * (self.model_ms - layers_ms + fastest)
            plan.update(self._allocate(layers, options, budget))
        else:
            for name, timed in options.items():
                ok = [t for t in timed if self.max_error is None or t.error <= self.max_error]
                if ok:
                    plan[name] = min(ok, key=lambda t: t.ms).choice
                elif timed:
                    self.reasons[name] = f"hardware-aware: no faster chain within --max-error {self.max_error:g}"
        for name, timed in options.items():
            if not timed:
                self.reasons[name] = "hardware-aware: no chain faster than the layer on the target"
        fresh = "predictions" if self.table.predicted else "measurements"
        notes = notes + [
            f"hardware-aware: {len(layers)} layers timed ({self.table.new} new {fresh}, "
            f"cache {self.table.path}); {slower} had no chain faster than the layer"
        ]
        return plan, notes

    # ------------------------------------------------------------------------------------------

    def _round(self, pass_: FactorizePass, choice: Choice) -> Choice:
        """The choice's ranks rounded the way its method says (auto's choices name their method)."""
        from tensorfold.passes import PASSES

        owner = PASSES[choice.method]() if choice.method in PASSES and choice.method != pass_.method else pass_
        return Choice(choice.method, owner.rounded(tuple(choice.ranks), self.multiple))

    def _layer_ms(self, layer: Layer, ctx) -> float:
        inits = [self.initializers[i] for i in layer.node.input if i in self.initializers]
        return self.table.ms(layer, [layer.node], inits, self.shapes, "layer", self.opset)

    def _time(self, pass_: FactorizePass, layer: Layer, choice: Choice, ctx) -> Timed | None:
        try:
            fac, error = pass_.weight_error(layer, choice, ctx)
        except DecompositionError:
            return None
        counter = itertools.count()
        builder = ChainBuilder(layer, fac.method, lambda base: f"{base}_{next(counter)}", "")
        fac.emit(builder)
        extra = [self.initializers[n] for n in [layer.bias_name] if n and n in self.initializers]
        ms = self.table.ms(
            layer,
            builder.nodes,
            builder.initializers + extra,
            self.shapes,
            f"{fac.method}:{list(fac.ranks)}",
            self.opset,
        )
        return Timed(choice, builder.params, error, ms)

    def _allocate(self, layers: list[Layer], options: dict, budget_ms: float) -> dict:
        names = [layer.name for layer in layers]
        opts, choices = [], []
        for name in names:
            layer_ms = self.timings[name][0]
            timed = options[name]
            # cost in units of 0.1 us so the integer budget keeps precision
            opts.append([Option(int(layer_ms * 1e4), 0.0)] + [Option(int(t.ms * 1e4), t.error**2) for t in timed])
            choices.append([None] + [t.choice for t in timed])
        picked = allocate_budget(opts, int(budget_ms * 1e4))
        return {name: c[i] for name, c, i in zip(names, choices, picked)}


def _spread(pass_: FactorizePass, layer: Layer) -> list[Choice]:
    """A few candidates from 1/16 to 3/4 of the layer's parameters, the least error in each."""
    cands = pass_.candidates(layer)
    out = []
    for frac in (1 / 16, 1 / 8, 1 / 4, 3 / 8, 1 / 2, 3 / 4):
        fits = [c for c in cands if c.params <= frac * layer.params]
        if fits:
            out.append(pass_.ranks_of(min(fits, key=lambda c: c.error2)))
    return list(dict.fromkeys(out))


def model_opset(model: onnx.ModelProto) -> int:
    return max((i.version for i in model.opset_import if i.domain in ("", "ai.onnx")), default=17)


# --- the whole run: plan by latency, then make sure the model got faster --------------------------


def optimize_hardware_aware(
    chosen: FactorizePass,
    model: onnx.ModelProto,
    ctx: PassContext,
    input_shapes: dict[str, list[int]],
    provider: str,
    device: str | None,
    threads: int,
    max_error: float | None,
    target_latency: float | None,
    speedup: float | None,
    seed: int,
    feeds: dict[str, np.ndarray] | None = None,
) -> tuple[PassResult, dict[str, Any]]:
    """Plan by measured (or predicted) latency, then make sure the whole model got faster.
    feeds: one call of the user's inputs to time on (else random values of input_shapes)."""
    from tensorfold.graph.shapes import concrete_shapes
    from tensorfold.onnxrt.inputs import random_inputs, zero_inputs
    from tensorfold.passes.base import PassResult
    from tensorfold.passes.layers import Skip
    from tensorfold.runtime.latency_model import SPEED_MARGIN, Measured, latency_model

    if max_error is not None and not max_error > 0:
        raise TensorfoldError(f"--max-error must be > 0 (got {max_error})")
    if speedup is not None and not speedup > 0:
        raise TensorfoldError(f"--speedup must be > 0 (got {speedup})")
    if target_latency is not None and not target_latency > 0:
        raise TensorfoldError(f"--target-latency must be > 0 ms (got {target_latency})")
    if speedup is not None and target_latency is not None:
        raise TensorfoldError("choose one of --target-latency and --speedup")
    timing = latency_model(provider, threads, device)
    # the whole model is timed with more warm-up and runs than a table entry
    whole = timing if timing.predicted else Measured(provider, threads, runs=30, warmup=5)
    if feeds is None:
        feeds = zero_inputs(model, input_shapes) if timing.predicted else random_inputs(model, input_shapes, seed)

    def speed_ratio(candidate):
        """How many times faster `candidate` is than the normalized input (interleaved runs)."""
        return whole.speedup(candidate, model, input_shapes, feeds)

    base_ms = whole.ms(model, input_shapes, feeds)
    needed = {v for n in model.graph.node for v in list(n.input) + list(n.output) if v}
    target = HardwareTarget(
        LatencyTable(latency=timing),
        model,
        concrete_shapes(model, input_shapes, needed),
        multiple=16 if (timing.predicted or provider not in ("cpu", "CPUExecutionProvider")) else 8,
        max_error=max_error,
        target_ms=target_latency or (base_ms / speedup if speedup else None),
        model_ms=base_ms,
    )
    ctx.planner = target
    # a lossy model is written only where it is faster past the timing noise (measured, not predicted)
    needed_ratio = 1.0 if timing.predicted else 1.0 + SPEED_MARGIN
    faster = "faster" if timing.predicted else f"faster by {SPEED_MARGIN:.0%} (the timing noise)"
    result = chosen(model, ctx)
    ratio = speed_ratio(result.model) if result.modified else 1.0
    if target.target_ms is not None:
        result, ratio = _close_the_loop(chosen, model, ctx, target, speed_ratio, base_ms, result, ratio)
    # fail over to the input's layers where the model is not faster: drop the half of the
    # rewritten layers that gained least in isolation, at most three times
    for _ in range(3):
        if ratio >= needed_ratio or not result.rewritten:
            break
        gains = sorted(result.rewritten, key=lambda r: _gain(target, r))
        target.exclude.update(r.node for r in gains[: max(1, len(gains) // 2)])
        result = chosen(model, ctx)
        ratio = speed_ratio(result.model) if result.modified else 1.0
        result.notes.append(f"whole model not {faster}: returned {len(target.exclude)} layer(s) to the input's form")
    if ratio < needed_ratio and result.modified:
        skipped = result.skipped + [
            Skip(r.node, r.op, f"hardware-aware: the factorized model was not {faster} ({ratio:.2f}x)")
            for r in result.rewritten
        ]
        result = PassResult(
            model,
            False,
            [],
            skipped,
            result.notes + ["no faster factorized model found: the output keeps the input's layers"],
            result.eligible_params,
        )
        ratio = 1.0
    latency = {
        "target": timing.label if timing.predicted else f"provider {provider} (measured)",
        "input_ms": round(base_ms, 4),
        "speedup": round(ratio, 4),
        "max_error": max_error,
        "target_latency_ms": target_latency,
        "speedup_asked": speedup,
    }
    return result, latency


def _close_the_loop(chosen, model, ctx, target, speed_ratio, base_ms, result, ratio, tries: int = 3):
    """A speedup the plan expected but the whole model missed: the layers were timed alone (and
    maybe at another time, from the cache), which misjudges their share of the model and the
    fusions onnxruntime makes in the graph. Ask the planner for proportionally more, up to `tries`
    times, and keep the fastest model measured."""
    asked = base_ms / target.target_ms
    wanted = asked
    for _ in range(tries):
        if ratio >= asked * 0.97 or target.out_of_reach:
            break
        wanted *= asked / max(ratio, 1e-3)
        target.target_ms = base_ms / wanted
        again = chosen(model, ctx)
        again_ratio = speed_ratio(again.model) if again.modified else 1.0
        note = (
            f"measured {ratio:.2f}x of the {asked:.2f}x asked: re-planned for {wanted:.2f}x, "
            f"measured {again_ratio:.2f}x"
        )
        if again_ratio > ratio:
            result, ratio = again, again_ratio
        result.notes.append(note)
    target.target_ms = base_ms / asked
    return result, ratio


def _gain(target, record) -> float:
    layer_ms, timed = target.timings.get(record.node, (0.0, []))
    chosen = [t.ms for t in timed if list(t.choice.ranks) == record.ranks]
    return layer_ms - (min(chosen) if chosen else layer_ms)
