"""auto: per layer, the method and ranks with the least error for the saving asked.

The members are the registered methods that declare an `auto_role`. The saving comes from the
budget (--ratio) or, without one, from the rank spec's ranks of the first exact method (by
listing order) that supports the layer. Among the exact methods' points of that size (their errors
are known without building) the best is taken; each challenger (a method whose error is only known
once built, as CP's) then gets to build at the winner's parameter count and is kept where its
measured error is lower. A new method is considered here by declaring its role; nothing in this
file names one.
"""

from __future__ import annotations

from tensorfold.passes.base import Choice, PassContext, RankSpec, register_pass
from tensorfold.passes.factorize import (
    Candidate,
    Factorization,
    FactorizePass,
    method_classes,
    method_pass,
    relative_error,
)
from tensorfold.passes.layers import Layer


@register_pass
class AutoPass(FactorizePass):
    name = method = "auto"
    order = 0
    plannable = False  # it picks a method per layer itself

    def __init__(self) -> None:
        # one instance per member for the pass's life: a member may keep work between its
        # candidates and its build (TT's TT-SVD memo)
        ranked = sorted(method_classes().values(), key=lambda c: c.order)
        self.members: dict[str, FactorizePass] = {cls.method: cls() for cls in ranked if cls.auto_role}

    def supports(self, layer: Layer) -> str | None:
        return None

    def _member(self, method: str) -> FactorizePass:
        return self.members.get(method) or method_pass(method)

    def _exact(self, layer: Layer) -> list[FactorizePass]:
        """The passes that decompose `layer` for the exact members that support it, each once (a
        member that hands the layer to the SVD adds nothing to the SVD's own points)."""
        out: dict[str, FactorizePass] = {}
        for member in self.members.values():
            if member.auto_role == "exact" and member.supports(layer) is None:
                handler = member.handler(layer)
                out.setdefault(handler.method, self.members.get(handler.method, handler))
        return list(out.values())

    def candidates(self, layer: Layer) -> list[Candidate]:
        return [c for handler in self._exact(layer) for c in handler.candidates(layer)]

    def ranks_for(self, layer: Layer, spec: RankSpec) -> Choice:
        handlers = self._exact(layer)
        reference = handlers[0].ranks_for(layer, spec)
        size = handlers[0].params_for(layer, reference)
        fits = [
            c
            for c in self.candidates(layer)
            if (size is None or c.params <= size) and not self.costs_more(layer, self.ranks_of(c))
        ]
        if not fits:
            return reference
        best = min(fits, key=lambda c: (c.error2, c.params))
        return self.ranks_of(best)

    def params_for(self, layer: Layer, choice: Choice) -> int | None:
        return self._member(choice.method).params_for(layer, choice)

    def macs_for(self, layer: Layer, choice: Choice) -> int | None:
        return self._member(choice.method).macs_for(layer, choice)

    def build(self, layer: Layer, choice: Choice, ctx: PassContext) -> Factorization:
        best = self._member(choice.method).build(layer, choice, ctx)
        size = self.params_for(layer, Choice(best.method, tuple(best.ranks)))
        # a challenger of the same size is no smaller than the layer when the winner is not, nor
        # beats an exact fit; a winner whose size only its build knows is not challenged
        if size is None or size >= layer.params:
            return best
        best_error = relative_error(layer.weight, best.reconstruct())
        if best_error < 1e-6:
            return best
        for member in self.members.values():
            if member.auto_role != "challenger" or member.supports(layer) is not None or member.by_svd(layer):
                continue
            rival = member.challenge(layer, size, ctx)
            if rival is not None and not member.costs_more(layer, Choice(rival.method, tuple(rival.ranks))):
                rival_error = relative_error(layer.weight, rival.reconstruct())
                if rival_error < best_error:
                    best, best_error = rival, rival_error
        return best
