"""The torch kernels of the ONNX interpreter (recovery/onnx_torch.py): one function per ONNX op,
registered by name with @op. A kernel raises Unsupported for a variant it does not cover; the node
then runs frozen in onnxruntime."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from tensorfold.graph.model import attr
from tensorfold.recovery.fusion import FUSED_GELU, FUSED_LAYER_NORM

OPS: dict[str, Callable] = {}


class Unsupported(Exception):
    """An op variant the torch kernels here do not cover; the node then runs frozen in onnxruntime."""


def op(*names):
    def register(fn):
        for name in names:
            OPS[name] = fn
        return fn

    return register


def _a(node, name, default=None):
    value = attr(node, name, default)
    return value.decode() if isinstance(value, bytes) else value


def _ints(t: torch.Tensor) -> list[int]:
    return [int(v) for v in t.detach().cpu().reshape(-1).tolist()]


# --- convolution and dense --------------------------------------------------------------------


def _same_pads(x, weight_shape, strides, dilations, mode):
    pads_begin, pads_end = [], []
    for i, k in enumerate(weight_shape):
        size = x.shape[2 + i]
        out = math.ceil(size / strides[i])
        total = max((out - 1) * strides[i] + (k - 1) * dilations[i] + 1 - size, 0)
        small = total // 2
        big = total - small
        pads_begin.append(small if mode == "SAME_UPPER" else big)
        pads_end.append(big if mode == "SAME_UPPER" else small)
    return pads_begin + pads_end


def _pad_for_torch(x, pads):
    """ONNX pads [b1, b2, ..., e1, e2, ...] -> F.pad on the spatial dims (last dim first)."""
    nd = len(pads) // 2
    if not any(pads):
        return x
    spec = []
    for i in reversed(range(nd)):
        spec += [pads[i], pads[i + nd]]
    return F.pad(x, spec)


@op("Conv")
def _conv(node, x, w, b=None):
    nd = w.dim() - 2
    strides = list(_a(node, "strides", [1] * nd))
    dilations = list(_a(node, "dilations", [1] * nd))
    auto_pad = _a(node, "auto_pad", "NOTSET")
    pads = list(_a(node, "pads", [0] * (2 * nd)))
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = _same_pads(x, w.shape[2:], strides, dilations, auto_pad)
    elif auto_pad == "VALID":
        pads = [0] * (2 * nd)
    x = _pad_for_torch(x, pads)
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
    return fn(x, w, b, stride=strides, dilation=dilations, groups=_a(node, "group", 1))


@op("ConvTranspose")
def _conv_transpose(node, x, w, b=None):
    nd = w.dim() - 2
    strides = list(_a(node, "strides", [1] * nd))
    dilations = list(_a(node, "dilations", [1] * nd))
    pads = list(_a(node, "pads", [0] * (2 * nd)))
    out_pad = list(_a(node, "output_padding", [0] * nd))
    if pads[:nd] != pads[nd:]:
        raise Unsupported("asymmetric ConvTranspose pads")
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[nd]
    return fn(
        x,
        w,
        b,
        stride=strides,
        padding=pads[:nd],
        output_padding=out_pad,
        groups=_a(node, "group", 1),
        dilation=dilations,
    )


@op("Gemm")
def _gemm(node, a, b, c=None):
    if _a(node, "transA", 0):
        a = a.transpose(0, 1)
    if _a(node, "transB", 0):
        b = b.transpose(0, 1)
    y = _a(node, "alpha", 1.0) * (a @ b)
    return y if c is None else y + _a(node, "beta", 1.0) * c


@op("MatMul")
def _matmul(node, a, b):
    return torch.matmul(a, b)


@op("Einsum")
def _einsum(node, *xs):
    return torch.einsum(_a(node, "equation"), *xs)


# --- normalization ------------------------------------------------------------------------------


@op("BatchNormalization")
def _bn(node, x, scale, bias, mean, var):
    # inference form; the running statistics are constants (written by hand: F.batch_norm refuses
    # statistics that require grad, and they are parameters like every float initializer here)
    shape = [1, -1] + [1] * (x.dim() - 2)
    inv = scale / torch.sqrt(var.detach() + _a(node, "epsilon", 1e-5))
    return (x - mean.detach().reshape(shape)) * inv.reshape(shape) + bias.reshape(shape)


@op("LayerNormalization")
def _ln(node, x, scale, bias=None):
    axis = _a(node, "axis", -1)
    axis = axis if axis >= 0 else x.dim() + axis
    return F.layer_norm(x, x.shape[axis:], scale, bias, eps=_a(node, "epsilon", 1e-5))


@op(FUSED_LAYER_NORM)
def _fused_layer_norm(node, x, scale=None, bias=None):
    """A LayerNorm the export spelled out op by op (recovery/fusion.py), over its ReduceMeans' axes."""
    axes = sorted(a % x.dim() for a in _a(node, "axes"))
    eps = _a(node, "epsilon")
    k = len(axes)
    if axes == list(range(x.dim() - k, x.dim())):
        shape = tuple(x.shape[x.dim() - k :])
        whole = all(t is None or tuple(t.shape) == shape for t in (scale, bias))
        y = F.layer_norm(x, shape, scale if whole else None, bias if whole else None, eps=eps)
        if whole:
            return y
    else:  # not the trailing axes: as the graph writes it
        d = x - x.mean(dim=axes, keepdim=True)
        y = d / torch.sqrt((d * d).mean(dim=axes, keepdim=True) + eps)
    y = y * scale if scale is not None else y
    return y + bias if bias is not None else y


@op(FUSED_GELU)
def _fused_gelu(node, x):
    return F.gelu(x)


@op("InstanceNormalization")
def _in(node, x, scale, bias):
    return F.instance_norm(x, weight=scale, bias=bias, eps=_a(node, "epsilon", 1e-5))


# --- activations and elementwise ------------------------------------------------------------------

for _name, _fn in {
    "Relu": torch.relu,
    "Sigmoid": torch.sigmoid,
    "Tanh": torch.tanh,
    "Exp": torch.exp,
    "Log": torch.log,
    "Sqrt": torch.sqrt,
    "Neg": torch.neg,
    "Abs": torch.abs,
    "Erf": torch.erf,
    "Reciprocal": torch.reciprocal,
    "Floor": torch.floor,
    "Ceil": torch.ceil,
    "Softplus": F.softplus,
    "Sin": torch.sin,
    "Cos": torch.cos,
    "Not": torch.logical_not,
    "Round": torch.round,
    "Sign": torch.sign,
}.items():
    OPS[_name] = (lambda f: lambda node, x: f(x))(_fn)

for _name, _fn in {
    "Add": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    "Div": torch.div,
    "Pow": torch.pow,
    "Equal": torch.eq,
    "Less": torch.lt,
    "Greater": torch.gt,
    "And": torch.logical_and,
    "Or": torch.logical_or,
    "LessOrEqual": torch.le,
    "GreaterOrEqual": torch.ge,
}.items():
    OPS[_name] = (lambda f: lambda node, a, b: f(a, b))(_fn)


@op("Div")
def _div(node, a, b):
    if not a.is_floating_point() and not b.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


def _fold(fn):
    """Variadic elementwise ops (Max, Min, Sum): a left fold with broadcasting."""

    def run(node, *xs):
        out = xs[0]
        for x in xs[1:]:
            out = fn(out, x)
        return out

    return run


OPS["Max"], OPS["Min"], OPS["Sum"] = _fold(torch.maximum), _fold(torch.minimum), _fold(torch.add)


@op("LeakyRelu")
def _leaky(node, x):
    return F.leaky_relu(x, _a(node, "alpha", 0.01))


@op("Elu")
def _elu(node, x):
    return F.elu(x, _a(node, "alpha", 1.0))


@op("HardSigmoid")
def _hard_sigmoid(node, x):
    return torch.clamp(_a(node, "alpha", 0.2) * x + _a(node, "beta", 0.5), 0, 1)


@op("HardSwish")
def _hard_swish(node, x):
    return F.hardswish(x)


@op("Gelu")
def _gelu(node, x):
    return F.gelu(x, approximate="tanh" if _a(node, "approximate", "none") == "tanh" else "none")


@op("Clip")
def _clip(node, x, lo=None, hi=None):
    lo = _a(node, "min") if lo is None and attr(node, "min") is not None else lo
    hi = _a(node, "max") if hi is None and attr(node, "max") is not None else hi
    if isinstance(lo, torch.Tensor):
        lo = lo.item()
    if isinstance(hi, torch.Tensor):
        hi = hi.item()
    return torch.clamp(x, lo, hi)


@op("PRelu")
def _prelu(node, x, slope):
    return torch.where(x >= 0, x, x * slope)


@op("Softmax")
def _softmax(node, x):
    return torch.softmax(x, _a(node, "axis", -1))


@op("LogSoftmax")
def _log_softmax(node, x):
    return torch.log_softmax(x, _a(node, "axis", -1))


@op("Where")
def _where(node, c, a, b):
    return torch.where(c.bool(), a, b)


# --- pooling --------------------------------------------------------------------------------------


@op("GlobalAveragePool")
def _gap(node, x):
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


@op("GlobalMaxPool")
def _gmp(node, x):
    return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


def _pool(node, x, kind):
    k = list(_a(node, "kernel_shape"))
    nd = len(k)
    strides = list(_a(node, "strides", [1] * nd))
    pads = list(_a(node, "pads", [0] * (2 * nd)))
    auto_pad = _a(node, "auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = _same_pads(x, k, strides, [1] * nd, auto_pad)
    ceil = bool(_a(node, "ceil_mode", 0))
    if kind == "max":  # MaxPool pads were applied with -inf by the caller
        fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[nd]
        return fn(x, k, strides, 0, list(_a(node, "dilations", [1] * nd)), ceil_mode=ceil)
    include_pad = bool(_a(node, "count_include_pad", 0))
    if pads[:nd] == pads[nd:]:
        fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[nd]
        return fn(x, k, strides, pads[:nd], ceil_mode=ceil, count_include_pad=include_pad)
    raise Unsupported("asymmetric AveragePool pads")


@op("MaxPool")
def _maxpool(node, x):
    k = list(_a(node, "kernel_shape"))
    nd = len(k)
    pads = list(_a(node, "pads", [0] * (2 * nd)))
    if any(pads):
        spec = []
        for i in reversed(range(nd)):
            spec += [pads[i], pads[i + nd]]
        x = F.pad(x, spec, value=float("-inf"))
        node = onnx.helper.make_node(
            "MaxPool",
            ["x"],
            ["y"],
            kernel_shape=k,
            strides=list(_a(node, "strides", [1] * nd)),
            dilations=list(_a(node, "dilations", [1] * nd)),
            ceil_mode=_a(node, "ceil_mode", 0),
        )
    return _pool(node, x, "max")


@op("AveragePool")
def _avgpool(node, x):
    return _pool(node, x, "avg")


# --- shape manipulation ---------------------------------------------------------------------------


@op("Flatten")
def _flatten(node, x):
    axis = _a(node, "axis", 1)
    axis = axis if axis >= 0 else x.dim() + axis
    return x.reshape(int(np.prod(x.shape[:axis])), -1)


@op("Reshape")
def _reshape(node, x, shape):
    dims = _ints(shape)
    allow_zero = _a(node, "allowzero", 0)
    dims = [x.shape[i] if (d == 0 and not allow_zero) else d for i, d in enumerate(dims)]
    return x.reshape(dims)


@op("Transpose")
def _transpose(node, x):
    perm = _a(node, "perm")
    return x.permute(*(perm if perm is not None else reversed(range(x.dim()))))


@op("Concat")
def _concat(node, *xs):
    return torch.cat(xs, _a(node, "axis"))


@op("Shape")
def _shape(node, x):
    shape = torch.tensor(list(x.shape), dtype=torch.int64)
    start, end = _a(node, "start", 0), _a(node, "end", None)
    return shape[start:end]


@op("Size")
def _size(node, x):
    return torch.tensor(x.numel(), dtype=torch.int64)


@op("Unsqueeze")
def _unsqueeze(node, x, axes=None):
    axes = _ints(axes) if axes is not None else list(_a(node, "axes"))
    out_rank = x.dim() + len(axes)
    for a in sorted(a if a >= 0 else a + out_rank for a in axes):
        x = x.unsqueeze(a)
    return x


@op("Squeeze")
def _squeeze(node, x, axes=None):
    axes = _ints(axes) if axes is not None else _a(node, "axes")
    if axes is None:
        return x.squeeze()
    for a in sorted((a if a >= 0 else a + x.dim() for a in axes), reverse=True):
        x = x.squeeze(a)
    return x


@op("Slice")
def _slice(node, x, starts=None, ends=None, axes=None, steps=None):
    starts = _ints(starts) if starts is not None else list(_a(node, "starts"))
    ends = _ints(ends) if ends is not None else list(_a(node, "ends"))
    axes = _ints(axes) if axes is not None else list(_a(node, "axes", range(len(starts))))
    steps = _ints(steps) if steps is not None else [1] * len(starts)
    index = [slice(None)] * x.dim()
    backwards = []
    for s, e, a, st in zip(starts, ends, axes, steps):
        size = x.shape[a]
        s, e = (s + size if s < 0 else s), (e + size if e < 0 else e)
        if st < 0:
            # ONNX clamps starts to [0, size-1] and ends to [-1, size-1] for negative steps;
            # torch slicing has no negative step, so gather the indices instead
            backwards.append(
                (a, torch.arange(max(min(s, size - 1), 0), max(min(e, size - 1), -1), st, device=x.device))
            )
            continue
        index[a] = slice(max(min(s, size), 0), max(min(e, size), 0), st)
    x = x[tuple(index)]
    for a, idx in backwards:
        x = x.index_select(a if a >= 0 else a + x.dim(), idx)
    return x


@op("Gather")
def _gather(node, x, idx):
    axis = _a(node, "axis", 0)
    idx = idx.long()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    out = torch.index_select(x, axis, idx.reshape(-1))
    return out.reshape([*x.shape[:axis], *idx.shape, *x.shape[axis + 1 :]])


@op("Split")
def _split(node, x, split=None):
    axis = _a(node, "axis", 0)
    sizes = _ints(split) if split is not None else _a(node, "split")
    if sizes is None:
        n = len(node.output)
        sizes = [x.shape[axis] // n] * n
    return list(torch.split(x, list(sizes), axis))


@op("Expand")
def _expand(node, x, shape):
    target = _ints(shape)
    return x * torch.ones(target, dtype=x.dtype, device=x.device)


@op("Tile")
def _tile(node, x, reps):
    return x.repeat(*_ints(reps))


@op("Cast")
def _cast(node, x):
    dtype = onnx.helper.tensor_dtype_to_np_dtype(_a(node, "to"))
    return x.to(torch.from_numpy(np.zeros(0, dtype=dtype)).dtype)


@op("Identity", "Dropout")
def _identity(node, x, *_):
    return x


@op("ConstantOfShape")
def _constant_of_shape(node, shape):
    value = attr(node, "value")
    arr = numpy_helper.to_array(value) if value is not None else np.zeros(1, np.float32)
    return torch.full(_ints(shape), float(arr.reshape(-1)[0]), dtype=torch.from_numpy(np.array(arr)).dtype)


@op("Range")
def _range(node, start, limit, delta):
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype)


def _prod(x, dim, keepdim):
    for d in sorted(dim, reverse=True):
        x = torch.prod(x, dim=d, keepdim=keepdim)
    return x


_REDUCE = {
    "ReduceMean": torch.mean,
    "ReduceSum": torch.sum,
    "ReduceMax": torch.amax,
    "ReduceMin": torch.amin,
    "ReduceProd": _prod,
    "ReduceL1": lambda x, dim, keepdim: torch.sum(x.abs(), dim=dim, keepdim=keepdim),
    "ReduceL2": lambda x, dim, keepdim: torch.sqrt(torch.sum(x * x, dim=dim, keepdim=keepdim)),
    "ReduceSumSquare": lambda x, dim, keepdim: torch.sum(x * x, dim=dim, keepdim=keepdim),
    "ReduceLogSumExp": torch.logsumexp,
}


@op(*_REDUCE)
def _reduce(node, x, axes=None):
    axes = _ints(axes) if axes is not None else _a(node, "axes")
    keep = bool(_a(node, "keepdims", 1))
    if not axes and _a(node, "noop_with_empty_axes", 0):
        return x
    dims = tuple(a % max(x.dim(), 1) for a in axes) if axes else tuple(range(x.dim()))
    return _REDUCE[node.op_type](x, dim=dims, keepdim=keep)


@op("Mod")
def _mod(node, a, b):
    # fmod=1: the sign of the dividend (C fmod); 0: the sign of the divisor (Python %), integers only
    return torch.fmod(a, b) if _a(node, "fmod", 0) else torch.remainder(a, b)


@op("ArgMax", "ArgMin")
def _argmax(node, x):
    axis, keep = _a(node, "axis", 0), bool(_a(node, "keepdims", 1))
    fn = torch.argmax if node.op_type == "ArgMax" else torch.argmin
    if _a(node, "select_last_index", 0):
        flipped = fn(torch.flip(x, (axis,)), dim=axis, keepdim=keep)
        return x.shape[axis] - 1 - flipped
    return fn(x, dim=axis, keepdim=keep)


@op("CumSum")
def _cumsum(node, x, axis):
    dim = int(axis.reshape(-1)[0])
    if _a(node, "reverse", 0):
        x = torch.flip(x, (dim,))
    out = torch.cumsum(x, dim)
    if _a(node, "exclusive", 0):
        out = out - x
    return torch.flip(out, (dim,)) if _a(node, "reverse", 0) else out


@op("Trilu")
def _trilu(node, x, k=None):
    diagonal = int(k.reshape(-1)[0]) if k is not None else 0
    return torch.triu(x, diagonal) if _a(node, "upper", 1) else torch.tril(x, diagonal)


@op("Resize")
def _resize(node, x, roi=None, scales=None, sizes=None):
    mode = _a(node, "mode", "nearest")
    if sizes is not None and sizes.numel():
        size = _ints(sizes)[2:]
    else:
        size = [int(math.floor(s * f)) for s, f in zip(x.shape[2:], scales.tolist()[2:])]
    torch_mode = {"nearest": "nearest", "linear": "bilinear" if x.dim() == 4 else "linear", "cubic": "bicubic"}[mode]
    coord = _a(node, "coordinate_transformation_mode", "half_pixel")
    if torch_mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    return F.interpolate(x, size=size, mode=torch_mode, align_corners=coord == "align_corners")


@op("Pad")
def _pad(node, x, pads=None, value=None, axes=None):
    pads = _ints(pads) if pads is not None else list(_a(node, "pads"))
    mode = _a(node, "mode", "constant")
    if axes is not None and axes.numel():  # opset 18: pads for these axes only
        chosen = [a % x.ndim for a in _ints(axes)]
        full = [0] * (2 * x.ndim)
        for j, a in enumerate(chosen):
            full[a], full[a + x.ndim] = pads[j], pads[j + len(chosen)]
        pads = full
    nd = len(pads) // 2
    spec = []
    for i in reversed(range(nd)):
        spec += [pads[i], pads[i + nd]]
    # ONNX names every axis, batch and channels too; torch's reflect/replicate pad only the last
    # 1-3 dims and refuse a spec that reaches further ("Padding size 6 is not supported for 3D
    # input"), so the leading axes' zero pairs go
    while len(spec) > 2 and spec[-1] == 0 and spec[-2] == 0:
        spec = spec[:-2]
    fill = float(value.item()) if value is not None and value.numel() else 0.0
    torch_mode = {"edge": "replicate", "wrap": "circular"}.get(mode, mode)
    return F.pad(x, spec, mode=torch_mode, value=fill if mode == "constant" else None)


# --- recurrent ----------------------------------------------------------------------------------

_ACT = {"Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Relu": torch.relu}


@op("LSTM")
def _lstm(node, x, w, r, b=None, seq_lens=None, h0=None, c0=None, p=None):
    """ONNX LSTM (gates i, o, f, c; forward, reverse or bidirectional; layout 0 or 1; peepholes)."""
    if _a(node, "input_forget", 0) or _a(node, "clip") is not None:
        raise Unsupported("LSTM with input_forget or clip")
    layout = _a(node, "layout", 0)
    if layout == 1:
        x = x.transpose(0, 1)
    seq, batch, _ = x.shape
    dirs, four_h = w.shape[0], w.shape[1]
    hidden = four_h // 4
    acts = [a.decode() if isinstance(a, bytes) else a for a in (_a(node, "activations") or [])]
    acts = acts or ["Sigmoid", "Tanh", "Tanh"] * dirs
    direction = _a(node, "direction", "forward")
    ys, hs, cs = [], [], []
    for d in range(dirs):
        f, g, h_act = (_ACT[a] for a in acts[3 * d : 3 * d + 3])
        bias = (b[d, :four_h] + b[d, four_h:]) if b is not None else torch.zeros(four_h, dtype=x.dtype, device=x.device)
        h = h0[d] if h0 is not None else torch.zeros(batch, hidden, dtype=x.dtype, device=x.device)
        c = c0[d] if c0 is not None else torch.zeros(batch, hidden, dtype=x.dtype, device=x.device)
        pi, po, pf = (p[d, :hidden], p[d, hidden : 2 * hidden], p[d, 2 * hidden :]) if p is not None else (0, 0, 0)
        reverse = direction == "reverse" or (direction == "bidirectional" and d == 1)
        steps = range(seq - 1, -1, -1) if reverse else range(seq)
        lens = seq_lens.long() if seq_lens is not None else torch.full((batch,), seq, dtype=torch.long, device=x.device)
        out = [None] * seq
        for t in steps:
            gates = x[t] @ w[d].T + h @ r[d].T + bias
            i_, o_, f_, c_ = gates.split(hidden, dim=-1)
            i_ = f(i_ + pi * c)
            f_ = f(f_ + pf * c)
            c_new = f_ * c + i_ * g(c_)
            o_ = f(o_ + po * c_new)
            h_new = o_ * h_act(c_new)
            live = (t < lens).to(x.dtype).unsqueeze(-1)  # sequence_lens: padded steps keep state
            c = live * c_new + (1 - live) * c
            h = live * h_new + (1 - live) * h
            out[t] = h_new * live
        ys.append(torch.stack(out))
        hs.append(h)
        cs.append(c)
    y = torch.stack(ys, dim=1)  # (seq, dirs, batch, hidden)
    y_h, y_c = torch.stack(hs), torch.stack(cs)
    if layout == 1:
        y, y_h, y_c = y.permute(2, 0, 1, 3), y_h.transpose(0, 1), y_c.transpose(0, 1)
    return [y, y_h, y_c]


# --- the module -------------------------------------------------------------------------------------
