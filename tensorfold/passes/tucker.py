"""Tucker-2: Conv -> 1x1 (I -> r_in) -> kxk core (r_in -> r_out) -> 1x1 (r_out -> O).

Kim et al. 2016. Stride, pads (asymmetric too), dilation and auto_pad stay on the core; the bias
goes on the last 1x1. A grouped conv is decomposed per group (equal ranks, so the three convs
stay grouped). 1x1 convs and matrices use the SVD, which is what Tucker-2 reduces to there. With calibration
statistics (layer.gram) the factors and the error grid fit the layer's output on that data
(decompose.data_aware.tucker2_data).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from tensorfold.decompose.data_aware import Tucker2DataFit
from tensorfold.decompose.ranks import clip_rank, evbmf_rank, rank_for_energy
from tensorfold.decompose.tucker2 import Tucker2, tucker2, tucker2_error_table, tucker2_params, tucker2_reconstruct
from tensorfold.passes.base import PassContext, RankSpec, register_pass
from tensorfold.passes.chains import ChainBuilder, pointwise_kernel
from tensorfold.passes.factorize import Candidate, Factorization, FactorizePass, ladder
from tensorfold.passes.layers import Layer


def _unfold(w: np.ndarray, mode: int) -> np.ndarray:
    return np.moveaxis(w.astype(np.float64), mode, 0).reshape(w.shape[mode], -1)


def _mode_spectrum(w: np.ndarray, mode: int) -> np.ndarray:
    """Singular values of the mode-0 or mode-1 unfolding, from the eigenvalues of its Gram matrix."""
    unfold = _unfold(w, mode)
    eig = np.linalg.eigvalsh(unfold @ unfold.T)[::-1]
    return np.sqrt(np.clip(eig, 0, None))


def tucker_ranks(layer: Layer, spec: RankSpec) -> tuple[int, int]:
    groups = layer.group_weights()
    o, i = groups[0].shape[:2]
    if spec.rank is not None:
        return clip_rank(spec.rank, o), clip_rank(spec.rank, i)
    if spec.evbmf:  # Kim et al. 2016: EVBMF on the two channel-mode unfoldings
        return (max(evbmf_rank(_unfold(w, 0)) for w in groups), max(evbmf_rank(_unfold(w, 1)) for w in groups))
    e = spec.effective_energy
    return (
        max(rank_for_energy(_mode_spectrum(w, 0), e) for w in groups),
        max(rank_for_energy(_mode_spectrum(w, 1), e) for w in groups),
    )


def tucker_error_grid(layer: Layer) -> np.ndarray:
    """Relative squared HOSVD error for every (r_out, r_in), all groups together."""
    groups = layer.group_weights()
    norms = [float(np.sum(w.astype(np.float64) ** 2)) for w in groups]
    total = sum(norms) or 1.0
    grid: np.ndarray = np.sum([tucker2_error_table(w) * n for w, n in zip(groups, norms)], axis=0) / total
    return grid


def data_fits(layer: Layer) -> list[Tucker2DataFit]:
    """The rank-independent data-fitted Tucker-2 work per group, made once per layer's statistics."""
    return layer.statistics.fitted(
        "tucker2", lambda: [Tucker2DataFit(w, layer.statistics.group(g)) for g, w in enumerate(layer.group_weights())]
    )


def tucker_data_grid(layer: Layer, r_in_values: list[int]) -> np.ndarray:
    """Relative squared output error on the calibration data for every r_out (rows) and each r_in
    of `r_in_values` (columns), groups pooled by their output energy."""
    fits = data_fits(layer)
    total = sum(f.total for f in fits) or 1.0
    grid: np.ndarray = np.sum([f.table(r_in_values) * f.total for f in fits], axis=0) / total
    return grid


def tucker_candidates(layer: Layer) -> list[Candidate]:
    groups = layer.group_weights()
    shape = groups[0].shape
    r_ins = ladder(shape[1], 40)
    # with data the grid's columns follow r_ins; without, they are every r_in
    grid, by_column = (
        (tucker_data_grid(layer, r_ins), True) if layer.gram is not None else (tucker_error_grid(layer), False)
    )

    def error(ro: int, col: int, ri: int) -> float:
        return float(grid[ro, col if by_column else ri])

    out = []
    for ro in ladder(shape[0], 40):
        for col, ri in enumerate(r_ins):
            out.append(
                Candidate("tucker", (ro, ri), len(groups) * tucker2_params(shape, (ro, ri)), float(error(ro, col, ri)))
            )
    return out


def tucker_params(layer: Layer, ranks: tuple[int, ...]) -> int:
    groups = layer.group_weights()
    return len(groups) * tucker2_params(groups[0].shape, ranks)


def tucker_build(layer: Layer, ranks: tuple[int, ...], hooi_iters: int) -> Factorization:
    if layer.gram is not None:
        return _tucker_data_build(layer, ranks)
    parts = [tucker2(w.astype(np.float64), (ranks[0], ranks[1]), hooi_iters=hooi_iters) for w in layer.group_weights()]
    dtype = layer.weight.dtype

    def reconstruct() -> np.ndarray:
        cast = [type(p)(p.core.astype(dtype), p.out_factor.astype(dtype), p.in_factor.astype(dtype)) for p in parts]
        return np.concatenate([tucker2_reconstruct(p) for p in cast], axis=0)

    return Factorization(
        "tucker",
        list(parts[0].ranks),
        reconstruct,
        emit=lambda b: emit_tucker_conv(
            b, [p.core for p in parts], [p.out_factor for p in parts], [p.in_factor for p in parts]
        ),
    )


def _tucker_data_build(layer: Layer, ranks: tuple[int, ...]) -> Factorization:
    fits = [fit.factors((ranks[0], ranks[1])) for fit in data_fits(layer)]
    parts = [Tucker2(core, out_f, in_f) for core, out_f, in_f, _ in fits]
    dtype = layer.weight.dtype
    return Factorization(
        "tucker",
        list(parts[0].ranks),
        lambda: np.concatenate(
            [
                tucker2_reconstruct(
                    Tucker2(p.core.astype(dtype), p.out_factor.astype(dtype), p.in_factor.astype(dtype))
                )
                for p in parts
            ],
            axis=0,
        ),
        emit=lambda b: emit_tucker_conv(
            b, [p.core for p in parts], [p.out_factor for p in parts], [p.in_factor for p in parts]
        ),
    )


def emit_tucker_conv(
    b: ChainBuilder, cores: list[np.ndarray], out_factors: list[np.ndarray], in_factors: list[np.ndarray]
) -> None:
    """Conv -> 1x1 (I->r_in) -> kxk core (r_in->r_out, stride/pads/dilation) -> 1x1 (r_out->O, bias).

    One entry per group: each group gets its own factors, stacked into grouped convs.
    """
    layer = b.layer
    nd, g = len(layer.kernel), layer.groups
    first = np.concatenate([pointwise_kernel(u.T, nd) for u in in_factors], axis=0)
    core = np.concatenate(cores, axis=0)
    last = np.concatenate([pointwise_kernel(u, nd) for u in out_factors], axis=0)
    h = b.conv(layer.node.input[0], first, "in", group=g)
    h = b.conv(h, core, "core", group=g, **layer.conv.conv_kwargs())
    b.conv(h, last, "out", bias=layer.bias_name, group=g, output=layer.node.output[0])


@register_pass
class TuckerPass(FactorizePass):
    name = method = "tucker"
    auto_role = "exact"
    svd_for = "pointwise"
    order = 2
    # HOOI sweeps after the HOSVD (each stops early once the error stops improving)
    hooi_iters: ClassVar[int] = 5

    def rank_count(self, layer: Layer) -> int:
        return 1 if layer.is_pointwise else 2  # (r_out, r_in)

    def supports(self, layer: Layer) -> str | None:
        return None  # any non-depthwise conv, grouped included; matrices via the SVD

    def method_ranks(self, layer: Layer, spec: RankSpec) -> tuple[int, ...]:
        return tucker_ranks(layer, spec)

    def method_candidates(self, layer: Layer) -> list[Candidate]:
        return tucker_candidates(layer)

    def method_params(self, layer: Layer, ranks: tuple[int, ...]) -> int | None:
        return tucker_params(layer, ranks)

    def method_macs(self, layer: Layer, ranks: tuple[int, ...]) -> int | None:
        # the first 1x1 runs at the input's resolution: the core carries the stride
        groups = layer.group_weights()
        _, i = groups[0].shape[:2]
        return tucker_params(layer, ranks) + len(groups) * (layer.stride_positions() - 1) * clip_rank(ranks[1], i) * i

    def method_build(self, layer: Layer, ranks: tuple[int, ...], ctx: PassContext) -> Factorization:
        return tucker_build(layer, ranks, self.hooi_iters)
