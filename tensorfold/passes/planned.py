"""A factorization chosen layer by layer: method and ranks given per node (a rank search's trial,
or a config file that `optimize --config` replays).

The method passes are kept on the instance, so their factorization memo lives as long as the
planned pass: a search that revisits a (layer, method, ranks) pays for its decomposition once.
"""

from __future__ import annotations

from tensorfold.errors import TensorfoldError
from tensorfold.passes.base import PassContext, RankSpec
from tensorfold.passes.cp import CPPass
from tensorfold.passes.factorize import Candidate, Factorization, FactorizePass
from tensorfold.passes.layers import Layer
from tensorfold.passes.svd import SVDPass
from tensorfold.passes.tt import TTPass
from tensorfold.passes.tucker import TuckerPass

# the methods a plan may name; a pointwise layer is an SVD whatever method is asked
PLANNABLE = ("svd", "tucker", "cp", "tt")


class PlannedPass(FactorizePass):
    name = method = "planned"

    def __init__(self):
        self.methods: dict[str, FactorizePass] = {"svd": SVDPass(), "tucker": TuckerPass(), "cp": CPPass(),
                                                  "tt": TTPass()}
        # node name -> (method, *ranks), or None to keep the layer; set before each call
        self.choices: dict[str, tuple | None] = {}

    def supports(self, layer: Layer) -> str | None:
        return None

    def candidates(self, layer: Layer) -> list[Candidate]:
        raise TensorfoldError("a planned factorization has no candidates of its own: its plan names them")

    def ranks_for(self, layer: Layer, spec: RankSpec):
        raise TensorfoldError("a planned factorization takes its ranks from its plan, not from a rank spec")

    def plan(self, layers: list[Layer], ctx: PassContext):
        return {layer.name: self.choices.get(layer.name) for layer in layers}, []

    def keep_reason(self, layer: Layer, ctx: PassContext) -> str:
        return "kept whole by the plan"

    def build(self, layer: Layer, ranks, ctx: PassContext) -> Factorization:
        method, *rest = ranks
        if method not in self.methods:
            raise TensorfoldError(f"unknown method '{method}' for {layer.name} (choose from {', '.join(PLANNABLE)})")
        chosen = self.methods[method]
        reason = chosen.supports(layer)
        if reason is not None:
            raise TensorfoldError(f"{layer.name}: {reason}")
        return chosen.factorization(layer, tuple(int(r) for r in rest), ctx)
