"""The loop every low-rank pass shares: pick ranks, decompose, emit a chain, keep it only if it pays.

A method plugs in four things: which layers it supports, ranks for a fixed rank or an energy,
candidate (ranks, params, error) points for the global budget, and how to build a Factorization;
it declares how plans name its ranks (`rank_count`, `rounded`), how `auto` uses it (`auto_role`,
`challenge`) and its own parameters, as class attributes of its pass (Tucker-2's HOOI sweeps, CP's
ALS work), not on the shared PassContext.
"""

from __future__ import annotations

import json
import math
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

import numpy as np
import onnx

from tensorfold.decompose.data_aware import damped, output_energies
from tensorfold.decompose.ranks import Option, allocate_budget
from tensorfold.errors import DecompositionError, TensorfoldError
from tensorfold.graph.model import prune_initializers
from tensorfold.graph.normalize import make_name_generator
from tensorfold.passes.base import PASSES, Choice, LayerRecord, Pass, PassContext, PassResult, Plan, RankSpec
from tensorfold.passes.chains import PROVENANCE, ChainBuilder, FactorPool
from tensorfold.passes.layers import Layer, Skip, ensure_node_names, find_layers, group_shared_weights, merged_gram
from tensorfold.progress import bar as progress_bar


@dataclass
class Factorization:
    """Factors of one layer: how to rebuild the weight (for the error) and how to emit ONNX."""

    method: str
    ranks: list[int]
    reconstruct: Callable[[], np.ndarray]
    emit: Callable[[ChainBuilder], None]
    output_error2: float | None = None  # relative squared output error on calibration data, when fitted to it


@dataclass(frozen=True)
class Candidate:
    """One point a budget search can pick for a layer."""

    method: str
    ranks: tuple[int, ...]
    params: int
    error2: float  # relative squared weight error (exact, or a stated estimate)


def method_classes() -> dict[str, type[FactorizePass]]:
    """The registered passes that factorize layers (every method), by name."""
    return {name: cls for name, cls in PASSES.items() if issubclass(cls, FactorizePass)}


def method_pass(name: str) -> FactorizePass:
    """A new instance of the registered method `name`."""
    cls = PASSES[name]
    if not issubclass(cls, FactorizePass):
        raise TypeError(f"pass '{name}' is not a factorization method")
    return cls()


def relative_error(weight: np.ndarray, approx: np.ndarray) -> float:
    norm = float(np.linalg.norm(weight.astype(np.float64)))
    diff = float(np.linalg.norm(weight.astype(np.float64) - approx.astype(np.float64)))
    return diff / norm if norm > 0 else diff


def layer_rows(layer: Layer, weight: np.ndarray) -> list[np.ndarray]:
    """The weight as rows acting on the vectors the layer multiplies, per group: (O/g, C/g * prod(k))
    for a conv (patches ordered like weight[o].ravel()), (N, K) for y = x @ W."""
    if layer.kind == "conv":
        return [w.reshape(w.shape[0], -1).astype(np.float64) for w in np.split(weight, layer.groups, axis=0)]
    return [weight.T.astype(np.float64)]


def layer_output_error2(layer: Layer, approx: np.ndarray) -> float:
    """Relative squared output error of replacing the layer's weight by `approx`, on the data of
    layer.gram (groups pooled)."""
    pairs = [
        output_energies(w, a, damped(layer.statistics.group(g)))
        for g, (w, a) in enumerate(zip(layer_rows(layer, layer.weight), layer_rows(layer, approx)))
    ]
    num, den = sum(p[0] for p in pairs), sum(p[1] for p in pairs)
    return num / den if den > 0 else num


def ladder(n: int, points: int = 48) -> list[int]:
    """Ranks 1..n: all of them when few, else a mix of dense small values and a geometric tail."""
    if n <= points:
        return list(range(1, n + 1))
    values = set(range(1, 9)) | {int(round(v)) for v in np.geomspace(8, n, points - 8)} | {n}
    return sorted(v for v in values if 1 <= v <= n)


class FactorizePass(Pass):
    method: str
    # where the method is listed (--method, `inspect`); a plan may name it per layer (rank search,
    # configs) when plannable
    order: ClassVar[int] = 100
    plannable: ClassVar[bool] = True
    # the layers this method hands to the SVD, exact for a weight that is a matrix: "pointwise"
    # (1x1 convs and matrices), "1x1 conv" (matrices keep the method, as TT-matrices do), or None
    svd_for: ClassVar[str | None] = None
    # how `auto` uses the method: "exact" (its candidates' errors are known without building, so
    # auto ranks them against the other exact methods'), "challenger" (its error is only known once
    # built: auto builds it at the winner's size and keeps it where it measures better, see
    # `challenge`), or None (auto leaves it out)
    auto_role: ClassVar[str | None] = None

    @abstractmethod
    def supports(self, layer: Layer) -> str | None:
        """None if this method can rewrite the layer, else the reason it is skipped."""

    def rank_count(self, layer: Layer) -> int:
        """How many ranks a plan gives this method for `layer` (a pointwise layer is an SVD: one)."""
        return 1

    def rounded(self, ranks: tuple[int, ...], multiple: int) -> tuple[int, ...]:
        """The ranks a hardware-aware plan times: every rank here is a channel count of a chain's
        convs or matrices, rounded up to a multiple the vector units like. A method whose ranks
        are something else (a block count) says how they round."""
        return tuple(r if r < multiple else int(math.ceil(r / multiple) * multiple) for r in ranks)

    def challenge(self, layer: Layer, params: int, ctx: PassContext) -> Factorization | None:
        """A challenger's factorization of `layer` in about `params` parameters, for auto to
        compare with the exact methods' best; None where it declines (too costly, unstable, or
        without a way to use the layer's statistics)."""
        return None

    def handler(self, layer: Layer) -> FactorizePass:
        """The pass that decomposes `layer` for this method: the SVD for the layers it hands over."""
        return self.svd if self.by_svd(layer) else self

    # --- what a method implements for the layers it decomposes itself (a pass that overrides the
    # dispatchers below, as auto and planned do, needs none of these) -------------------------

    def _missing(self, hook: str) -> TypeError:
        return TypeError(f"{type(self).__name__} implements neither {hook} nor the dispatcher that calls it")

    def method_ranks(self, layer: Layer, spec: RankSpec) -> tuple[int, ...]:
        """Ranks for a fixed --rank or an --energy threshold (spec.ratio is handled by the budget)."""
        raise self._missing("method_ranks")

    def method_candidates(self, layer: Layer) -> list[Candidate]:
        """Rank choices with their parameter count and error, for the global budget."""
        raise self._missing("method_candidates")

    def method_build(self, layer: Layer, ranks: tuple[int, ...], ctx: PassContext) -> Factorization:
        """Decompose the layer at these ranks."""
        raise self._missing("method_build")

    def method_params(self, layer: Layer, ranks: tuple[int, ...]) -> int | None:
        """The factors' parameter count at these ranks when known without decomposing (None:
        only the build can tell). Lets the loop refuse a chain that cannot be smaller for free:
        `--energy 1` or a huge `--rank` must not run a decomposition only to throw it away."""
        return None

    def method_macs(self, layer: Layer, ranks: tuple[int, ...]) -> int | None:
        """Multiply-adds the chain spends per output position (a conv) or output row (a matrix),
        where the layer spends layer.params; None where only the build can tell. The default: one
        multiply-add per factor parameter, as for the SVD (both factors run at the output's
        positions). A chain whose factors run at more positions (a stride applied late) or on a
        wider intermediate state (a TT-matrix) says so."""
        return self.method_params(layer, ranks)

    # --- what the loop calls: the SVD's layers go to the SVD, the rest to the method -------

    def by_svd(self, layer: Layer) -> bool:
        if self.svd_for == "pointwise":
            return layer.is_pointwise
        return self.svd_for == "1x1 conv" and layer.kind == "conv" and layer.is_pointwise

    @cached_property
    def svd(self) -> FactorizePass:
        return method_pass("svd")

    def ranks_for(self, layer: Layer, spec: RankSpec) -> Choice:
        if self.by_svd(layer):
            return Choice("svd", self.svd.method_ranks(layer, spec))
        return Choice(self.method, self.method_ranks(layer, spec))

    def candidates(self, layer: Layer) -> list[Candidate]:
        return self.svd.candidates(layer) if self.by_svd(layer) else self.method_candidates(layer)

    def build(self, layer: Layer, choice: Choice, ctx: PassContext) -> Factorization:
        if self.by_svd(layer):
            return self.svd.method_build(layer, choice.ranks, ctx)
        return self.method_build(layer, choice.ranks, ctx)

    def params_for(self, layer: Layer, choice: Choice) -> int | None:
        if self.by_svd(layer):
            return self.svd.method_params(layer, choice.ranks)
        return self.method_params(layer, choice.ranks)

    def macs_for(self, layer: Layer, choice: Choice) -> int | None:
        if self.by_svd(layer):
            return self.svd.method_macs(layer, choice.ranks)
        return self.method_macs(layer, choice.ranks)

    def costs_more(self, layer: Layer, choice: Choice) -> bool:
        """Whether the chain spends more multiply-adds than the layer: a rewrite that cannot be
        faster, whatever it saves in parameters (a TT-matrix at high bond ranks: 3.3 GFLOPs in
        place of a 384x384 MatMul's 76 MFLOPs on a ViT)."""
        macs = self.macs_for(layer, choice)
        return macs is not None and macs > layer.params

    # --- the shared loop -------------------------------------------------------------------

    def eligible_layers(
        self, model: onnx.ModelProto, ctx: PassContext
    ) -> tuple[onnx.ModelProto, list[Layer], list[Skip]]:
        """A named copy of the model, the layers this method can rewrite (with their calibration
        statistics attached), and the skipped nodes with their reasons."""
        work = onnx.ModelProto()
        work.CopyFrom(model)
        ensure_node_names(work)
        layers, skipped = find_layers(work, ctx.include, ctx.exclude)
        eligible = []
        for layer in layers:
            layer.gram = (ctx.stats or {}).get(layer.name)
            layer.weight = ctx.cache.weights.setdefault(
                (layer.name, layer.node.input[1], layer.weight.shape), layer.weight
            )
            reason = self.supports(layer)
            if reason:
                skipped.append(Skip(layer.name, layer.node.op_type, reason))
            else:
                eligible.append(layer)
        eligible, shared_skips = group_shared_weights(work, eligible)
        skipped.extend(shared_skips)
        groups: dict[str, list[Layer]] = {}
        for layer in eligible:
            if layer.sharers:
                groups.setdefault(layer.key, []).append(layer)
        for group in groups.values():  # one factorization fits every use of a shared weight
            gram = merged_gram(group)
            for layer in group:
                layer.gram = gram
        return work, eligible, skipped

    def reachable_ratio(self, model: onnx.ModelProto, ctx: PassContext) -> float:
        """The largest --ratio this method can meet on the model (1.0 when nothing can shrink)."""
        _, layers, _ = self.eligible_layers(model, ctx)
        layers = [layer for layer in layers if layer.leads]  # a shared weight counts once
        total = sum(layer.params for layer in layers)
        smallest = sum(
            min(
                [layer.params]
                + [c.params for c in self.candidates_of(layer, ctx) if ctx.force or c.params < layer.params]
            )
            for layer in layers
        )
        return total / smallest if smallest else 1.0

    def call(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        work, eligible, skipped = self.eligible_layers(model, ctx)
        plan, notes = self.plan(eligible, ctx)
        leaders: dict[str, str] = {}
        for layer in eligible:  # every user of a shared weight takes its first user's ranks
            if layer.sharers:
                lead = leaders.setdefault(layer.key, layer.name)
                plan[layer.name] = plan.get(lead)
        fresh = make_name_generator(work)
        replacements: dict[str, ChainBuilder] = {}
        records: list[LayerRecord] = []
        pool: FactorPool = {}  # factor tensors already in the graph, by content: shared weights' users reuse them
        bar = progress_bar(
            eligible, desc=f"{self.name}", unit="layer", show=ctx.progress and bool(eligible), leave=False
        )
        for layer in bar:
            bar.set_postfix_str(layer.name[-30:])
            choice = plan.get(layer.name)
            if choice is None:
                skipped.append(Skip(layer.name, layer.node.op_type, self.keep_reason(layer, ctx)))
                continue
            outcome = self._rewrite(layer, choice, ctx, fresh, pool)
            if isinstance(outcome, Skip):
                skipped.append(outcome)
                continue
            builder, record = outcome
            replacements[layer.name] = builder
            records.append(record)
            pool.update(builder.pooled)
        # a shared weight is rewritten for all its users or for none: one user kept whole keeps
        # the weight, and the others' factors would come on top
        for layer in eligible:
            if layer.sharers and layer.name not in replacements:
                for other in layer.sharers:
                    if replacements.pop(other, None) is not None:
                        records = [r for r in records if r.node != other]
                        skipped.append(
                            Skip(
                                other,
                                layer.node.op_type,
                                f"shares its weight with {layer.name}, which is kept whole; kept whole too",
                            )
                        )
        eligible_params = sum(layer.params for layer in eligible if layer.leads)
        if not replacements:
            return PassResult(model, False, [], skipped, notes, eligible_params)
        new_nodes = []
        for node in work.graph.node:
            chain = replacements.get(node.name)
            if chain is None:
                new_nodes.append(node)
            else:
                new_nodes.extend(chain.nodes)
                work.graph.initializer.extend(chain.initializers)
        del work.graph.node[:]
        work.graph.node.extend(new_nodes)
        # the chains' intermediate values have no recorded shapes yet; stale entries would mislead
        prune_initializers(work)
        return PassResult(work, True, records, skipped, notes, eligible_params)

    def keep_reason(self, layer: Layer, ctx: PassContext) -> str:
        """Why the plan left this layer whole."""
        return (ctx.planner.reasons.get(layer.name) if ctx.planner is not None else None) or (
            "kept whole: the budget gains more from other layers"
        )

    def _cache_key(self, layer: Layer, *rest: object) -> tuple[object, ...]:
        return (self.method, layer.key, layer.node.input[1], tuple(layer.weight.shape), layer.gram is not None, *rest)

    def factorization(self, layer: Layer, choice: Choice, ctx: PassContext) -> Factorization:
        """build(), remembered in ctx.cache: a planner that tried this choice already paid for it."""
        memo = ctx.cache.factorizations
        key = self._cache_key(layer, choice)
        if key not in memo:
            memo[key] = self.build(layer, choice, ctx)
        return memo[key]

    def weight_error(self, layer: Layer, choice: Choice, ctx: PassContext) -> tuple[Factorization, float]:
        """The factorization and its relative weight error, both remembered: a search that revisits
        a choice pays for neither again."""
        fac = self.factorization(layer, choice, ctx)
        errors = ctx.cache.errors
        key = self._cache_key(layer, choice)
        if key not in errors:
            errors[key] = relative_error(layer.weight, fac.reconstruct())
        return fac, errors[key]

    def output_error(self, layer: Layer, choice: Choice, ctx: PassContext) -> float | None:
        """Relative output error of the layer's factorization on the calibration data (None without)."""
        if layer.gram is None:
            return None
        fac = self.factorization(layer, choice, ctx)
        if fac.output_error2 is None:
            fac.output_error2 = layer_output_error2(layer, fac.reconstruct())
        return float(np.sqrt(max(fac.output_error2, 0.0)))

    def candidates_of(self, layer: Layer, ctx: PassContext) -> list[Candidate]:
        """candidates(), remembered in ctx.cache: a budget search at several ratios builds each
        curve once. A candidate that spends more multiply-adds than the layer is left out (unless
        --force): no ratio, energy or bound should buy parameters with speed."""
        memo = ctx.cache.candidates
        key = self._cache_key(layer, ctx.force)
        if key not in memo:
            cands = self.candidates(layer)
            memo[key] = cands if ctx.force else [c for c in cands if not self.costs_more(layer, self.ranks_of(c))]
        return memo[key]

    def _rewrite(
        self,
        layer: Layer,
        choice: Choice,
        ctx: PassContext,
        fresh: Callable[[str], str],
        pool: FactorPool | None = None,
    ) -> Skip | tuple[ChainBuilder, LayerRecord]:
        op = layer.node.op_type
        predicted = self.params_for(layer, choice)
        if predicted is not None and predicted >= layer.params and not ctx.force:
            return Skip(
                layer.name,
                op,
                f"{choice} give at least {predicted} params, not fewer "
                f"than the layer's {layer.params} (use --force to rewrite anyway)",
            )
        if not ctx.force and self.costs_more(layer, choice):
            return Skip(
                layer.name,
                op,
                f"{choice} cost {self.macs_for(layer, choice)} multiply-adds per output, more than the "
                f"layer's {layer.params}: it could not run faster (use --force to rewrite anyway)",
            )
        try:
            fac, error = self.weight_error(layer, choice, ctx)
        except DecompositionError as exc:
            return Skip(layer.name, op, f"{self.method} failed: {exc}")
        except MemoryError as exc:
            raise TensorfoldError(
                f"layer {layer.name} (weight {list(layer.weight.shape)}): {choice} "
                f"do not fit in memory ({str(exc)[:160]}); ask for smaller ranks"
            ) from None
        if not np.isfinite(error):
            return Skip(layer.name, op, f"{fac.method} gave a non-finite result")
        # "output": the value the chain writes in the layer's place, whatever its last node is (feature
        # distillation reads the chains' outputs by it; the TT-matrix chain ends in a Reshape)
        doc = PROVENANCE + json.dumps(
            {
                "original": layer.name,
                "op": op,
                "method": fac.method,
                "ranks": list(fac.ranks),
                "weight_error": round(error, 6),
                "output": layer.node.output[0],
            }
        )
        builder = ChainBuilder(layer, fac.method, fresh, doc, pool if layer.sharers else None)
        fac.emit(builder)
        # a later user of a shared weight adds no parameters of its own: compare the chain in full
        chain_params = builder.params + builder.reused_params
        if chain_params >= layer.params and not ctx.force:
            return Skip(
                layer.name,
                op,
                f"{fac.method} ranks {list(fac.ranks)} give {chain_params} params, "
                f"not fewer than the layer's {layer.params} (use --force to rewrite anyway)",
            )
        record = LayerRecord(
            layer.name,
            op,
            fac.method,
            [int(r) for r in fac.ranks],
            layer.params if layer.leads else 0,
            builder.params,
            error,
            [n.name for n in builder.nodes],
            self.output_error(layer, choice, ctx),
            shared_with=[n for n in layer.sharers if n != layer.name],
        )
        return builder, record

    def plan(self, layers: list[Layer], ctx: PassContext) -> tuple[Plan, list[str]]:
        if ctx.planner is not None:
            return ctx.planner(self, layers, ctx)
        return self.spec_plan(layers, ctx)

    def spec_plan(self, layers: list[Layer], ctx: PassContext) -> tuple[Plan, list[str]]:
        """Ranks from the rank spec alone: a fixed rank, an energy, EVBMF or the global budget."""
        spec = ctx.spec
        if spec.ratio is None:
            return {
                layer.name: self.data_ranks_for_energy(layer, ctx) or self.ranks_for(layer, spec) for layer in layers
            }, []
        return self.budget_plan(layers, spec.ratio, ctx)

    def data_ranks_for_energy(self, layer: Layer, ctx: PassContext) -> Choice | None:
        """With calibration statistics an energy is the share of the layer's *output* energy kept:
        the smallest candidate whose relative squared output error is at most 1 - energy."""
        spec = ctx.spec
        if layer.gram is None or spec.rank is not None or spec.evbmf:
            return None
        fits = [c for c in self.candidates_of(layer, ctx) if c.error2 <= 1.0 - spec.effective_energy + 1e-12]
        if not fits:
            return None
        return self.ranks_of(min(fits, key=lambda c: (c.params, c.error2)))

    def budget_plan(self, layers: list[Layer], ratio: float, ctx: PassContext) -> tuple[Plan, list[str]]:
        """Meet `ratio` over these layers together, giving rank where it costs least error (each
        layer's squared error scaled by ctx.layer_weights[name] when given)."""
        force, progress, weights = ctx.force, ctx.progress, ctx.layer_weights
        if not layers:
            return {}, []
        users: dict[str, list[Layer]] = {}
        for layer in layers:
            users.setdefault(layer.key, []).append(layer)
        every, layers = layers, [group[0] for group in users.values()]  # a shared weight: one choice
        total = sum(layer.params for layer in layers)
        options: list[list[Option]] = []
        choices: list[list[Candidate | None]] = []
        for layer in progress_bar(layers, desc=f"{self.name}: error curves", unit="layer", show=progress, leave=False):
            cands = [c for c in self.candidates_of(layer, ctx) if force or c.params < layer.params]
            # every use of a shared weight suffers its error
            scale = sum((weights or {}).get(user.name, 1.0) for user in users[layer.key])
            opts = [Option(layer.params, 0.0)] + [Option(c.params, c.error2 * scale) for c in cands]
            options.append(opts)
            choices.append([None] + cands)
        budget = int(total / ratio)
        smallest = sum(min(o.params for o in opts) for opts in options)
        if smallest > budget:
            raise TensorfoldError(
                f"--ratio {ratio:g} is out of reach for {self.method}: the smallest factorization of the "
                f"{len(layers)} layers it can rewrite holds {smallest} of their {total} parameters, "
                f"{total / max(smallest, 1):.1f}x at most"
            )
        picked = allocate_budget(options, budget)
        plan: Plan = {}
        for layer, idx, row in zip(layers, picked, choices):
            chosen = row[idx]
            for user in users[layer.key]:
                plan[user.name] = None if chosen is None else self.ranks_of(chosen)
        kept = sum(1 for v in plan.values() if v is None)
        layers = every
        return plan, [f"budget: {total} -> at most {budget} parameters over {len(layers)} layers ({kept} kept whole)"]

    def ranks_of(self, candidate: Candidate) -> Choice:
        """What plan() hands to build() for this candidate."""
        return Choice(candidate.method, candidate.ranks)
