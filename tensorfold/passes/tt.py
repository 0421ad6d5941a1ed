"""Tensor-Train: TT-conv for Conv kernels and the TT-matrix format for Gemm/MatMul.

Conv: full TT-SVD (Oseledets 2011) of the kernel ordered (I, k_1, ..., k_n, O), emitted as a
1x1 conv, one conv per spatial axis (stride/pads/dilation of that axis), and a 1x1 conv.
Gemm/MatMul: TT-matrix (Novikov et al. 2015) with K and N split into d balanced factors, emitted
as Reshape + MatMul. Both are exact at full rank. 1x1 convs use the SVD (a two-core TT).
With calibration statistics (layer.gram): a TT-conv's cores come from TT-SVD of the weight and
its last core (the 1x1 from r_n channels to O) is re-solved by least squares to the layer's
output on that data; a TT-matrix keeps its weight-fitted cores (whitening would need a dense
K x K factor in front of them), and its candidates are ranked by their measured output error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tensorfold.decompose.data_aware import refit_output
from tensorfold.decompose.ranks import evbmf_rank
from tensorfold.decompose.tt import (
    factorize_dim,
    tt_contraction,
    tt_matrix,
    tt_matrix_contraction,
    tt_rank_ladder,
    tt_svd,
)
from tensorfold.passes.base import PassContext, RankSpec, register_pass
from tensorfold.passes.chains import ChainBuilder, axis_kernel, pointwise_kernel
from tensorfold.passes.factorize import Candidate, Factorization, FactorizePass, layer_output_error2
from tensorfold.passes.layers import Layer, MatMulAttrs


def _tt_tensor(layer: Layer) -> np.ndarray:
    """Conv kernel (O, I, *k) reordered to (I, *k, O), the order the emitted chain runs in."""
    w = layer.weight.astype(np.float64)
    return np.moveaxis(w, 0, -1)


def matrix_dims(k: int, n: int) -> tuple[list[int], list[int]]:
    """Split K and N into d factors: 3 when both allow factors >= 2, else 2."""
    for d in (3, 2):
        rows, cols = factorize_dim(k, d), factorize_dim(n, d)
        if min(rows) >= 2 and min(cols) >= 2:
            return rows, cols
    return factorize_dim(k, 2), factorize_dim(n, 2)


def tt_bond_count(layer: Layer) -> int:
    """How many bond ranks a TT of this layer has (a plan must name exactly that many)."""
    if layer.kind == "conv":
        return layer.weight.ndim - 1
    return len(matrix_dims(*layer.weight.shape)[0]) - 1


def _decompose(
    layer: Layer,
    cap: int | Sequence[int] | None,
    rel_eps: float | None,
    memo: dict[Any, Any] | None = None,
    info: dict[str, Any] | None = None,
) -> list[np.ndarray]:
    if layer.kind == "conv":
        return tt_svd(_tt_tensor(layer), ranks=cap, rel_eps=rel_eps, memo=memo, info=info)
    rows, cols = matrix_dims(*layer.weight.shape)
    return tt_matrix(layer.weight.astype(np.float64), rows, cols, ranks=cap, rel_eps=rel_eps)


def _reconstruct(layer: Layer, cores: list[np.ndarray]) -> np.ndarray:
    if layer.kind == "conv":
        return np.moveaxis(tt_contraction(cores), -1, 0)
    return tt_matrix_contraction(cores)


def _refit_last_core(layer: Layer, cores: list[np.ndarray]) -> tuple[list[np.ndarray], float]:
    """TT-conv cores with the last one re-solved to the layer's output on the calibration data."""
    head = cores[0][0]  # (I, r1)
    for core in cores[1:-1]:  # contract (I*k.., r) with (r, k, r')
        head = np.einsum("dr,rks->dks", head, core).reshape(-1, core.shape[2])
    out, err2 = refit_output(
        layer.weight.reshape(layer.weight.shape[0], -1).astype(np.float64), head.T, layer.statistics.group(0)
    )
    return cores[:-1] + [out.T[:, :, None]], err2


def _tt_target(layer: Layer) -> np.ndarray:
    """The tensor TT-SVD works on: the reordered kernel, or the matrix with merged (m_k n_k) modes."""
    if layer.kind == "conv":
        return _tt_tensor(layer)
    rows, cols = matrix_dims(*layer.weight.shape)
    d = len(rows)
    t = layer.weight.astype(np.float64).reshape(*rows, *cols)
    return t.transpose([a for k in range(d) for a in (k, d + k)]).reshape([m * n for m, n in zip(rows, cols)])


def _tt_params(dims: tuple[int, ...], ranks: tuple[int, ...]) -> int:
    full = (1, *ranks, 1)
    return sum(full[k] * n * full[k + 1] for k, n in enumerate(dims))


def _evbmf_bond_ranks(layer: Layer) -> list[int]:
    """EVBMF rank of each bond's unfolding of the tensor TT-SVD works on."""
    t = _tt_target(layer)
    return [evbmf_rank(t.reshape(int(np.prod(t.shape[: k + 1])), -1)) for k in range(t.ndim - 1)]


def _bond_ranks(cores: list[np.ndarray]) -> list[int]:
    return [c.shape[-1] for c in cores[:-1]]


def emit_tt_conv(b: ChainBuilder, cores: list[np.ndarray]) -> None:
    """TT cores of the kernel ordered (I, k_1, ..., k_n, O): 1x1 -> one conv per spatial axis -> 1x1.

    cores[0] is (1, I, r1), cores[1+j] is (r_j, k_j, r_{j+1}), cores[-1] is (r_n, O, 1).
    """
    layer = b.layer
    nd = len(layer.kernel)
    h = b.conv(layer.node.input[0], pointwise_kernel(cores[0][0].T, nd), "in")
    for axis, core in enumerate(cores[1:-1]):  # (r_prev, k, r_next) -> (r_next, r_prev, k)
        kernel = np.transpose(core, (2, 0, 1))
        h = b.conv(
            h, axis_kernel(kernel, axis, nd, core.shape[0]), f"axis{axis}", **layer.conv.one_axis(axis).conv_kwargs()
        )
    b.conv(h, pointwise_kernel(cores[-1][:, :, 0].T, nd), "out", bias=layer.bias_name, output=layer.node.output[0])


def emit_tt_matrix(b: ChainBuilder, cores: list[np.ndarray], input_rank: int | None) -> None:
    """y = x @ W with W in TT-matrix format (Novikov 2015), as Reshape + MatMul only.

    Cores are contracted right to left; with the state laid out as (P, m_k r_k, N_>k) every step
    is a reshape and one broadcast MatMul, with no transposes.
    """
    layer = b.layer
    x = layer.node.input[0]
    if layer.kind == "gemm":
        at = layer.gemm
        if at.trans_a:
            x = b.op("Transpose", [x], "transA", perm=[1, 0])
        cores = [c * at.alpha if i == 0 else c for i, c in enumerate(cores)]
    cols = [c.shape[2] for c in cores]
    n_total = int(np.prod(cols))
    state = x
    trailing = 1  # N_>k, the output modes contracted so far
    for k in reversed(range(len(cores))):
        core = cores[k]  # (r_prev, m_k, n_k, r_next)
        r_prev, m, n, r_next = core.shape
        shape = b.const(f"core{k}.shape", np.array([-1, m * r_next, trailing]), np.int64)
        state = b.op("Reshape", [state, shape], f"reshape{k}")
        matrix = np.transpose(core, (0, 2, 1, 3)).reshape(r_prev * n, m * r_next)
        state = b.op("MatMul", [b.const(f"core{k}", matrix), state], f"core{k}")
        trailing *= n
    out = layer.node.output[0]
    if layer.kind == "gemm" or input_rank == 2:
        flat_out = None if (layer.kind == "gemm" and layer.bias_name) else out
        flat = b.op(
            "Reshape", [state, b.const("out.shape", np.array([-1, n_total]), np.int64)], "flatten", output=flat_out
        )
        if layer.kind == "gemm" and layer.bias_name:
            bias = layer.bias_name
            if at.beta != 1.0:
                bias = b.op("Mul", [bias, b.const("beta", np.array(at.beta))], "beta")
            b.op("Add", [flat, bias], "bias", output=out)
        return
    # batched activations (..., K): restore the leading dims from the input's runtime shape
    lead = b.op("Shape", [x], "shape")
    lead = b.op(
        "Slice",
        [lead, b.const("lead.start", np.array([0]), np.int64), b.const("lead.end", np.array([-1]), np.int64)],
        "lead",
    )
    target = b.op("Concat", [lead, b.const("out.cols", np.array([n_total]), np.int64)], "target", axis=0)
    b.op("Reshape", [state, target], "unflatten", output=out)


@register_pass
class TTPass(FactorizePass):
    name = method = "tt"
    auto_role = "exact"
    svd_for = "1x1 conv"
    order = 4

    def rank_count(self, layer: Layer) -> int:
        return 1 if layer.is_pointwise else tt_bond_count(layer)

    def supports(self, layer: Layer) -> str | None:
        if layer.kind == "conv" and not layer.is_pointwise and layer.groups > 1:
            return "grouped kxk conv: tt rewrites group-1 convs only; use tucker for grouped convs"
        return None

    def method_ranks(self, layer: Layer, spec: RankSpec) -> tuple[int, ...]:
        if spec.rank is not None:
            cores = _decompose(layer, spec.rank, None)
        elif spec.evbmf:
            cores = _decompose(layer, _evbmf_bond_ranks(layer), None)
        else:
            # delta-truncation: the whole TT keeps the asked share of the kernel's energy
            cores = _decompose(layer, None, float(np.sqrt(max(1.0 - spec.effective_energy, 0.0))))
        return tuple(_bond_ranks(cores))

    def method_candidates(self, layer: Layer) -> list[Candidate]:
        """TT-SVD at a ladder of error targets: delta-truncation sets each bond's rank on its
        own (a cap shared by all bonds would waste rank on the small ones).

        Without data the ranks and an estimate of the weight error come from one spectrum per bond
        (decompose.tt.tt_rank_ladder: 3 eigendecompositions for a kxk conv, not ~35), so the ladder
        can be fine and reach rank 1 on every bond. The layer record's weight error is the built
        chain's, measured. With data each candidate's output error is measured on its cores."""
        out = {}
        if layer.gram is None:
            tensor = _tt_target(layer)
            for ranks, est in tt_rank_ladder(tensor, np.geomspace(1e-4, 1.0, 40).tolist()):
                if ranks not in out:
                    out[ranks] = Candidate("tt", ranks, _tt_params(tensor.shape, ranks), est)
            return list(out.values())
        memo: dict[Any, Any] = {}  # the ladder shares every bond's eigendecomposition it reaches again
        for eps in np.geomspace(0.02, 0.95, 18):
            cores = _decompose(layer, None, float(eps), memo)
            ranks = tuple(_bond_ranks(cores))
            if ranks not in out:
                if layer.kind == "conv":
                    err2 = _refit_last_core(layer, cores)[1]
                else:
                    err2 = layer_output_error2(layer, _reconstruct(layer, cores))
                out[ranks] = Candidate("tt", ranks, sum(c.size for c in cores), err2)
        return list(out.values())

    def method_build(self, layer: Layer, ranks: tuple[int, ...], ctx: PassContext) -> Factorization:
        cores = _decompose(layer, list(ranks), None)
        output_error2 = None
        if layer.gram is not None and layer.kind == "conv":
            cores, output_error2 = _refit_last_core(layer, cores)
        dtype = layer.weight.dtype
        input_rank = layer.attrs.input_rank if isinstance(layer.attrs, MatMulAttrs) else None

        def emit(b: ChainBuilder) -> None:
            if layer.kind == "conv":
                emit_tt_conv(b, cores)
            else:
                emit_tt_matrix(b, cores, input_rank)

        return Factorization(
            "tt",
            _bond_ranks(cores),
            reconstruct=lambda: _reconstruct(layer, [c.astype(dtype) for c in cores]),
            emit=emit,
            output_error2=output_error2,
        )
