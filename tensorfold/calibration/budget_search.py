"""--max-output-error: the most compressed model whose held-out error stays within a bound.

The global budget (--ratio over the method's output-error curves) is searched by bisection on
log(ratio), every candidate model built and verified on the held-out samples against the same
reference outputs. Error is not strictly monotone in the ratio, so the answer is the largest
ratio that was verified within the bound, not an interpolation. With `refine` (optimize --recover)
each candidate is refined (fine-tuned) before it is verified, and the bound holds for the refined
model; the trial keeps the error before refining and the time it took.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import onnx

from tensorfold.graph.verify import Reference, Verification
from tensorfold.passes.base import FactorCache, PassContext, PassResult, RankSpec
from tensorfold.passes.factorize import FactorizePass
from tensorfold.progress import bar as progress_bar

# a candidate whose unrefined error is this many times the bound is not refined: recovery has cut
# the held-out error by 63% at most where measured (PP-OCR cls 0.44 -> 0.164 at 2.3x in 300 steps,
# 0.131 in 1500; det 0.353 -> 0.211 at 2x; docs/results/compress.md), this would take 75%
HOPELESS = 4.0


@dataclass
class Trial:
    ratio: float
    params_after: int
    max_relative_error: float
    max_disagreement: float
    within: bool
    unrefined_error: float | None = None  # with refine: the held-out error before it
    refine_seconds: float | None = None
    start: str | None = None  # with warm: "warm" (from the best recovered candidate) or "cold"
    # with refine, where the refined model was not kept (no better on the held-out share): its
    # relative error and argmax disagreement (the larger of the two decides, as the bound does)
    refused_error: float | None = None
    refused_disagreement: float | None = None

    @property
    def recovered(self) -> bool:
        """Whether this candidate's weights were trained: its refinement kept, or (a warm start)
        factorized from a refined candidate, whose training it carries even where its own
        refinement was not kept."""
        return self.unrefined_error is not None and (self.refused_error is None or self.start == "warm")

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "ratio": round(self.ratio, 4),
            "factorizable_params_after": self.params_after,
            "max_relative_error": self.max_relative_error,
            "max_disagreement": self.max_disagreement,
            "within": self.within,
        }
        if self.unrefined_error is not None:
            out["before_recovery"] = self.unrefined_error
            out["recovery_seconds"] = round(self.refine_seconds or 0.0, 2)
        if self.start is not None:
            out["start"] = self.start
        if self.refused_error is not None:
            out["recovered_not_kept"] = self.refused_error
            out["recovered_not_kept_disagreement"] = self.refused_disagreement
        return out


def answer_recovered(trials: list[Trial]) -> bool:
    """Whether a search's answer (its most compressed candidate within the bound) is a refined model."""
    within = [t for t in trials if t.within]
    return bool(within) and max(within, key=lambda t: t.ratio).recovered


# a candidate's refinement: the refined model (or the candidate itself)
Refine = Callable[[onnx.ModelProto], onnx.ModelProto]
# a refined candidate -> the model to factorize the next candidates from (optimize/warm_start.py)
Warm = Callable[[onnx.ModelProto], onnx.ModelProto]


def search_budget(
    pass_: FactorizePass,
    model: onnx.ModelProto,
    ctx: PassContext,
    reference: Reference,
    bound: float,
    steps: int = 8,
    refine: Refine | None = None,
    warm: Warm | None = None,
) -> tuple[PassResult, Verification | None, list[Trial]]:
    """(the result at the largest verified ratio, its verification, every trial). With no ratio
    within the bound the result is the unchanged model.

    With `refine` the unrefined search runs first (each of its candidates costs a factorization and
    a check, seconds, against a refinement's minutes): its answer is within the bound as it is, so
    the refined search starts above it and spends every refinement where refining can add.

    With `warm` too, once a refined candidate is within the bound each later candidate is also
    factorized from `warm(that candidate)`, and refining starts from whichever of the two starts has
    the lower held-out error (both cost a factorization and a check; the refinement is paid once)."""
    reachable = pass_.reachable_ratio(model, ctx)
    best: tuple[PassResult, Verification] | None = None
    trials: list[Trial] = []
    lo, hi = 1.0, reachable * 0.999
    for stage in (None, refine) if refine is not None else (None,):
        if stage is not None:  # above the unrefined answer, below the ratios refining cannot save
            hopeless = [t.ratio for t in trials if max(t.max_relative_error, t.max_disagreement) > HOPELESS * bound]
            hi = min(hopeless, default=reachable * 0.999)
        lo, best = _bisect(pass_, model, ctx, reference, bound, steps, stage, lo, hi, best, trials, warm)
    if best is None:
        _, eligible, skipped = pass_.eligible_layers(model, ctx)
        if trials:
            note = f"no ratio kept the held-out error within {bound:g}; the output equals the normalized input"
        else:  # a quantized model's weights, depthwise convs only, ...: nothing was tried
            note = "no layer can be factorized (the skipped nodes say why); the output equals the normalized input"
        params = sum(layer.params for layer in eligible)
        return PassResult(model, False, [], [] if trials else skipped, [note], params), None, trials
    return best[0], best[1], trials


def _bisect(
    pass_: FactorizePass,
    model: onnx.ModelProto,
    ctx: PassContext,
    reference: Reference,
    bound: float,
    steps: int,
    refine: Refine | None,
    lo: float,
    hi: float,
    best: tuple[PassResult, Verification] | None,
    trials: list[Trial],
    warm: Warm | None = None,
) -> tuple[float, tuple[PassResult, Verification] | None]:
    """Bisection on log(ratio) in (lo, hi): the largest ratio verified within the bound and its
    (result, check), `best` where none beat it; each trial appended to `trials`."""
    source: tuple[onnx.ModelProto, PassContext] | None = None  # the warm start's model, its own cache
    # the ranks of each candidate tried (as factorized from the input model) -> within the bound: a
    # layer's ranks are integers, so nearby ratios can round to one model (a model whose budget is
    # one big layer); its answer is known, and it is neither checked nor refined again
    tried: dict[tuple[tuple[str, str, tuple[int, ...]], ...], bool] = {}
    desc = f"max output error {bound:g}" + (" (recovered)" if refine is not None else "")
    bar = progress_bar(total=steps, desc=desc, unit="model", show=ctx.progress, leave=False)
    for _ in range(steps):
        if hi / lo < 1.02:
            break
        ratio = math.sqrt(lo * hi)
        if ratio <= 1.0 + 1e-6:
            break
        result = pass_(model, replace(ctx, spec=RankSpec(ratio=ratio)))
        ranks = tuple((r.node, r.method, tuple(r.ranks)) for r in result.rewritten)
        if ranks in tried:
            lo, hi = (ratio, hi) if tried[ranks] else (lo, ratio)
            continue
        check = reference.verify(result.model)
        unrefined, seconds, start_from = None, None, None
        refused: tuple[float | None, float | None] = (None, None)
        if refine is not None and warm is not None:
            start_from = "cold"
            if source is not None:
                warmed = pass_(source[0], replace(source[1], spec=RankSpec(ratio=ratio)))
                warm_check = reference.verify(warmed.model)
                if warm_check.max_error < check.max_error:
                    result, check, start_from = warmed, warm_check, "warm"
        if refine is not None:
            unrefined, start = float(check.max_relative_error), time.perf_counter()
            refined = refine(result.model)
            seconds = time.perf_counter() - start
            # training on few samples can overfit them: a refined model worse on the held-out share
            # than the candidate it came from is dropped for that candidate (the bound search
            # selects on this share already; it never reads a model that trained on it). A refine
            # that kept the candidate as it was needs no second check.
            if refined is not result.model:
                again = reference.verify(refined)
                if again.max_error <= check.max_error:
                    result, check = replace(result, model=refined), again
                else:  # trained, and worse here: the report says so
                    refused = (float(again.max_relative_error), float(again.max_disagreement))
        ok = tried[ranks] = check.within(bound)
        trials.append(
            Trial(
                ratio,
                result.eligible_params_after,
                float(check.max_relative_error),
                float(check.max_disagreement),
                ok,
                unrefined,
                seconds,
                start_from,
                *refused,
            )
        )
        bar.update()
        bar.set_postfix_str(f"{ratio:.2f}x {'ok' if ok else 'over'}")
        if ok:  # lo only grows, so the latest model within the bound is the most compressed
            lo, best = ratio, (result, check)
            if refine is not None and warm is not None:  # the weights factor caches knew are gone
                source = (warm(result.model), replace(ctx, cache=FactorCache()))
        else:
            hi = ratio
    bar.close()
    return lo, best
