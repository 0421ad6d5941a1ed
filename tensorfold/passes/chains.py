"""ONNX node chains that compute a factorized layer. Shapes in, nodes and initializers out.

Every builder ends by writing the original node's output name, so consumers are untouched.
"""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
from onnx import helper, numpy_helper

from tensorfold.passes.layers import Layer


class ChainBuilder:
    """Collects the nodes and initializers of one replacement chain, with provenance in names."""

    def __init__(self, layer: Layer, method: str, fresh, doc: str, pool: dict | None = None):
        self.layer = layer
        self.prefix = f"{layer.name}/{method}"
        self.fresh = fresh
        self.doc = doc
        self.dtype = layer.weight.dtype
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        # users of a shared weight: a factor tensor equal to one already in the graph is read from
        # there, not added again (pool: content key -> (name, size); `pooled` adds this chain's)
        self.pool = pool
        self.pooled: dict = {}
        self.reused_params = 0

    @property
    def params(self) -> int:
        """Parameters this chain adds to the graph."""
        return sum(int(np.prod(t.dims)) for t in self.initializers if t.data_type in _FLOATS)

    def const(self, suffix: str, array: np.ndarray, dtype=None) -> str:
        array = np.ascontiguousarray(array, dtype=dtype or self.dtype)
        key = None
        if self.pool is not None:
            key = (array.dtype.str, array.shape, hashlib.sha256(array.tobytes()).hexdigest())
            if key in self.pool:
                name, size = self.pool[key]
                if onnx.helper.np_dtype_to_tensor_dtype(array.dtype) in _FLOATS:   # as params counts
                    self.reused_params += size
                return name
        name = self.fresh(f"{self.prefix}/{suffix}")
        self.initializers.append(numpy_helper.from_array(array, name))
        if key is not None:
            self.pooled[key] = (name, int(array.size))
        return name

    def op(self, op_type: str, inputs: list[str], suffix: str, output: str | None = None, **attrs) -> str:
        out = output or self.fresh(f"{self.prefix}/{suffix}_out")
        node = helper.make_node(op_type, inputs, [out], name=self.fresh(f"{self.prefix}/{suffix}"),
                                doc_string=self.doc, **attrs)
        self.nodes.append(node)
        return out

    def conv(self, x: str, weight: np.ndarray, suffix: str, *, bias: str | None = None, group: int = 1,
             strides=None, pads=None, dilations=None, auto_pad: str = "NOTSET", output: str | None = None) -> str:
        nd = weight.ndim - 2
        attrs = {"kernel_shape": list(weight.shape[2:]), "group": group,
                 "strides": list(strides or [1] * nd), "dilations": list(dilations or [1] * nd)}
        if auto_pad not in ("NOTSET", ""):
            attrs["auto_pad"] = auto_pad
        else:
            attrs["pads"] = list(pads or [0] * (2 * nd))
        inputs = [x, self.const(f"{suffix}.weight", weight)] + ([bias] if bias else [])
        return self.op("Conv", inputs, suffix, output, **attrs)


_FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


def _pointwise(matrix: np.ndarray, nd: int) -> np.ndarray:
    """(out, in) matrix -> (out, in, 1, ..., 1) conv kernel."""
    return matrix.reshape(*matrix.shape, *([1] * nd))


def emit_matrix_pair(b: ChainBuilder, left: list[np.ndarray], right: list[np.ndarray]) -> None:
    """y = x @ left @ right for Gemm/MatMul, or two pointwise convs (per group) for a 1x1 conv.

    For a conv, left[g] is (I/g, r) and right[g] is (r, O/g); stride and pads go on the first conv
    (a 1x1 kernel over zero padding gives zeros, the same as the original's padded border).
    """
    layer, x, out = b.layer, b.layer.node.input[0], b.layer.node.output[0]
    if layer.kind == "conv":
        a, nd = layer.attrs, len(layer.kernel)
        first = np.concatenate([_pointwise(l.T, nd) for l in left], axis=0)
        last = np.concatenate([_pointwise(r.T, nd) for r in right], axis=0)
        h = b.conv(x, first, "in", group=layer.groups, strides=a["strides"], pads=a["pads"],
                   auto_pad=a["auto_pad"])
        b.conv(h, last, "out", bias=layer.bias_name, group=layer.groups, output=out)
    elif layer.kind == "gemm":
        at = layer.attrs
        h = b.op("Gemm", [x, b.const("in.weight", left[0] * at["alpha"])], "in", transA=at["transA"])
        inputs = [h, b.const("out.weight", right[0])] + ([layer.bias_name] if layer.bias_name else [])
        b.op("Gemm", inputs, "out", output=out, beta=at["beta"])
    else:
        h = b.op("MatMul", [x, b.const("in.weight", left[0])], "in")
        b.op("MatMul", [h, b.const("out.weight", right[0])], "out", output=out)


def emit_tucker_conv(b: ChainBuilder, cores: list[np.ndarray], out_factors: list[np.ndarray],
                     in_factors: list[np.ndarray]) -> None:
    """Conv -> 1x1 (I->r_in) -> kxk core (r_in->r_out, stride/pads/dilation) -> 1x1 (r_out->O, bias).

    One entry per group: each group gets its own factors, stacked into grouped convs.
    """
    layer = b.layer
    a, nd, g = layer.attrs, len(layer.kernel), layer.groups
    first = np.concatenate([_pointwise(u.T, nd) for u in in_factors], axis=0)
    core = np.concatenate(cores, axis=0)
    last = np.concatenate([_pointwise(u, nd) for u in out_factors], axis=0)
    h = b.conv(layer.node.input[0], first, "in", group=g)
    h = b.conv(h, core, "core", group=g, strides=a["strides"], pads=a["pads"], dilations=a["dilations"],
               auto_pad=a["auto_pad"])
    b.conv(h, last, "out", bias=layer.bias_name, group=g, output=layer.node.output[0])


def _axis_conv_attrs(a: dict, axis: int, nd: int) -> dict:
    """Stride, dilation and pads of one spatial axis only (the others become 1 / 0)."""
    strides, dilations, pads = [1] * nd, [1] * nd, [0] * (2 * nd)
    strides[axis] = a["strides"][axis]
    dilations[axis] = a["dilations"][axis]
    pads[axis], pads[axis + nd] = a["pads"][axis], a["pads"][axis + nd]
    # SAME padding is computed per axis, so each one-axis conv can keep the original auto_pad
    return {"strides": strides, "dilations": dilations, "pads": pads, "auto_pad": a["auto_pad"]}


def _axis_kernel(vectors: np.ndarray, axis: int, nd: int, channels_in: int) -> np.ndarray:
    """Kernel whose spatial extent is along `axis` only: (C_out, C_in, 1.., k, ..1)."""
    shape = [1] * nd
    shape[axis] = vectors.shape[-1]
    return vectors.reshape(vectors.shape[0], channels_in, *shape)


def emit_cp_conv(b: ChainBuilder, out_factor: np.ndarray, in_factor: np.ndarray,
                 spatial_factors: list[np.ndarray]) -> None:
    """Lebedev et al. 2015: 1x1 (I->R) -> depthwise kx1 -> depthwise 1xk -> 1x1 (R->O).

    Stride, dilation and pads are split between the depthwise convs, one axis each.
    """
    layer = b.layer
    a, nd, rank = layer.attrs, len(layer.kernel), in_factor.shape[1]
    h = b.conv(layer.node.input[0], _pointwise(in_factor.T, nd), "in")
    for axis, factor in enumerate(spatial_factors):   # factor: (k_axis, R)
        h = b.conv(h, _axis_kernel(factor.T, axis, nd, 1), f"axis{axis}", group=rank,
                   **_axis_conv_attrs(a, axis, nd))
    b.conv(h, _pointwise(out_factor, nd), "out", bias=layer.bias_name, output=layer.node.output[0])


def emit_tt_conv(b: ChainBuilder, cores: list[np.ndarray]) -> None:
    """TT cores of the kernel ordered (I, k_1, ..., k_n, O): 1x1 -> one conv per spatial axis -> 1x1.

    cores[0] is (1, I, r1), cores[1+j] is (r_j, k_j, r_{j+1}), cores[-1] is (r_n, O, 1).
    """
    layer = b.layer
    a, nd = layer.attrs, len(layer.kernel)
    h = b.conv(layer.node.input[0], _pointwise(cores[0][0].T, nd), "in")
    for axis, core in enumerate(cores[1:-1]):          # (r_prev, k, r_next) -> (r_next, r_prev, k)
        kernel = np.transpose(core, (2, 0, 1))
        h = b.conv(h, _axis_kernel(kernel, axis, nd, core.shape[0]), f"axis{axis}",
                   **_axis_conv_attrs(a, axis, nd))
    b.conv(h, _pointwise(cores[-1][:, :, 0].T, nd), "out", bias=layer.bias_name, output=layer.node.output[0])


def emit_tt_matrix(b: ChainBuilder, cores: list[np.ndarray], input_rank: int | None) -> None:
    """y = x @ W with W in TT-matrix format (Novikov 2015), as Reshape + MatMul only.

    Cores are contracted right to left; with the state laid out as (P, m_k r_k, N_>k) every step
    is a reshape and one broadcast MatMul, with no transposes.
    """
    layer = b.layer
    x = layer.node.input[0]
    if layer.kind == "gemm":
        at = layer.attrs
        if at["transA"]:
            x = b.op("Transpose", [x], "transA", perm=[1, 0])
        cores = [c * at["alpha"] if i == 0 else c for i, c in enumerate(cores)]
    cols = [c.shape[2] for c in cores]
    n_total = int(np.prod(cols))
    state = x
    trailing = 1                                      # N_>k, the output modes contracted so far
    for k in reversed(range(len(cores))):
        core = cores[k]                               # (r_prev, m_k, n_k, r_next)
        r_prev, m, n, r_next = core.shape
        shape = b.const(f"core{k}.shape", np.array([-1, m * r_next, trailing]), np.int64)
        state = b.op("Reshape", [state, shape], f"reshape{k}")
        matrix = np.transpose(core, (0, 2, 1, 3)).reshape(r_prev * n, m * r_next)
        state = b.op("MatMul", [b.const(f"core{k}", matrix), state], f"core{k}")
        trailing *= n
    out = layer.node.output[0]
    if layer.kind == "gemm" or input_rank == 2:
        flat_out = None if (layer.kind == "gemm" and layer.bias_name) else out
        flat = b.op("Reshape", [state, b.const("out.shape", np.array([-1, n_total]), np.int64)], "flatten",
                    output=flat_out)
        if layer.kind == "gemm" and layer.bias_name:
            bias = layer.bias_name
            if at["beta"] != 1.0:
                bias = b.op("Mul", [bias, b.const("beta", np.array(at["beta"]))], "beta")
            b.op("Add", [flat, bias], "bias", output=out)
        return
    # batched activations (..., K): restore the leading dims from the input's runtime shape
    lead = b.op("Shape", [x], "shape")
    lead = b.op("Slice", [lead, b.const("lead.start", np.array([0]), np.int64),
                          b.const("lead.end", np.array([-1]), np.int64)], "lead")
    target = b.op("Concat", [lead, b.const("out.cols", np.array([n_total]), np.int64)], "target", axis=0)
    b.op("Reshape", [state, target], "unflatten", output=out)
