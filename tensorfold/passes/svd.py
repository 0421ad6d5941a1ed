"""SVD: a matrix W (K x N) or a 1x1 conv becomes two factors of rank r.

Gemm keeps transA/alpha on the first factor and beta/C on the second; MatMul works on batched
activations (..., K); a grouped 1x1 conv is factorized per group. For every other method a
1x1 conv or a matrix degenerates to this SVD, so they call these helpers. With calibration
statistics (layer.gram) the SVD is whitened by the layer's inputs (decompose.data_aware).
"""

from __future__ import annotations

import numpy as np

from tensorfold.decompose.data_aware import WhitenedSVD
from tensorfold.decompose.ranks import clip_rank, evbmf_rank, rank_for_energy
from tensorfold.decompose.svd import singular_values, truncated_svd
from tensorfold.passes.base import PassContext, RankSpec, register_pass
from tensorfold.passes.chains import ChainBuilder, pointwise_kernel
from tensorfold.passes.factorize import Candidate, Factorization, FactorizePass, ladder
from tensorfold.passes.layers import Layer


def layer_matrices(layer: Layer) -> list[np.ndarray]:
    """The layer as y = x @ M, one M per group: (K, N) for Gemm/MatMul, (I/g, O/g) for a 1x1 conv."""
    if layer.kind == "conv":
        return [w.reshape(w.shape[0], w.shape[1]).T for w in layer.group_weights()]
    return [layer.weight]


def _matrices_to_weight(layer: Layer, products: list[np.ndarray]) -> np.ndarray:
    if layer.kind == "conv":
        return np.concatenate([p.T for p in products], axis=0).reshape(layer.weight.shape)
    return products[0]


def svd_ranks(layer: Layer, spec: RankSpec) -> tuple[int]:
    mats = layer_matrices(layer)
    if spec.rank is not None:
        return (clip_rank(spec.rank, *mats[0].shape),)
    if spec.evbmf:
        return (max(evbmf_rank(m) for m in mats),)
    return (max(rank_for_energy(singular_values(m), spec.effective_energy) for m in mats),)


def svd_spectra(layer: Layer) -> list[np.ndarray]:
    """Squared singular values per group: of the weight, or with calibration statistics of the
    whitened weight (the output energy each rank keeps)."""
    if layer.gram is not None:
        return [fit.spectrum for fit in whitened_fits(layer)]
    return [singular_values(m.astype(np.float64)) ** 2 for m in layer_matrices(layer)]


def whitened_fits(layer: Layer) -> list[WhitenedSVD]:
    """The whitened SVD per group, made once per layer's statistics."""
    return layer.statistics.fitted(
        "whitened_svd", lambda: [WhitenedSVD(m, layer.statistics.group(g)) for g, m in enumerate(layer_matrices(layer))]
    )


def svd_candidates(layer: Layer) -> list[Candidate]:
    mats = layer_matrices(layer)
    spectra = svd_spectra(layer)
    total = sum(float(s.sum()) for s in spectra) or 1.0
    k, n = mats[0].shape
    out = []
    for r in ladder(min(k, n)):
        tail = sum(float(s[r:].sum()) for s in spectra)
        out.append(Candidate("svd", (r,), len(mats) * r * (k + n), tail / total))
    return out


def svd_params(layer: Layer, ranks: tuple[int, ...]) -> int:
    mats = layer_matrices(layer)
    return len(mats) * min(ranks[0], *mats[0].shape) * sum(mats[0].shape)


def svd_build(layer: Layer, ranks: tuple[int, ...]) -> Factorization:
    output_error2 = None
    if layer.gram is not None:  # fitted to the layer's output on the calibration data
        fits = whitened_fits(layer)
        pairs = [fit.factors(ranks[0]) for fit in fits]
        # its output error is the spectrum's tail (groups pooled), known without multiplying it out
        r = pairs[0][0].shape[1]
        total = sum(float(f.spectrum.sum()) for f in fits)
        output_error2 = sum(float(f.spectrum[r:].sum()) for f in fits) / total if total > 0 else 0.0
    else:
        pairs = [truncated_svd(m.astype(np.float64), ranks[0]) for m in layer_matrices(layer)]
    # in the weight's dtype, what the chain stores: a search keeps every factorization it built
    # (docs/results/recover-memory.md), and float64 copies of the factors are never used
    pairs = [(lf.astype(layer.weight.dtype), r.astype(layer.weight.dtype)) for lf, r in pairs]
    lefts, rights = [p[0] for p in pairs], [p[1] for p in pairs]
    rank = lefts[0].shape[1]
    return Factorization(
        "svd",
        [rank],
        reconstruct=lambda: _matrices_to_weight(layer, [lf.astype(np.float64) @ r for lf, r in pairs]),
        emit=lambda b: emit_matrix_pair(b, lefts, rights),
        output_error2=output_error2,
    )


def emit_matrix_pair(b: ChainBuilder, left: list[np.ndarray], right: list[np.ndarray]) -> None:
    """y = x @ left @ right for Gemm/MatMul, or two pointwise convs (per group) for a 1x1 conv.

    For a conv, left[g] is (I/g, r) and right[g] is (r, O/g); stride and pads go on the first conv
    (a 1x1 kernel over zero padding gives zeros, the same as the original's padded border).
    """
    layer, x, out = b.layer, b.layer.node.input[0], b.layer.node.output[0]
    if layer.kind == "conv":
        a, nd = layer.conv, len(layer.kernel)
        first = np.concatenate([pointwise_kernel(lf.T, nd) for lf in left], axis=0)
        last = np.concatenate([pointwise_kernel(r.T, nd) for r in right], axis=0)
        h = b.conv(x, first, "in", group=layer.groups, strides=a.strides, pads=a.pads, auto_pad=a.auto_pad)
        b.conv(h, last, "out", bias=layer.bias_name, group=layer.groups, output=out)
    elif layer.kind == "gemm":
        at = layer.gemm
        h = b.op("Gemm", [x, b.const("in.weight", left[0] * at.alpha)], "in", transA=int(at.trans_a))
        inputs = [h, b.const("out.weight", right[0])] + ([layer.bias_name] if layer.bias_name else [])
        b.op("Gemm", inputs, "out", output=out, beta=at.beta)
    else:
        h = b.op("MatMul", [x, b.const("in.weight", left[0])], "in")
        b.op("MatMul", [h, b.const("out.weight", right[0])], "out", output=out)


@register_pass
class SVDPass(FactorizePass):
    name = method = "svd"
    auto_role = "exact"
    order = 1

    def supports(self, layer: Layer) -> str | None:
        if not layer.is_pointwise:
            return "kxk conv: svd rewrites 1x1 convs and matrices; use tucker, cp or tt for kxk kernels"
        return None

    def method_ranks(self, layer: Layer, spec: RankSpec) -> tuple[int, ...]:
        return svd_ranks(layer, spec)

    def method_candidates(self, layer: Layer) -> list[Candidate]:
        return svd_candidates(layer)

    def method_params(self, layer: Layer, ranks: tuple[int, ...]) -> int | None:
        return svd_params(layer, ranks)

    def method_build(self, layer: Layer, ranks: tuple[int, ...], ctx: PassContext) -> Factorization:
        return svd_build(layer, ranks)
