"""Tensor-Train: TT-conv for Conv kernels and the TT-matrix format for Gemm/MatMul.

Conv: full TT-SVD (Oseledets 2011) of the kernel ordered (I, k_1, ..., k_n, O), emitted as a
1x1 conv, one conv per spatial axis (stride/pads/dilation of that axis), and a 1x1 conv. A grouped
conv is decomposed per group at shared bond ranks (each bond the largest any group needs), so every
conv of the chain keeps the layer's group count: block-diagonal cores, exact at full rank.
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

from tensorfold.decompose.data_aware import damped, output_energies, refit_output
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


def _tt_tensors(layer: Layer) -> list[np.ndarray]:
    """Each group's conv kernel (O/g, I/g, *k) reordered to (I/g, *k, O/g), the order the emitted
    chain runs in."""
    return [np.moveaxis(w.astype(np.float64), 0, -1) for w in layer.group_weights()]


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


# cores of a TT: one list for a matrix, one list per group for a conv (shared bond ranks)
Cores = list[np.ndarray]


def _decompose(
    layer: Layer,
    cap: int | Sequence[int] | None,
    rel_eps: float | None,
    memos: list[dict[Any, Any]] | None = None,
) -> list[Cores]:
    """The TT of the layer: one core list per group (a matrix is one group). A grouped conv's groups
    are truncated on their own first, then all decomposed again at each bond's largest rank, so the
    chain's convs can stay grouped (the second pass reuses the first's unfoldings through `memos`)."""
    if layer.kind != "conv":
        rows, cols = matrix_dims(*layer.weight.shape)
        return [tt_matrix(layer.weight.astype(np.float64), rows, cols, ranks=cap, rel_eps=rel_eps)]
    tensors = _tt_tensors(layer)
    memos = memos if memos is not None else [{} for _ in tensors]
    groups = [tt_svd(t, ranks=cap, rel_eps=rel_eps, memo=m) for t, m in zip(tensors, memos)]
    shared = [max(r) for r in zip(*(_bond_ranks(c) for c in groups))]
    if all(_bond_ranks(c) == shared for c in groups):
        return groups
    return [tt_svd(t, ranks=shared, memo=m) for t, m in zip(tensors, memos)]


def _reconstruct(layer: Layer, groups: list[Cores]) -> np.ndarray:
    if layer.kind == "conv":
        return np.concatenate([np.moveaxis(tt_contraction(cores), -1, 0) for cores in groups], axis=0)
    return tt_matrix_contraction(groups[0])


def _refit_last_core(layer: Layer, groups: list[Cores]) -> tuple[list[Cores], float]:
    """TT-conv cores with each group's last core re-solved to that group's output on the
    calibration data, and the relative squared output error (groups pooled by output energy)."""
    refitted, lost, total = [], 0.0, 0.0
    for g, (cores, w) in enumerate(zip(groups, layer.group_weights())):
        head = cores[0][0]  # (I/g, r1)
        for core in cores[1:-1]:  # contract (I*k.., r) with (r, k, r')
            head = np.einsum("dr,rks->dks", head, core).reshape(-1, core.shape[2])
        w2d, gram = w.reshape(w.shape[0], -1).astype(np.float64), layer.statistics.group(g)
        out, err2 = refit_output(w2d, head.T, gram)
        energy = output_energies(w2d, w2d, damped(gram))[1]
        refitted.append(cores[:-1] + [out.T[:, :, None]])
        lost, total = lost + err2 * energy, total + energy
    return refitted, (lost / total if total > 0 else 0.0)


def _tt_targets(layer: Layer) -> list[np.ndarray]:
    """The tensors TT-SVD works on: each group's reordered kernel, or the matrix with merged
    (m_k n_k) modes."""
    if layer.kind == "conv":
        return _tt_tensors(layer)
    rows, cols = matrix_dims(*layer.weight.shape)
    d = len(rows)
    t = layer.weight.astype(np.float64).reshape(*rows, *cols)
    return [t.transpose([a for k in range(d) for a in (k, d + k)]).reshape([m * n for m, n in zip(rows, cols)])]


def _tt_params(dims: tuple[int, ...], ranks: tuple[int, ...]) -> int:
    full = (1, *ranks, 1)
    return sum(full[k] * n * full[k + 1] for k, n in enumerate(dims))


def _evbmf_bond_ranks(layer: Layer) -> list[int]:
    """EVBMF rank of each bond's unfolding of the tensors TT-SVD works on (the largest over groups)."""
    targets = _tt_targets(layer)
    return [
        max(evbmf_rank(t.reshape(int(np.prod(t.shape[: k + 1])), -1)) for t in targets)
        for k in range(targets[0].ndim - 1)
    ]


def tt_macs(layer: Layer, ranks: tuple[int, ...]) -> int:
    """Multiply-adds per output position (conv) or row (matrix) of the chain emit_tt_conv /
    emit_tt_matrix write at these bond ranks (each clipped to what its bond can hold).

    TT-conv: the first 1x1 at the input's resolution, each axis conv at the resolution its stride
    leaves. TT-matrix, contracted right to left: core k works on a state of prod(m_<=k) * N_>=k
    entries per row, r_(k-1) * r_k multiply-adds each, so high bond ranks cost far more than the
    dense matrix (why `costs_more` exists)."""
    if layer.kind == "conv":  # what _tt_targets reorders each group's kernel to, without the copy
        o, i, *kernel = layer.group_weights()[0].shape
        dims: tuple[int, ...] = (i, *kernel, o)
    else:
        dims = tuple(m * n for m, n in zip(*matrix_dims(*layer.weight.shape)))
    bonds = [
        min(int(r), int(np.prod(dims[: k + 1])), int(np.prod(dims[k + 1 :])))
        for k, r in enumerate(ranks[: len(dims) - 1])
    ]
    full = [1, *bonds, 1]
    if layer.kind == "conv":
        per_group = (
            sum(full[k] * n * full[k + 1] * layer.stride_positions(k) for k, n in enumerate(dims[:-1]))
            + full[-2] * dims[-1]
        )
        return layer.groups * per_group
    rows, cols = matrix_dims(*layer.weight.shape)
    return sum(int(np.prod(rows[: k + 1])) * int(np.prod(cols[k:])) * full[k] * full[k + 1] for k in range(len(rows)))


def _bond_ranks(cores: list[np.ndarray]) -> list[int]:
    return [c.shape[-1] for c in cores[:-1]]


def emit_tt_conv(b: ChainBuilder, groups: list[Cores]) -> None:
    """TT cores of the kernel ordered (I, k_1, ..., k_n, O): 1x1 -> one conv per spatial axis -> 1x1.

    Per group: cores[0] is (1, I/g, r1), cores[1+j] is (r_j, k_j, r_{j+1}), cores[-1] is
    (r_n, O/g, 1); the groups' kernels are stacked into convs of the layer's group count.
    """
    layer = b.layer
    nd, g = len(layer.kernel), layer.groups

    def stacked(kernels: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(kernels, axis=0)

    h = b.conv(layer.node.input[0], stacked([pointwise_kernel(c[0][0].T, nd) for c in groups]), "in", group=g)
    for axis in range(len(groups[0]) - 2):  # (r_prev, k, r_next) -> (r_next, r_prev, k)
        kernel = stacked(
            [axis_kernel(np.transpose(c[1 + axis], (2, 0, 1)), axis, nd, c[1 + axis].shape[0]) for c in groups]
        )
        h = b.conv(h, kernel, f"axis{axis}", group=g, **layer.conv.one_axis(axis).conv_kwargs())
    last = stacked([pointwise_kernel(c[-1][:, :, 0].T, nd) for c in groups])
    b.conv(h, last, "out", bias=layer.bias_name, group=g, output=layer.node.output[0])


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
        return None  # any non-depthwise conv, grouped included (per group); matrices as TT-matrices

    def method_ranks(self, layer: Layer, spec: RankSpec) -> tuple[int, ...]:
        if spec.rank is not None:
            cores = _decompose(layer, spec.rank, None)
        elif spec.evbmf:
            cores = _decompose(layer, _evbmf_bond_ranks(layer), None)
        else:
            # delta-truncation: the whole TT keeps the asked share of the kernel's energy
            cores = _decompose(layer, None, float(np.sqrt(max(1.0 - spec.effective_energy, 0.0))))
        return tuple(_bond_ranks(cores[0]))

    def method_candidates(self, layer: Layer) -> list[Candidate]:
        """TT-SVD at a ladder of error targets: delta-truncation sets each bond's rank on its
        own (a cap shared by all bonds would waste rank on the small ones).

        Without data the ranks and an estimate of the weight error come from one spectrum per bond
        (decompose.tt.tt_rank_ladder: 3 eigendecompositions for a kxk conv, not ~35), so the ladder
        can be fine and reach rank 1 on every bond. The layer record's weight error is the built
        chain's, measured. With data each candidate's output error is measured on its cores."""
        out = {}
        if layer.gram is None:
            tensors = _tt_targets(layer)
            norms = [float(np.vdot(t, t)) for t in tensors]
            shares = np.geomspace(1e-4, 1.0, 40).tolist()
            ladders = [tt_rank_ladder(t, shares) for t in tensors]
            for steps in zip(*ladders):  # a grouped conv: each bond at the largest group's rank,
                ranks = tuple(max(r) for r in zip(*(r for r, _ in steps)))  # each group's estimate
                est = sum(e * n for (_, e), n in zip(steps, norms)) / (sum(norms) or 1.0)  # at its own
                if ranks not in out:
                    out[ranks] = Candidate("tt", ranks, len(tensors) * _tt_params(tensors[0].shape, ranks), est)
            return list(out.values())
        # the ladder shares every bond's eigendecomposition it reaches again (per group)
        memos: list[dict[Any, Any]] = [{} for _ in range(layer.groups if layer.kind == "conv" else 1)]
        for eps in np.geomspace(0.02, 0.95, 18):
            groups = _decompose(layer, None, float(eps), memos)
            ranks = tuple(_bond_ranks(groups[0]))
            if ranks not in out:
                if layer.kind == "conv":
                    err2 = _refit_last_core(layer, groups)[1]
                else:
                    err2 = layer_output_error2(layer, _reconstruct(layer, groups))
                out[ranks] = Candidate("tt", ranks, sum(c.size for cores in groups for c in cores), err2)
        return list(out.values())

    def method_macs(self, layer: Layer, ranks: tuple[int, ...]) -> int | None:
        return tt_macs(layer, ranks)

    def method_build(self, layer: Layer, ranks: tuple[int, ...], ctx: PassContext) -> Factorization:
        groups = _decompose(layer, list(ranks), None)
        output_error2 = None
        if layer.gram is not None and layer.kind == "conv":
            groups, output_error2 = _refit_last_core(layer, groups)
        dtype = layer.weight.dtype
        input_rank = layer.attrs.input_rank if isinstance(layer.attrs, MatMulAttrs) else None

        def emit(b: ChainBuilder) -> None:
            if layer.kind == "conv":
                emit_tt_conv(b, groups)
            else:
                emit_tt_matrix(b, groups[0], input_rank)

        return Factorization(
            "tt",
            _bond_ranks(groups[0]),
            reconstruct=lambda: _reconstruct(layer, [[c.astype(dtype) for c in cores] for cores in groups]),
            emit=emit,
            output_error2=output_error2,
        )
