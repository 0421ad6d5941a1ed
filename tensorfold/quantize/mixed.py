"""Mixed precision: which nodes go back to float so that the int8 model stays within a bound.

Local quantization noise does not say what reaches the output: on PP-OCRv4 det, quantizing only the
first ten quantizable nodes (the stem convs and their hard-swish) gives 0.19 held-out output error
and any later ten at most 0.055 (docs/results/int8-formats.md), though the stem's own tensors carry
no more rounding noise than the rest (a first version, not kept, ranked nodes by the error each added
to its own output and found nothing). So every score here is
the *model's* held-out output error with only one unit of nodes quantized:

1. Units: the quantizable nodes in graph order, cut into about INITIAL_UNITS contiguous blocks;
   every known-fragile spot (quantize/fragile.py) is a unit of its own. Each unit is scored.
2. Refinement: the worst-scoring unit of more than one node is split in halves and both are scored,
   until REFINE_BUDGET more quantizations are spent or every bad unit is one node.
3. Selection: independent rounding noise adds in quadrature, so units go back to float in order of
   their score, and the fewest leading units whose model is within the bound are found by bisection
   (each step quantized with the cached ranges and verified on the held-out samples).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import onnx

from tensorfold.graph.verify import Reference, Verification

INITIAL_UNITS = 16
REFINE_BUDGET = 24

Build = Callable[[frozenset[str]], onnx.ModelProto]  # nodes kept in float -> quantized model


@dataclass
class Unit:
    nodes: tuple[str, ...]
    error: float  # held-out output error with only these nodes quantized
    why: str = ""

    def describe(self) -> str:
        return f"{self.why + '; ' if self.why else ''}quantized alone it costs {self.error:.3g} output error"


@dataclass
class MixedPrecision:
    """The outcome of a mixed-precision search."""

    model: onnx.ModelProto | None  # None: no set of float nodes met the bound
    verification: Verification | None
    float_nodes: dict[str, str] = field(default_factory=dict)  # node -> why it stayed float
    trials: list[dict[str, object]] = field(default_factory=list)  # every set tried: units float, error, within
    scored_units: int = 0

    def as_dict(self) -> dict[str, object]:
        return {"float_nodes": self.float_nodes, "trials": self.trials, "scored_units": self.scored_units}


def score_units(
    build: Build, reference: Reference, quantizable: list[str], fragile: dict[str, str], bound: float, bar: Any = None
) -> list[Unit]:
    """Units of `quantizable` (in graph order) scored by the output error of quantizing each alone."""
    everything = frozenset(quantizable)

    def score(nodes: tuple[str, ...], why: str = "") -> Unit:
        check = reference.verify(build(everything - frozenset(nodes)))
        if bar is not None:
            bar.update()
        return Unit(nodes, math.inf if check.broken else float(check.max_error), why)

    plain = [n for n in quantizable if n not in fragile]
    size = max(1, math.ceil(len(plain) / INITIAL_UNITS))
    units = [score((n,), fragile[n]) for n in quantizable if n in fragile]
    units += [score(tuple(plain[i : i + size])) for i in range(0, len(plain), size)]
    # split the worst multi-node unit while it matters (quantized alone it costs a tenth of the bound)
    heap = [(-u.error, i, u) for i, u in enumerate(units) if len(u.nodes) > 1]
    heapq.heapify(heap)
    final = [u for u in units if len(u.nodes) == 1]
    spent, counter = 0, len(units)
    while heap:
        neg, _, unit = heapq.heappop(heap)
        if spent + 2 > REFINE_BUDGET or -neg <= bound / 10:
            final.append(unit)
            continue
        half = len(unit.nodes) // 2
        for part in (unit.nodes[:half], unit.nodes[half:]):
            child = score(part)
            spent += 1
            counter += 1
            if len(part) > 1:
                heapq.heappush(heap, (-child.error, counter, child))
            else:
                final.append(child)
    return sorted(final, key=lambda u: -u.error)


def keep_within(
    build: Build,
    reference: Reference,
    bound: float,
    units: list[Unit],
    bar: Any = None,
    full: tuple[onnx.ModelProto, Verification] | None = None,
) -> MixedPrecision:
    """The fewest leading `units` (worst first) left in float whose model is within `bound`;
    `full`: the fully quantized model and its check, where the caller has them already."""
    trials: list[dict[str, object]] = []

    def attempt(k: int) -> tuple[onnx.ModelProto, Verification, bool]:
        if k == 0 and full is not None:
            model, check = full
        else:
            model = build(frozenset(n for u in units[:k] for n in u.nodes))
            check = reference.verify(model)
        ok = check.within(bound) and not check.broken
        trials.append({"float_units": k, "max_error": float(check.max_error), "within": ok})
        if bar is not None:
            bar.update()
            bar.set_postfix_str(f"{k} float {'ok' if ok else 'over'}")
        return model, check, ok

    model, check, ok = attempt(0)
    if ok:
        return MixedPrecision(model, check, {}, trials, len(units))
    # the quadrature estimate of where the bound is crossed starts the bisection near the answer
    lo, hi = 0, len(units)
    if hi == 0:
        return MixedPrecision(None, None, {}, trials, 0)
    best = None
    guess = _quadrature_guess(units, bound)
    if 0 < guess < hi:
        model, check, ok = attempt(guess)
        if ok:
            hi, best = guess, (guess, model, check)
        else:
            lo = guess
    if best is None:
        model, check, ok = attempt(hi)
        if not ok:
            return MixedPrecision(None, None, {}, trials, len(units))
        best = (hi, model, check)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        model, check, ok = attempt(mid)
        if ok:
            hi, best = mid, (mid, model, check)
        else:
            lo = mid
    k, model, check = best
    why = {n: u.describe() for u in units[:k] for n in u.nodes}
    return MixedPrecision(model, check, why, trials, len(units))


def _quadrature_guess(units: list[Unit], bound: float) -> int:
    """The fewest worst units to take out so the rest's errors, added in quadrature, fit the bound."""
    remaining = sum(min(u.error, 10.0) ** 2 for u in units)
    for k, unit in enumerate(units):
        if remaining <= bound**2:
            return k
        remaining -= min(unit.error, 10.0) ** 2
    return len(units)
