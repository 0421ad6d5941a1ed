"""auto: per layer, the method and ranks with the least error for the saving asked.

The saving comes from the budget (--ratio) or, without one, from the Tucker-2/SVD ranks of the
rank spec. Among SVD, Tucker-2 and TT points of that size (their errors are exact), the best is
taken; for group-1 kxk convs CP is then run at the same parameter count and kept if its measured
error is lower (CP errors have no closed form, so CP is judged on the real result); kernels above
CP_MAX_PARAMS skip that comparison, where CP-ALS would cost seconds per layer; so do layers with
calibration statistics (see build).
"""

from __future__ import annotations

from tensorfold.decompose.tucker2 import tucker2_params
from tensorfold.errors import DecompositionError
from tensorfold.passes.base import Choice, PassContext, RankSpec, register_pass
from tensorfold.passes.cp import cp_build, cp_rank_for_params
from tensorfold.passes.factorize import Candidate, Factorization, FactorizePass, relative_error
from tensorfold.passes.layers import Layer
from tensorfold.passes.svd import svd_build, svd_candidates, svd_params, svd_ranks
from tensorfold.passes.tt import TTPass
from tensorfold.passes.tucker import tucker_build, tucker_candidates, tucker_params, tucker_ranks

# CP-ALS costs seconds on large kernels (a 512x512x3x3 conv); auto compares it only below this size
CP_MAX_PARAMS = 300_000
# auto's CP try is a challenger to an exact-error Tucker-2: the SVD-initialised try alone, on a
# tenth of CP's work (a YOLOv8n spent minutes per layer in CP-ALS before), with a time backstop
AUTO_CP_FLOPS = 1e10
AUTO_CP_SECONDS = 10.0


@register_pass
class AutoPass(FactorizePass):
    name = method = "auto"
    order = 0
    plannable = False  # it picks a method per layer itself

    def __init__(self):
        self.tt = TTPass()  # its TT-SVD memo lives as long as this pass

    def supports(self, layer: Layer) -> str | None:
        return None

    def candidates(self, layer: Layer) -> list[Candidate]:
        if layer.kind == "conv" and layer.is_pointwise:
            return svd_candidates(layer)
        if layer.kind == "conv":
            cands = tucker_candidates(layer)
            return cands + (self.tt.candidates(layer) if layer.groups == 1 else [])
        return svd_candidates(layer) + self.tt.candidates(layer)

    def ranks_for(self, layer: Layer, spec: RankSpec):
        if layer.is_pointwise:
            r = svd_ranks(layer, spec)
            size = len(layer.group_weights()) * r[0] * sum(layer.weight.shape[:2])
            if layer.kind != "conv":
                size = r[0] * sum(layer.weight.shape)
        else:
            ranks = tucker_ranks(layer, spec)
            size = len(layer.group_weights()) * tucker2_params(layer.group_weights()[0].shape, ranks)
        fits = [c for c in self.candidates(layer) if c.params <= size]
        if not fits:
            if layer.is_pointwise:
                return Choice("svd", svd_ranks(layer, spec))
            return Choice("tucker", tucker_ranks(layer, spec))
        best = min(fits, key=lambda c: (c.error2, c.params))
        return self.ranks_of(best)

    def params_for(self, layer: Layer, choice: Choice):
        if choice.method == "svd":
            return svd_params(layer, choice.ranks)
        if choice.method == "tucker":
            return tucker_params(layer, choice.ranks)
        return None

    def build(self, layer: Layer, choice: Choice, ctx: PassContext) -> Factorization:
        method, rest = choice.method, choice.ranks
        if method == "svd":
            return svd_build(layer, rest)
        if method == "tt":
            return self.tt.build(layer, choice, ctx)
        best = tucker_build(layer, rest, ctx.hooi_iters)
        # with calibration statistics CP is not tried: its inner factors stay weight-fitted (only its
        # last factor is re-solved on the data) and CP-ALS per candidate would dominate a budget search
        if layer.groups == 1 and layer.params <= CP_MAX_PARAMS and layer.gram is None:
            size = tucker2_params(layer.weight.shape, best.ranks)
            # CP of the same size is no smaller than the layer when Tucker-2 is not, nor beats an exact fit
            if size >= layer.params or relative_error(layer.weight, best.reconstruct()) < 1e-6:
                return best
            try:
                cp = cp_build(
                    layer,
                    cp_rank_for_params(layer, size),
                    ctx.seed,
                    flops=AUTO_CP_FLOPS,
                    seconds=AUTO_CP_SECONDS,
                    restarts=0,
                )
            except DecompositionError:  # an unstable CP just loses the comparison
                return best
            if relative_error(layer.weight, cp.reconstruct()) < relative_error(layer.weight, best.reconstruct()):
                return cp
        return best
