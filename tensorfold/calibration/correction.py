"""Asymmetric correction of the last factor of every chain (Zhang et al. 2016, TPAMI, section 3.3).

Each chain's factors were fitted to the layer's *original* inputs, but inside the compressed
model a layer sees inputs that earlier compressed layers already distorted. Zhang et al. fit each
layer to map the compressed model's input x' to the original model's response y. Here that is done
for the last linear factor of every chain at once, from one pass over the calibration samples:
with h' the chain's last hidden value and y' its output in the compressed model, the target is
t = y - (y' - B h') (the original response minus the bias part of the chain), and the new B
minimizes sum ||t - B h'||^2 (ridge-damped). The last factor is a 1x1 conv, a MatMul or a Gemm
in every chain but a TT-matrix one (which ends on a Reshape and is left as it is).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper
from tqdm import tqdm

from tensorfold.calibration.data import Samples
from tensorfold.calibration.stats import _with_outputs
from tensorfold.decompose.data_aware import damped
from tensorfold.graph.model import attr
from tensorfold.runtime.batching import chunks
from tensorfold.runtime.sessions import make_session


def correct_last_factors(original: onnx.ModelProto, rewritten: onnx.ModelProto, new_nodes: list[list[str]],
                         samples: Samples, progress: bool = False) -> tuple[onnx.ModelProto, int]:
    """A copy of `rewritten` with the last factor of each chain (its nodes named in `new_nodes`)
    re-solved on `samples`, and how many were corrected."""
    inits = {t.name: t for t in rewritten.graph.initializer}
    targets = []          # (last node, weight name, groups)
    for names in new_nodes:
        chain = set(names)
        last = next((n for n in reversed(rewritten.graph.node) if n.name in chain), None)
        if last is None or last.op_type not in ("Conv", "MatMul", "Gemm") or last.input[1] not in inits:
            continue
        if last.op_type == "Gemm" and (attr(last, "transB", 0) or attr(last, "transA", 0)):
            continue
        if last.op_type == "Conv" and any(k != 1 for k in inits[last.input[1]].dims[2:]):
            continue
        targets.append((last, last.input[1], int(attr(last, "group", 1)) if last.op_type == "Conv" else 1))
    if not targets:
        return rewritten, 0
    outs = list(dict.fromkeys(t[0].output[0] for t in targets))
    hidden = list(dict.fromkeys(t[0].input[0] for t in targets))
    ref_session = make_session(_with_outputs(original, outs), "cpu")
    new_session = make_session(_with_outputs(rewritten, hidden + outs), "cpu")
    weights = {name: numpy_helper.to_array(inits[name]).astype(np.float64) for _, name, _ in targets}
    acc: dict[str, list] = {}
    for feeds in tqdm(list(chunks(original, samples.arrays, max_batch=4)), desc="asymmetric correction",
                      unit="batch", disable=not progress, leave=False):
        ref = dict(zip(outs, ref_session.run(outs, feeds)))
        got = dict(zip(hidden + outs, new_session.run(hidden + outs, feeds)))
        for node, wname, groups in targets:
            h, y, y_new = got[node.input[0]], ref[node.output[0]], got[node.output[0]]
            for g, (hg, tg) in enumerate(_pairs(node, weights[wname], h, y, y_new, groups)):
                hh, th = acc.setdefault(wname, [[0.0] * groups, [0.0] * groups])
                hh[g] = hh[g] + hg.T @ hg
                th[g] = th[g] + tg.T @ hg
    model = onnx.ModelProto()
    model.CopyFrom(rewritten)
    index = {t.name: t for t in model.graph.initializer}
    for node, wname, groups in targets:
        hh, th = acc[wname]
        blocks = [np.linalg.solve(damped(hh[g]), th[g].T).T for g in range(groups)]     # (O/g, R/g) each
        w = weights[wname]
        new = (np.concatenate(blocks, axis=0).reshape(w.shape) if node.op_type == "Conv" else blocks[0].T)
        dtype = numpy_helper.to_array(index[wname]).dtype
        index[wname].CopyFrom(numpy_helper.from_array(new.astype(dtype), wname))
    return model, len(targets)


def _pairs(node, w: np.ndarray, h: np.ndarray, y: np.ndarray, y_new: np.ndarray, groups: int):
    """Per group (h' rows, target rows) with target = y - (y' - B h')."""
    h, y, y_new = (np.asarray(a, dtype=np.float64) for a in (h, y, y_new))
    if node.op_type == "Conv":
        nd = h.ndim - 2
        perm = (0,) + tuple(range(2, 2 + nd)) + (1,)
        h_rows = h.transpose(perm).reshape(-1, h.shape[1])
        t_rows = (y - y_new).transpose(perm).reshape(-1, y.shape[1])
        b = w.reshape(w.shape[0], -1)                                    # (O, R/g)
        per_in, per_out = h.shape[1] // groups, y.shape[1] // groups
        for g in range(groups):
            hg = h_rows[:, g * per_in:(g + 1) * per_in]
            bg = b[g * per_out:(g + 1) * per_out]
            yield hg, t_rows[:, g * per_out:(g + 1) * per_out] + hg @ bg.T
        return
    h_rows = h.reshape(-1, h.shape[-1])
    yield h_rows, (y - y_new).reshape(-1, y.shape[-1]) + h_rows @ w
