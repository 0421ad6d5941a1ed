"""The fastest (or smallest) model within the user's error bound, over every stage.

Candidates are built and verified on the same held-out samples: the input itself, the factorized
model at the bound, int8 alone, and the factorized model at a share of the bound with int8 on top
(each int8 model with the nodes that cost the most error left in float until the whole stays within
the bound). Those within the bound are timed together, interleaved, on the provider, and the
objective picks one: `latency` the fastest, `size` the smallest file. The input is a candidate too,
so a model slower (or larger) than the input is never written: the input is kept and the report
says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import onnx

from tensorfold.errors import TensorfoldError
from tensorfold.graph.model import count_params
from tensorfold.graph.verify import Reference, Verification
from tensorfold.log import warn
from tensorfold.onnxrt import large
from tensorfold.onnxrt.batching import one_call
from tensorfold.passes.base import PassContext, PassResult
from tensorfold.passes.factorize import FactorizePass
from tensorfold.quantize.static import CALIBRATION_METHODS, quantized_nodes
from tensorfold.quantize.within_bound import Int8Result, Timing
from tensorfold.runtime.latency_model import SPEED_MARGIN

if TYPE_CHECKING:
    from tensorfold.calibration.budget_search import Refine

OBJECTIVES = ("latency", "size")
# the input after normalization's exact folds (BatchNorms into convs, ...): a candidate of its own,
# so that the speed those folds give is never credited to a lossy stage
LOSSLESS = "exact rewrite"
# shares of the bound the factorization may use before int8 takes the rest; measured on PP-OCRv4 det
# at 0.05: factorizing at half the bound leaves int8 room to quantize most nodes
INT8_SPLITS = (0.5,)
SPLIT_STEPS = 6  # models the bound search at a share of the bound builds
# latency: a candidate with more error must be SPEED_MARGIN faster than one with less to be picked


@dataclass
class Candidate:
    name: str  # "input", "factorized", "int8", "factorized + int8", ...
    model: onnx.ModelProto
    verification: Verification | None  # None for the input: it is the reference
    bound: float | None
    int8: Int8Result | None = None
    factorized_ratio: float | None = None  # over the factorizable layers
    recovered: bool = False  # its factorization was fine-tuned (optimize --recover)
    speedup: float | None = None  # the input's median latency over this one's
    latency_ms: float | None = None
    params: int = field(init=False)
    size_bytes: int = field(init=False)

    def __post_init__(self) -> None:
        self.params = count_params(self.model)
        self.size_bytes = large.serialized_size(self.model)

    @property
    def max_error(self) -> float:
        return 0.0 if self.verification is None else float(self.verification.max_error)

    @property
    def within(self) -> bool:
        if self.verification is None:
            return True
        if self.verification.broken:
            return False
        return self.bound is None or self.verification.within(self.bound)

    def as_dict(self) -> dict[str, object]:
        v = self.verification
        return {
            "name": self.name,
            "params": self.params,
            "size_bytes": self.size_bytes,
            "max_error": self.max_error,
            "within": self.within,
            "speedup": self.speedup,
            "latency_ms": self.latency_ms,
            "factorized_ratio": self.factorized_ratio,
            "recovered": self.recovered,
            "outputs": [
                {
                    "name": o.name,
                    "relative_error": o.relative_error,
                    "agreement": o.agreement,
                    "argmax_agreement": o.argmax_agreement,
                }
                for o in v.outputs
            ]
            if v
            else None,
            "int8": self.int8.as_dict() if self.int8 else None,
        }


@dataclass
class DeployChoice:
    chosen: Candidate
    candidates: list[Candidate]
    objective: str
    latency: str  # what the speedups are: "cpu, 1 thread, measured interleaved"
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "chosen": self.chosen.name,
            "objective": self.objective,
            "latency": self.latency,
            "candidates": [c.as_dict() for c in self.candidates],
            "notes": self.notes,
        }


def choose(
    candidates: list[Candidate],
    objective: str,
    feeds: dict[str, np.ndarray],
    provider: str = "cpu",
    threads: int = 0,
    rounds: int = 15,
) -> DeployChoice:
    """Time every candidate (interleaved, one call each round; those outside the bound too, so the
    report compares them all) and pick among those within the bound by `objective`. candidates[0]
    is the input: it wins when nothing within the bound beats it, and the notes say so."""
    from tensorfold.runtime.latency import timed_for_budget

    base = candidates[0]
    call = one_call(base.model, feeds)
    jobs: list[tuple[onnx.ModelProto | str, dict[str, np.ndarray]]] = [(c.model, call) for c in candidates]
    stats, rounds = timed_for_budget(jobs, provider, threads, rounds)  # a small model gets more rounds
    for c, s in zip(candidates, stats):
        c.latency_ms = s.median
        c.speedup = stats[0].median / s.median
    shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in call.items())
    label = f"{provider}, {threads or 'all'} thread(s), {shapes}, median of {rounds} interleaved runs"
    ok = [c for c in candidates if c.within]
    if objective == "latency":
        fastest = max(c.speedup or 0.0 for c in ok)
        # of those as fast as the fastest within the timing noise, the one with the least error
        chosen = min((c for c in ok if (c.speedup or 0.0) * (1 + SPEED_MARGIN) >= fastest), key=lambda c: c.max_error)
        better = f"ran faster than the {{}} on {provider}"
    else:
        chosen = min(ok, key=lambda c: c.size_bytes)
        better = "is a smaller file than the {}"
    notes = []
    if chosen is base and len(candidates) > 1:
        notes.append(
            "no candidate stayed within the bound on the held-out samples: the input is kept"
            if len(ok) == 1
            else f"no candidate within the bound {better.format('input')}: the input is kept"
        )
    elif chosen.name == LOSSLESS and len(ok) > 2:
        notes.append(
            f"no factorized or int8 candidate within the bound {better.format('exact rewrite')}"
            f" (by {SPEED_MARGIN:.0%}): the exact rewrite is written, its outputs the input's"
        )
    return DeployChoice(chosen, candidates, objective, label, notes)


def check_objective(objective: str | None) -> None:
    if objective is not None and objective not in OBJECTIVES:
        raise TensorfoldError(f"unknown objective '{objective}' (choose from {', '.join(OBJECTIVES)})")


@dataclass(frozen=True)
class DeploySettings:
    objective: str  # "latency" | "size"
    int8: bool
    provider: str = "cpu"
    threads: int = 0
    rank_option_int8_error: float = 0.05  # without a bound: what int8 may add to the factorized model's error
    progress: bool = True


@dataclass
class Split:
    """A factorized model for factorized + int8: at a share of the bound, int8 taking the rest."""

    ratio: float  # over the factorizable layers
    result: PassResult
    recovered: bool  # the search's answer was a recovered candidate (optimize --recover)


def split_models_for_int8(
    chosen: FactorizePass,
    model: onnx.ModelProto,
    ctx: PassContext,
    reference: Reference,
    bound: float,
    refine: Refine | None = None,
) -> list[Split]:
    """For factorized + int8: per share s of the bound in INT8_SPLITS, the most compressed factorized
    model within s * bound (a bound search of its own, SPLIT_STEPS models), int8 taking the rest."""
    from tensorfold.calibration.budget_search import answer_recovered, search_budget

    out: list[Split] = []
    for share in INT8_SPLITS:
        result, _, trials = search_budget(
            chosen, model, replace(ctx, progress=False), reference, share * bound, steps=SPLIT_STEPS, refine=refine
        )
        ratios = [t.ratio for t in trials if t.within]
        if result.rewritten and ratios and max(ratios) not in [s.ratio for s in out]:
            out.append(Split(max(ratios), result, answer_recovered(trials)))
    return out


def search_candidates(
    original: onnx.ModelProto,
    normalized: onnx.ModelProto | None,
    result: PassResult,
    verification: Verification | None,
    split_models: list[Split],
    fit: dict[str, np.ndarray],
    held: dict[str, np.ndarray] | None,
    reference: Reference | None,
    bound: float | None,
    settings: DeploySettings,
    recovered: bool = False,
    lossless: bool = False,
) -> DeployChoice:
    """The candidates of one run, built and verified on the held-out share, and the one the objective
    picks. With a bound: input, factorized at the bound, int8 alone, factorized at a share of the
    bound + int8. With a rank option instead (bound None): input, the factorization as asked, and it
    with int8 allowed to add `settings.rank_option_int8_error`. `lossless`: normalization changed
    the input (`normalized`), which then is a candidate too (LOSSLESS)."""
    from tensorfold.quantize.formats import format_for
    from tensorfold.quantize.within_bound import quantize_within

    if reference is None:
        raise TensorfoldError(
            "--int8 and --objective need held-out samples to check every candidate on (--calibration)"
        )
    factorized = result.model if result.rewritten else None
    candidates = [Candidate("input", original, None, bound)]
    if lossless and normalized is not None:
        candidates.append(Candidate(LOSSLESS, normalized, reference.verify(normalized), bound))
    unmet: list[str] = []
    if factorized is not None:
        candidates.append(
            Candidate(
                "factorized",
                factorized,
                verification or reference.verify(factorized),
                bound,
                factorized_ratio=_ratio(result),
                recovered=recovered,
            )
        )
    already = quantized_nodes(original) if settings.int8 else 0
    if already:  # optimize warned of it before any work (stages.load)
        unmet.append(f"int8: the model is quantized already ({already} quantization nodes): no int8 candidate")
    if settings.int8 and not already:
        assert normalized is not None, "int8 alone quantizes the normalized input"
        fmt = format_for(settings.provider if settings.objective == "latency" else "cpu")
        if bound is not None:
            bases: list[tuple[str, onnx.ModelProto, float | None, bool]] = [("int8", normalized, None, False)]
            bases += [
                ("factorized + int8", s.result.model, s.ratio, s.recovered) for s in split_models if s.result.rewritten
            ]
            if factorized is not None and not any(s.result.rewritten for s in split_models):
                shares = " or ".join(f"{share * bound:g}" for share in INT8_SPLITS)
                unmet.append(
                    f"factorized + int8: no factorization stayed within {shares}, the share of the bound it "
                    "may use before int8 takes the rest: no such candidate"
                )
            int8_bound = bound
        else:
            int8_bound = (candidates[-1].max_error if factorized is not None else 0.0) + settings.rank_option_int8_error
            bases = [
                ("factorized + int8", factorized, _ratio(result), recovered)
                if factorized is not None
                else ("int8", normalized, None, False)
            ]
        method: str | None = None  # the calibration method int8 alone chose is reused after it
        timing = None
        if settings.objective == "latency" and held is not None:
            timing = Timing(settings.provider, settings.threads, one_call(normalized, held))
        for name, base, ratio, base_recovered in bases:
            for r in quantize_within(
                base,
                fit,
                reference,
                int8_bound,
                fmt,
                settings.provider,
                (method,) if method else CALIBRATION_METHODS,
                class_outputs=set(reference.axes),
                progress=settings.progress,
                timing=timing,
            ):
                method = method or r.calibration
                label = name + (" (dynamic)" if r.kind == "dynamic" else "")
                if r.failure:  # asked for and not built: said as a warning, not only in the notes
                    warn(f"--int8: onnxruntime's quantizer failed on the {label} candidate: {r.failure}")
                    unmet.append(f"{label}: onnxruntime's quantizer failed: {r.failure}")
                if r.model is None:
                    unmet.extend(f"{label}: {note}" for note in r.notes)
                    continue
                candidates.append(
                    Candidate(
                        label,
                        r.model,
                        r.verification,
                        int8_bound,
                        int8=r,
                        factorized_ratio=ratio,
                        recovered=base_recovered,
                    )
                )
    if held is None:
        raise TensorfoldError("--int8 and --objective time the candidates on held-out samples (--calibration)")
    picked = choose(candidates, settings.objective, held, settings.provider, settings.threads)
    picked.notes[:0] = unmet
    return picked


def _ratio(result: PassResult) -> float | None:
    return result.eligible_params / result.eligible_params_after if result.eligible_params_after else None


def factorization_of(picked: Candidate, result: PassResult, split_models: list[Split]) -> PassResult:
    """The factorization behind the picked candidate (for the report's layer table): none for the
    input and int8 alone, the bound search's for "factorized", the split's for factorized + int8."""
    if picked.name == "factorized":
        return result
    if picked.factorized_ratio is None:
        return PassResult(
            picked.model, picked.name != "input", [], result.skipped, result.notes, result.eligible_params
        )
    for split in split_models:
        r = split.result
        if picked.factorized_ratio == split.ratio:
            return PassResult(picked.model, True, r.rewritten, r.skipped, result.notes, r.eligible_params)
    return PassResult(picked.model, True, result.rewritten, result.skipped, result.notes, result.eligible_params)
