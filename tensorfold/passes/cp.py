"""CP: Conv -> 1x1 (I -> R) -> depthwise kx1 -> depthwise 1xk -> 1x1 (R -> O)  (Lebedev et al. 2015).

CP-ALS with SVD init, restarts and a stability check (tensorfold.decompose.cp); a failed or
degenerate decomposition leaves the layer whole with the reason. Stride, dilation and pads are
split per axis between the depthwise convs. Grouped kxk convs are skipped: use tucker for them.
With calibration statistics (layer.gram) the inner factors still come from CP-ALS on the weight
(CP has no closed form in the data norm) and the last 1x1 factor is re-solved by least squares
to the layer's output on that data (decompose.data_aware.refit_output).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from tensorfold.decompose.cp import cp_als, cp_params, cp_reconstruct
from tensorfold.decompose.data_aware import refit_output
from tensorfold.decompose.tucker2 import tucker2_params
from tensorfold.errors import DecompositionError
from tensorfold.passes.base import PassContext, RankSpec, register_pass
from tensorfold.passes.chains import ChainBuilder, axis_kernel, pointwise_kernel
from tensorfold.passes.factorize import Candidate, Factorization, FactorizePass, ladder
from tensorfold.passes.layers import Layer
from tensorfold.passes.tucker import tucker_data_grid, tucker_error_grid, tucker_ranks


def cp_max_rank(shape: tuple[int, ...]) -> int:
    """Every tensor has an exact CP of rank prod(shape) / max(shape) (one mode's fibers): a larger
    rank only costs time, so --rank is clipped to it (as every other method clips to its modes)."""
    return max(1, int(np.prod(shape)) // max(shape))


def cp_rank_for_params(layer: Layer, params: int) -> int:
    return min(max(1, int(params // sum(layer.weight.shape))), cp_max_rank(layer.weight.shape))


def cp_ranks(layer: Layer, spec: RankSpec) -> tuple[int]:
    if spec.rank is not None:
        return (min(spec.rank, cp_max_rank(layer.weight.shape)),)
    # an energy has no closed form for CP: take the Tucker-2 ranks for that energy and spend the same params
    ro, ri = tucker_ranks(layer, spec)
    return (cp_rank_for_params(layer, tucker2_params(layer.weight.shape, (ro, ri))),)


def cp_candidates(layer: Layer) -> list[Candidate]:
    """CP errors are only known after ALS, too costly for every rank: the estimate used here is
    the Tucker-2 (HOSVD) error at the same parameter count. The real error is measured on the
    chosen rank and reported."""
    o, i = layer.weight.shape[:2]
    if layer.gram is not None:  # the data-fitted Tucker-2 grid, on its r_in ladder
        r_ins = ladder(i, 40)
        grid = tucker_data_grid(layer, r_ins)
        ro, ri = np.meshgrid(np.arange(o + 1), np.asarray(r_ins), indexing="ij")
    else:
        grid = tucker_error_grid(layer)
        ro, ri = np.meshgrid(np.arange(o + 1), np.arange(i + 1), indexing="ij")
    tucker_p = o * ro + ri * i + ro * ri * int(np.prod(layer.kernel))
    max_rank = max(1, layer.params // sum(layer.weight.shape))
    out = []
    for rank in ladder(max_rank, 40):
        params = cp_params(layer.weight.shape, rank)
        feasible = grid[tucker_p <= params]
        out.append(Candidate("cp", (rank,), params, float(feasible.min()) if feasible.size else 1.0))
    return out


# CP-ALS work per try, in FLOPs: the sweeps are capped by what the layer's size and rank cost,
# not by a clock, so the same command gives the same model on any machine and under any load (a
# time budget made auto's output error differ run to run). A sweep costs about 6 * size * rank
# FLOPs plus a fixed share of small solves and Python work (~2e7 FLOP-equivalents measured here).
CP_FLOPS = 1e11
# a backstop past which CP-ALS keeps its best try, for a host far slower than any seen: a layer
# must never hold a run for minutes (the error reported is the one reached)
CP_SECONDS = 60.0


def cp_sweeps(shape: tuple[int, ...], rank: int, flops: float) -> int:
    """ALS sweeps that `flops` buys for a tensor of this shape at this rank (3 to 100)."""
    per_sweep = 6.0 * float(np.prod(shape)) * rank + 2e7
    return int(np.clip(flops // per_sweep, 3, 100))


def cp_build(
    layer: Layer, rank: int, seed: int, flops: float = CP_FLOPS, seconds: float = CP_SECONDS, restarts: int = 3
) -> Factorization:
    rank = min(rank, cp_max_rank(layer.weight.shape))
    cp = cp_als(
        layer.weight.astype(np.float64),
        rank,
        seed=seed,
        n_iter_max=cp_sweeps(layer.weight.shape, rank, flops),
        seconds=seconds,
        n_restarts=restarts,
    )
    out_f, in_f, *spatial = cp.factors
    output_error2 = None
    if layer.gram is not None:
        # F[r, (c, *k)] = in_f[c, r] * prod_axis spatial[axis][k_axis, r]: what the chain computes before its last 1x1
        maps = in_f.T
        for factor in spatial:
            maps = np.einsum("rd,kr->rdk", maps, factor).reshape(maps.shape[0], -1)
        out_f, output_error2 = refit_output(
            layer.weight.reshape(layer.weight.shape[0], -1).astype(np.float64), maps, layer.statistics.group(0)
        )
    factors = [out_f, in_f, *spatial]
    dtype = layer.weight.dtype
    return Factorization(
        "cp",
        [out_f.shape[1]],
        reconstruct=lambda: cp_reconstruct(
            type(cp)([f.astype(dtype) for f in factors], cp.rel_error, cp.n_iter, cp.restarts)
        ),
        emit=lambda b: emit_cp_conv(b, out_f, in_f, spatial),
        output_error2=output_error2,
    )


def emit_cp_conv(
    b: ChainBuilder, out_factor: np.ndarray, in_factor: np.ndarray, spatial_factors: list[np.ndarray]
) -> None:
    """Lebedev et al. 2015: 1x1 (I->R) -> depthwise kx1 -> depthwise 1xk -> 1x1 (R->O).

    Stride, dilation and pads are split between the depthwise convs, one axis each.
    """
    layer = b.layer
    nd, rank = len(layer.kernel), in_factor.shape[1]
    h = b.conv(layer.node.input[0], pointwise_kernel(in_factor.T, nd), "in")
    for axis, factor in enumerate(spatial_factors):  # factor: (k_axis, R)
        h = b.conv(
            h, axis_kernel(factor.T, axis, nd, 1), f"axis{axis}", group=rank, **layer.conv.one_axis(axis).conv_kwargs()
        )
    b.conv(h, pointwise_kernel(out_factor, nd), "out", bias=layer.bias_name, output=layer.node.output[0])


@register_pass
class CPPass(FactorizePass):
    name = method = "cp"
    svd_for = "pointwise"
    order = 3

    auto_role = "challenger"
    # CP-ALS work per decomposition (see CP_FLOPS, CP_SECONDS) and its random restarts
    flops: ClassVar[float] = CP_FLOPS
    seconds: ClassVar[float] = CP_SECONDS
    restarts: ClassVar[int] = 3
    # as auto's challenger CP builds only below this size (CP-ALS costs seconds on a 512x512x3x3
    # conv), and then the SVD-initialised try alone on a tenth of the work (a YOLOv8n spent minutes
    # per layer in CP-ALS before), with a time backstop
    challenge_max_params: ClassVar[int] = 300_000
    challenge_flops: ClassVar[float] = 1e10
    challenge_seconds: ClassVar[float] = 10.0

    def supports(self, layer: Layer) -> str | None:
        if not layer.is_pointwise and layer.groups > 1:
            return "grouped kxk conv: cp rewrites group-1 convs only; use tucker for grouped convs"
        return None

    def method_ranks(self, layer: Layer, spec: RankSpec) -> tuple[int, ...]:
        return cp_ranks(layer, spec)

    def method_candidates(self, layer: Layer) -> list[Candidate]:
        return cp_candidates(layer)

    def method_params(self, layer: Layer, ranks: tuple[int, ...]) -> int | None:
        return cp_params(layer.weight.shape, min(ranks[0], cp_max_rank(layer.weight.shape)))

    def method_macs(self, layer: Layer, ranks: tuple[int, ...]) -> int | None:
        # the first 1x1 runs at the input's resolution; each depthwise conv carries its axis's stride
        o, i, *kernel = layer.weight.shape
        rank = min(ranks[0], cp_max_rank(layer.weight.shape))
        spatial = sum(k * layer.stride_positions(axis + 1) for axis, k in enumerate(kernel))
        return rank * (o + layer.stride_positions() * i + spatial)

    def method_build(self, layer: Layer, ranks: tuple[int, ...], ctx: PassContext) -> Factorization:
        return cp_build(layer, ranks[0], ctx.seed, flops=self.flops, seconds=self.seconds, restarts=self.restarts)

    def challenge(self, layer: Layer, params: int, ctx: PassContext) -> Factorization | None:
        # with calibration statistics CP declines: its inner factors stay weight-fitted (only its
        # last factor is re-solved on the data) and CP-ALS per candidate would dominate a budget search
        if layer.params > self.challenge_max_params or layer.gram is not None:
            return None
        try:
            return cp_build(
                layer,
                cp_rank_for_params(layer, params),
                ctx.seed,
                flops=self.challenge_flops,
                seconds=self.challenge_seconds,
                restarts=0,
            )
        except DecompositionError:  # an unstable CP just loses the comparison
            return None
