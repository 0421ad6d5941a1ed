"""The rank search space: per layer a method and a size, or a global ratio with per-layer offsets.

A layer's options are the candidate (method, ranks) points its method passes offer, sorted by
parameter count and pruned to the efficient ones (each has less weight error than every smaller
one; for Tucker-2 that drops unbalanced (out, in) rank pairs). A trial picks a size as a share of
the layer's parameters and takes the largest candidate of the chosen method within it, so every
method shares one continuous knob.

Per-layer mode (up to PER_LAYER_MAX layers): `<node>.method` in keep + methods, `<node>.size` in
(smallest share, 1), log scale. Global mode (larger models): `method`, `ratio` (a budget for the
whole set of layers, allocated where it costs least weight error, as `optimize --ratio` does),
and `<node>.offset` in -3..3 steps along the candidate ladder for the OFFSET_LAYERS largest
layers, so 100+ layers stay a search over about ten numbers.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import onnx

from tensorfold.decompose.ranks import Option, allocate_budget
from tensorfold.errors import TensorfoldError
from tensorfold.passes import PLANNABLE
from tensorfold.passes.base import Choice, FactorCache, PassContext, PassResult, Plan
from tensorfold.passes.factorize import Candidate
from tensorfold.passes.layers import Layer, ensure_node_names, find_layers
from tensorfold.passes.planned import PlannedPass
from tensorfold.progress import bar as progress_bar
from tensorfold.search.objectives import parse_names

PER_LAYER_MAX = 24
OFFSET_LAYERS = 8
OFFSET_STEPS = 3


@dataclass
class LayerOptions:
    layer: Layer
    by_method: dict[str, list[Candidate]] = field(default_factory=dict)  # sorted by params, all < layer.params

    @property
    def name(self) -> str:
        return self.layer.name

    def smallest_share(self) -> float:
        return min(c[0].params for c in self.by_method.values()) / self.layer.params

    def pick(self, method: str, share: float) -> Candidate:
        """The largest (so least-error) candidate of `method` within share * layer params, or the smallest."""
        cands = self.by_method[method]
        fits = [c for c in cands if c.params <= share * self.layer.params]
        return fits[-1] if fits else cands[0]


def parse_methods(text: str | tuple | list) -> tuple[str, ...]:
    return parse_names(text, PLANNABLE, "method", " for the rank search", unique=False)


def fingerprint(layers: list[Layer]) -> str:
    """Names, ops and weight shapes of the searchable layers: what a plan depends on."""
    desc = [[la.name, la.node.op_type, list(la.weight.shape), la.groups] for la in layers]
    return hashlib.sha256(json.dumps(desc).encode()).hexdigest()[:16]


class RankSpace:
    def __init__(
        self,
        model: onnx.ModelProto,
        methods: tuple[str, ...] = ("svd", "tucker"),
        mode: str = "auto",
        include: tuple[str, ...] = (),
        exclude: tuple[str, ...] = (),
        progress: bool = True,
    ):
        self.model = onnx.ModelProto()
        self.model.CopyFrom(model)
        ensure_node_names(self.model)
        self.methods = parse_methods(methods)
        self.planned = PlannedPass()
        self.cache = FactorCache()
        layers, _ = find_layers(self.model, include, exclude)
        self.layers: list[LayerOptions] = []
        for layer in progress_bar(layers, desc="search space", unit="layer", show=progress, leave=False):
            opts = LayerOptions(layer)
            for method in self.methods:
                chosen = self.planned.methods[method]
                if chosen.supports(layer) is not None:
                    continue
                for c in sorted(chosen.candidates(layer), key=lambda c: (c.params, c.error2)):
                    # a pointwise layer is an SVD under every method: one entry, keyed by what it is
                    kept = opts.by_method.setdefault(c.method, [])
                    if c.params < layer.params and (not kept or c.error2 < kept[-1].error2):
                        kept.append(c)
            opts.by_method = {m: cands for m, cands in opts.by_method.items() if cands}
            if opts.by_method:
                self.layers.append(opts)
        if not self.layers:
            raise TensorfoldError(
                f"no layer of this model can be factorized by {', '.join(self.methods)} "
                f"into fewer parameters; nothing to search"
            )
        if mode not in ("auto", "per-layer", "global"):
            raise TensorfoldError(f"unknown search space '{mode}' (choose auto, per-layer or global)")
        self.mode = mode if mode != "auto" else ("per-layer" if len(self.layers) <= PER_LAYER_MAX else "global")
        self.total_params = sum(o.layer.params for o in self.layers)
        self.fingerprint = fingerprint([o.layer for o in self.layers])

    def describe(self) -> dict:
        return {
            "mode": self.mode,
            "methods": list(self.methods),
            "layers": len(self.layers),
            "fingerprint": self.fingerprint,
        }

    # --- sampling ------------------------------------------------------------------------------

    def suggest(self, trial) -> Plan:
        return self._suggest_per_layer(trial) if self.mode == "per-layer" else self._suggest_global(trial)

    def _suggest_per_layer(self, trial) -> Plan:
        plan: Plan = {}
        for opts in self.layers:
            method = trial.suggest_categorical(f"{opts.name}.method", ["keep", *opts.by_method])
            share = trial.suggest_float(f"{opts.name}.size", opts.smallest_share(), 1.0, log=True)
            if method == "keep":
                plan[opts.name] = None
            else:
                c = opts.pick(method, share)
                plan[opts.name] = Choice(c.method, c.ranks)
        return plan

    def keep_all_params(self) -> dict:
        """Per-layer trial parameters that keep every layer: the input model as a trial."""
        out = {}
        for opts in self.layers:
            out[f"{opts.name}.method"] = "keep"
            out[f"{opts.name}.size"] = 1.0
        return out

    def max_ratio(self, method: str) -> float:
        smallest = sum(self._ladder(o, method)[1].params for o in self.layers)
        return self.total_params / smallest

    def _ladder(self, opts: LayerOptions, method: str) -> list[Candidate | None]:
        """None (keep) then the candidates of `method`, or of the layer's first method if it lacks it."""
        own = opts.by_method.get(method) or next(iter(opts.by_method.values()))
        return [None, *own]

    def _suggest_global(self, trial) -> Plan:
        methods = sorted({m for o in self.layers for m in o.by_method})
        method = trial.suggest_categorical("method", methods) if len(methods) > 1 else methods[0]
        ratio = trial.suggest_float("ratio", 1.05, max(1.1, self.max_ratio(method)), log=True)
        ladders = [self._ladder(o, method) for o in self.layers]
        options = [
            [Option(o.layer.params, 0.0)] + [Option(c.params, c.error2) for c in lad[1:]]
            for o, lad in zip(self.layers, ladders)
        ]
        picked = allocate_budget(options, int(self.total_params / ratio))
        largest = sorted(range(len(self.layers)), key=lambda i: -self.layers[i].layer.params)[:OFFSET_LAYERS]
        for i in largest:
            # one step up the ladder is a larger candidate; index 0 (keep) sits above the largest one
            offset = trial.suggest_int(f"{self.layers[i].name}.offset", -OFFSET_STEPS, OFFSET_STEPS)
            idx = picked[i] if picked[i] > 0 else len(ladders[i])
            idx = min(max(1, idx + offset), len(ladders[i]))
            picked[i] = 0 if idx == len(ladders[i]) else idx
        plan: Plan = {}
        for opts, lad, idx in zip(self.layers, ladders, picked):
            c = lad[idx]
            plan[opts.name] = None if c is None else Choice(c.method, c.ranks)
        return plan

    # --- assembly ------------------------------------------------------------------------------

    def assemble(self, plan: Plan, seed: int = 0) -> PassResult:
        """The model with these layers rewritten; every trial shares one FactorCache, so a
        (layer, method, ranks) that comes back is decomposed once per search."""
        unknown = set(plan) - {o.name for o in self.layers}
        if unknown:
            raise TensorfoldError(f"the plan names layers this model's search space lacks: {sorted(unknown)[:3]}")
        self.planned.choices = dict(plan)
        return self.planned(self.model, PassContext(progress=False, seed=seed, cache=self.cache))


def encode_plan(plan: Plan) -> dict:
    """JSON/YAML form: node -> {method, ranks} or "keep"."""
    return {name: "keep" if v is None else {"method": v.method, "ranks": list(v.ranks)} for name, v in plan.items()}


def decode_plan(data: dict, source: str = "plan") -> Plan:
    plan: Plan = {}
    if not isinstance(data, dict):
        raise TensorfoldError(f"{source}: 'layers' must map node names to a method and ranks")
    for name, v in data.items():
        if v == "keep" or v is None:
            plan[name] = None
        elif (
            isinstance(v, dict)
            and v.get("method") in PLANNABLE
            and isinstance(v.get("ranks"), list)
            and all(isinstance(r, int) and r >= 1 for r in v["ranks"])
        ):
            plan[name] = Choice(v["method"], v["ranks"])
        else:
            raise TensorfoldError(
                f"{source}: layer '{name}' needs 'keep' or {{method: {'|'.join(PLANNABLE)}, "
                f"ranks: [positive integers]}} (got {v!r})"
            )
    return plan
