"""A factorization chosen layer by layer: method and ranks given per node (a rank search's trial,
or a config file that `optimize --config` replays).

The method passes are kept on the instance, so their factorization memo lives as long as the
planned pass: a search that revisits a (layer, method, ranks) pays for its decomposition once.
"""

from __future__ import annotations

from tensorfold.errors import TensorfoldError
from tensorfold.log import warn
from tensorfold.passes import PLANNABLE
from tensorfold.passes.base import Choice, PassContext, Plan, RankSpec
from tensorfold.passes.factorize import Candidate, Factorization, FactorizePass, method_pass
from tensorfold.passes.layers import Layer


def rank_count(method: str, layer: Layer) -> int:
    """How many ranks `method` takes for this layer: the method's own pass says."""
    return method_pass(method).rank_count(layer)


def check_choice(layer: Layer, choice: Choice | None, source: str) -> None:
    """A plan's choice fits the layer, or a one-line error naming both."""
    if choice is None:
        return
    want = rank_count(choice.method, layer)
    if len(choice.ranks) != want:
        raise TensorfoldError(
            f"{source}: layer '{layer.name}' takes {want} {choice.method} rank(s), the plan gives "
            f"{len(choice.ranks)} ({list(choice.ranks)})"
        )


class PlannedPass(FactorizePass):
    name = method = "planned"
    plannable = False

    def __init__(self) -> None:
        # the plannable methods (a pointwise layer is an SVD whatever method is asked)
        self.methods: dict[str, FactorizePass] = {name: method_pass(name) for name in PLANNABLE}
        # node name -> its Choice, or None to keep the layer; set before each call
        self.choices: Plan = {}

    def supports(self, layer: Layer) -> str | None:
        return None

    def candidates(self, layer: Layer) -> list[Candidate]:
        raise TensorfoldError("a planned factorization has no candidates of its own: its plan names them")

    def ranks_for(self, layer: Layer, spec: RankSpec) -> Choice:
        raise TensorfoldError("a planned factorization takes its ranks from its plan, not from a rank spec")

    def plan(self, layers: list[Layer], ctx: PassContext) -> tuple[Plan, list[str]]:
        return {layer.name: self.choices.get(layer.name) for layer in layers}, []

    def keep_reason(self, layer: Layer, ctx: PassContext) -> str:
        return "kept whole by the plan"

    def macs_for(self, layer: Layer, choice: Choice) -> int | None:
        chosen = self.methods.get(choice.method)
        return None if chosen is None else chosen.macs_for(layer, choice)

    def build(self, layer: Layer, choice: Choice, ctx: PassContext) -> Factorization:
        method = choice.method
        if method not in self.methods:
            raise TensorfoldError(f"unknown method '{method}' for {layer.name} (choose from {', '.join(PLANNABLE)})")
        chosen = self.methods[method]
        reason = chosen.supports(layer)
        if reason is not None:
            raise TensorfoldError(f"{layer.name}: {reason}")
        check_choice(layer, choice, "plan")
        fac = chosen.factorization(layer, choice, ctx)
        if list(fac.ranks) != list(choice.ranks):
            # a config's rank above what the layer holds is clipped to it (was: silently)
            warn(
                f"{layer.name}: the plan's {method} ranks {list(choice.ranks)} are above what the layer "
                f"holds; built at {list(fac.ranks)}"
            )
        return fac
