"""How a factorized layer becomes ONNX nodes: the ChainBuilder each method's emitter (beside its
pass) writes into, and the kernels they share. Every chain ends by writing the original node's
output name, so consumers are untouched.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
from numpy.typing import DTypeLike
from onnx import helper, numpy_helper

from tensorfold.passes.layers import Layer

# factor tensors already in the graph, by content (dtype, shape, sha256) -> (name, size): the users of
# a shared weight read one set of factors
FactorPool = dict[tuple[str, tuple[int, ...], str], tuple[str, int]]


class ChainBuilder:
    """Collects the nodes and initializers of one replacement chain, with provenance in names."""

    def __init__(
        self, layer: Layer, method: str, fresh: Callable[[str], str], doc: str, pool: FactorPool | None = None
    ):
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
        self.pooled: FactorPool = {}
        self.reused_params = 0

    @property
    def params(self) -> int:
        """Parameters this chain adds to the graph."""
        return sum(int(np.prod(t.dims)) for t in self.initializers if t.data_type in _FLOATS)

    def const(self, suffix: str, array: np.ndarray, dtype: DTypeLike | None = None) -> str:
        array = np.ascontiguousarray(array, dtype=dtype or self.dtype)
        key = None
        if self.pool is not None:
            key = (array.dtype.str, array.shape, hashlib.sha256(array.tobytes()).hexdigest())
            if key in self.pool:
                name, size = self.pool[key]
                if onnx.helper.np_dtype_to_tensor_dtype(array.dtype) in _FLOATS:  # as params counts
                    self.reused_params += size
                return name
        name = self.fresh(f"{self.prefix}/{suffix}")
        self.initializers.append(numpy_helper.from_array(array, name))
        if key is not None:
            self.pooled[key] = (name, int(array.size))
        return name

    def op(self, op_type: str, inputs: list[str], suffix: str, output: str | None = None, **attrs: Any) -> str:
        out = output or self.fresh(f"{self.prefix}/{suffix}_out")
        node = helper.make_node(
            op_type, inputs, [out], name=self.fresh(f"{self.prefix}/{suffix}"), doc_string=self.doc, **attrs
        )
        self.nodes.append(node)
        return out

    def conv(
        self,
        x: str,
        weight: np.ndarray,
        suffix: str,
        *,
        bias: str | None = None,
        group: int = 1,
        strides: Sequence[int] | None = None,
        pads: Sequence[int] | None = None,
        dilations: Sequence[int] | None = None,
        auto_pad: str = "NOTSET",
        output: str | None = None,
    ) -> str:
        nd = weight.ndim - 2
        attrs = {
            "kernel_shape": list(weight.shape[2:]),
            "group": group,
            "strides": list(strides or [1] * nd),
            "dilations": list(dilations or [1] * nd),
        }
        if auto_pad not in ("NOTSET", ""):
            attrs["auto_pad"] = auto_pad
        else:
            attrs["pads"] = list(pads or [0] * (2 * nd))
        inputs = [x, self.const(f"{suffix}.weight", weight)] + ([bias] if bias else [])
        return self.op("Conv", inputs, suffix, output, **attrs)


_FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


def pointwise_kernel(matrix: np.ndarray, nd: int) -> np.ndarray:
    """(out, in) matrix -> (out, in, 1, ..., 1) conv kernel."""
    return matrix.reshape(*matrix.shape, *([1] * nd))


def axis_kernel(vectors: np.ndarray, axis: int, nd: int, channels_in: int) -> np.ndarray:
    """Kernel whose spatial extent is along `axis` only: (C_out, C_in, 1.., k, ..1)."""
    shape = [1] * nd
    shape[axis] = vectors.shape[-1]
    return vectors.reshape(vectors.shape[0], channels_in, *shape)


PROVENANCE = "[tensorfold] "  # factorize.py writes it on every chain node: JSON after this prefix


def provenance(node: onnx.NodeProto) -> dict[str, Any] | None:
    """What a chain node's doc_string records (original layer, method, ranks, output), or None for
    a node no factorization wrote."""
    if not node.doc_string.startswith(PROVENANCE + "{"):
        return None
    info = json.loads(node.doc_string[len(PROVENANCE) :])
    return info if isinstance(info, dict) else None
