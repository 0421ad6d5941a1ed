"""Pass infrastructure: a pass checks what it needs, rewrites, checks what it promised, and reports.

Modelled on onnx-ir's PassBase (call -> PassResult(model, modified), requires/ensures hooks) and
Olive's declared pass parameters. Passes work on a copy: the caller's model is never mutated.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
import onnx

from tensorfold.errors import TensorfoldError
from tensorfold.onnxrt import large
from tensorfold.passes.layers import Layer, Skip

if TYPE_CHECKING:
    from tensorfold.decompose.data_aware import InputGram
    from tensorfold.passes.factorize import Candidate, Factorization, FactorizePass


@dataclass(frozen=True)
class RankSpec:
    """How ranks are chosen. At most one of rank / energy / ratio; none means the default energy."""

    rank: int | None = None
    energy: float | None = None
    ratio: float | None = None
    evbmf: bool = False  # ranks from empirical variational Bayes (Nakajima 2013; Kim et al. 2016)

    DEFAULT_ENERGY: ClassVar[float] = 0.95

    def __post_init__(self) -> None:
        given = [k for k in ("rank", "energy", "ratio") if getattr(self, k) is not None]
        given += ["evbmf"] if self.evbmf else []
        if len(given) > 1:
            raise TensorfoldError(f"choose one of --rank, --energy, --ratio, --evbmf (got {', '.join(given)})")
        if self.rank is not None and self.rank < 1:
            raise TensorfoldError(f"--rank must be >= 1 (got {self.rank})")
        if self.energy is not None and not 0 < self.energy <= 1:
            raise TensorfoldError(f"--energy must be in (0, 1] (got {self.energy})")
        if self.ratio is not None and not self.ratio > 1:
            raise TensorfoldError(f"--ratio must be > 1 (got {self.ratio})")

    @property
    def effective_energy(self) -> float:
        return self.energy if self.energy is not None else self.DEFAULT_ENERGY

    def describe(self) -> str:
        if self.rank is not None:
            return f"rank {self.rank}"
        if self.ratio is not None:
            return f"ratio {self.ratio:g}"
        if self.evbmf:
            return "EVBMF"
        return f"energy {self.effective_energy:g}" + ("" if self.energy is not None else " (default)")


@dataclass(frozen=True)
class Choice:
    """What a plan gives one layer: a method and its ranks (Tucker-2: output and input ranks; TT:
    its bonds; SVD and CP: one). Plans, planners, latency tables, configs and the rank search all
    speak it; None in a plan keeps the layer whole."""

    method: str
    ranks: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "ranks", tuple(int(r) for r in self.ranks))

    def __str__(self) -> str:
        return f"{self.method} ranks {list(self.ranks)}"


Plan = dict[str, "Choice | None"]


class Planner(Protocol):
    """Ranks chosen in place of the rank spec's plan: hardware-aware selection by measured latency
    (planning/hardware_aware.py), one layer alone for a sensitivity probe (calibration/sensitivity.py)."""

    reasons: dict[str, str]  # layer name -> why the plan keeps it whole (the pass reports it)

    def __call__(self, pass_: FactorizePass, layers: list[Layer], ctx: PassContext) -> tuple[Plan, list[str]]:
        """{layer name: Choice, or None to keep it whole} and notes for the report."""


@dataclass
class FactorCache:
    """Decompositions already paid for: a budget search, a hardware-aware planner or a rank search
    that revisits a (method, layer, ranks) reuses them. Keys name the method, the node, its weight
    (initializer name and shape) and whether calibration statistics shaped the result; the cache
    lives as long as the PassContext holding it, or longer where a search hands one to every trial."""

    factorizations: dict[tuple[Any, ...], Factorization] = field(default_factory=dict)
    errors: dict[tuple[Any, ...], float] = field(default_factory=dict)
    candidates: dict[tuple[Any, ...], list[Candidate]] = field(default_factory=dict)
    # each layer's weight array, read once: the factorizations above hold their layers, and every
    # call of a pass reads the weights afresh (an `optimize --recover` search on a ViT-S held
    # 4.5 copies of them, 432 MB, before this)
    weights: dict[tuple[Any, ...], np.ndarray] = field(default_factory=dict)


@dataclass
class PassContext:
    spec: RankSpec = field(default_factory=RankSpec)
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    force: bool = False
    progress: bool = True
    seed: int = 0
    planner: Planner | None = None  # replaces the rank spec's plan
    # {layer name: InputGram} from calibration data: factors and rank curves fit the layers' outputs
    stats: dict[str, InputGram] | None = None
    # {layer name: weight} on each layer's squared error in the global budget (measured sensitivity)
    layer_weights: dict[str, float] | None = None
    cache: FactorCache = field(default_factory=FactorCache)


@dataclass
class LayerRecord:
    """What happened to one rewritten node (also written into the new nodes' doc_string)."""

    node: str
    op: str
    method: str
    ranks: list[int]
    params_before: int
    params_after: int
    weight_error: float
    new_nodes: list[str]
    output_error: float | None = None  # relative output error of this layer on the calibration data
    shared_with: list[str] = field(default_factory=list)  # other users of the same factors (shared weight)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PassResult:
    model: onnx.ModelProto
    modified: bool
    rewritten: list[LayerRecord] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    eligible_params: int = 0  # weights of every layer the pass could rewrite (what --ratio divides)

    @property
    def eligible_params_after(self) -> int:
        return self.eligible_params - sum(r.params_before - r.params_after for r in self.rewritten)


class Pass(ABC):
    """A graph rewrite. Subclasses set `name` and implement `call`."""

    name: ClassVar[str]

    def requires(self, model: onnx.ModelProto, ctx: PassContext) -> None:  # noqa: B027 - an optional hook
        """Raise TensorfoldError if the model is not in a form this pass can work on."""

    @abstractmethod
    def call(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        """Return a new model (never mutate `model`)."""

    def ensures(self, result: PassResult, ctx: PassContext, input_valid: bool = True) -> None:
        """Check the promise every pass makes: a valid input gives a valid ONNX model."""
        if result.modified and input_valid:
            try:
                large.check_model(result.model, full_check=False)
            except onnx.checker.ValidationError as exc:  # a bug in the pass, not a user error
                raise RuntimeError(f"pass '{self.name}' produced an invalid model: {exc}") from exc

    def __call__(self, model: onnx.ModelProto, ctx: PassContext | None = None) -> PassResult:
        ctx = ctx or PassContext()
        self.requires(model, ctx)
        # proving the input untouched costs two serializations of the whole model per call (a
        # budget search calls a pass many times): a check the test suite turns on, not every user
        paranoid = os.environ.get("TENSORFOLD_CHECK_PASSES") == "1" and not large.is_large(model)
        before = model.SerializeToString(deterministic=True) if paranoid else None
        try:
            large.check_model(model, full_check=False)
            input_valid = True
        except onnx.checker.ValidationError:
            input_valid = False  # not this pass's doing; verification reports it on the output
        result = self.call(model, ctx)
        if paranoid and model.SerializeToString(deterministic=True) != before:
            raise RuntimeError(f"pass '{self.name}' modified its input model in place")
        self.ensures(result, ctx, input_valid)
        return result


PASSES: dict[str, type[Pass]] = {}


def register_pass(cls: type[Pass]) -> type[Pass]:
    if cls.name in PASSES:
        raise ValueError(f"pass name '{cls.name}' registered twice")
    PASSES[cls.name] = cls
    return cls


def get_pass(name: str) -> Pass:
    from tensorfold import passes as _  # noqa: F401 - importing the package registers every pass

    if name not in PASSES:
        raise TensorfoldError(f"unknown method '{name}' (choose from {', '.join(sorted(PASSES))})")
    return PASSES[name]()
