"""Find the weight-heavy nodes (Conv, Gemm, MatMul) and say which can be factorized and why not."""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from tensorfold.decompose.data_aware import InputGram
from tensorfold.errors import TensorfoldError
from tensorfold.graph.model import GraphIndex, attr, subgraph_nodes
from tensorfold.graph.stats import QUANTIZED_MAC_OPS

WEIGHT_OPS = ("Conv", "Gemm", "MatMul")
QUANTIZED_OPS = tuple(QUANTIZED_MAC_OPS)  # int8 weight layers: no float weight to factorize


@dataclass(frozen=True)
class ConvAttrs:
    """A Conv's geometry (ONNX defaults filled in): what every chain's spatial conv repeats."""

    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads: tuple[int, ...]  # begins then ends, ignored unless auto_pad is NOTSET
    auto_pad: str = "NOTSET"

    def one_axis(self, axis: int) -> ConvAttrs:
        """This geometry on `axis` only (stride and dilation 1, no pads elsewhere): a conv whose
        kernel spans one axis. SAME padding is computed per axis, so auto_pad carries over."""
        nd = len(self.strides)

        def only(values: tuple[int, ...], rest: int, at: tuple[int, ...]) -> tuple[int, ...]:
            return tuple(values[i] if i in at else rest for i in range(len(values)))

        return ConvAttrs(
            only(self.strides, 1, (axis,)),
            only(self.dilations, 1, (axis,)),
            only(self.pads, 0, (axis, axis + nd)),
            self.auto_pad,
        )

    def conv_kwargs(self) -> dict[str, Any]:
        """For ChainBuilder.conv."""
        return {"strides": self.strides, "dilations": self.dilations, "pads": self.pads, "auto_pad": self.auto_pad}


@dataclass(frozen=True)
class GemmAttrs:
    alpha: float = 1.0
    beta: float = 1.0
    trans_a: bool = False  # transB is folded into Layer.weight


@dataclass(frozen=True)
class MatMulAttrs:
    input_rank: int | None = None  # rank of x when known (a TT-matrix chain reshapes by it)


LayerAttrs = ConvAttrs | GemmAttrs | MatMulAttrs


@dataclass
class Layer:
    """One factorizable node: its weight as the 2-D or conv-shaped array the math works on."""

    node: onnx.NodeProto
    kind: str  # "conv" | "gemm" | "matmul"
    weight: np.ndarray  # conv: (O, I/groups, *k); gemm/matmul: (K, N) as used in y = x @ W
    bias_name: str | None = None  # conv bias / Gemm C, passed through to the last factor
    groups: int = 1
    attrs: LayerAttrs = field(default_factory=MatMulAttrs)
    # second moments of the layer's inputs on calibration data (decompose.data_aware.InputGram);
    # when set, methods fit factors and rank curves to the layer's output instead of its weight
    gram: InputGram | None = None
    # every layer reading this layer's weight tensor, this one included, when it is shared (a
    # weight is factorized once; all its users read the same factors)
    sharers: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def conv(self) -> ConvAttrs:
        """The geometry of a conv layer (a TypeError for any other kind: a method's bug)."""
        if not isinstance(self.attrs, ConvAttrs):
            raise TypeError(f"{self.name} is a {self.kind} layer, not a conv")
        return self.attrs

    @property
    def gemm(self) -> GemmAttrs:
        if not isinstance(self.attrs, GemmAttrs):
            raise TypeError(f"{self.name} is a {self.kind} layer, not a Gemm")
        return self.attrs

    @property
    def statistics(self) -> InputGram:
        """The calibration statistics, for the code paths that run only with them."""
        if self.gram is None:
            raise TypeError(f"{self.name} has no calibration statistics")
        return self.gram

    @property
    def key(self) -> str:
        """What a factorization is remembered by: the weight tensor when shared, else the node."""
        return f"weight:{self.node.input[1]}" if self.sharers else self.name

    @property
    def leads(self) -> bool:
        """The layer that owns a shared weight's parameters in reports (the first user)."""
        return not self.sharers or self.sharers[0] == self.name

    @property
    def params(self) -> int:
        return int(self.weight.size)

    @property
    def kernel(self) -> tuple[int, ...]:
        return tuple(self.weight.shape[2:]) if self.kind == "conv" else ()

    def stride_positions(self, first_axis: int = 0) -> int:
        """Positions per output position of a chain conv that applies the layer's stride on the
        axes from `first_axis` on only: prod(strides) at the input's resolution, 1 at the output's
        (padding ignored). A matrix: 1."""
        return math.prod(self.conv.strides[first_axis:]) if self.kind == "conv" else 1

    @property
    def is_pointwise(self) -> bool:
        """A 1x1 conv or a matrix: every low-rank method reduces to the SVD here."""
        return self.kind != "conv" or all(k == 1 for k in self.kernel)

    @property
    def is_depthwise(self) -> bool:
        return self.kind == "conv" and self.groups > 1 and self.weight.shape[1] == 1

    def group_weights(self) -> list[np.ndarray]:
        """Conv kernel split per group, each (O/g, I/g, *k)."""
        if self.kind != "conv":
            return [self.weight]
        return np.split(self.weight, self.groups, axis=0)


@dataclass
class Skip:
    node: str
    op: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"node": self.node, "op": self.op, "reason": self.reason}


def ensure_node_names(model: onnx.ModelProto) -> None:
    """Name every top-level node (reports and --include/--exclude refer to nodes by name)."""
    taken = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            base = f"{node.op_type}_{i}"
            name, j = base, 1
            while name in taken:
                name, j = f"{base}_{j}", j + 1
            node.name = name
            taken.add(name)


def find_layers(
    model: onnx.ModelProto, include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()
) -> tuple[list[Layer], list[Skip]]:
    """Every Conv/Gemm/MatMul of the top-level graph, as a Layer or a Skip with its reason."""
    index = GraphIndex(model)
    layers: list[Layer] = []
    skips: list[Skip] = []
    for parent, node in subgraph_nodes(model):
        if node.op_type in WEIGHT_OPS or node.op_type in QUANTIZED_OPS:
            skips.append(
                Skip(
                    node.name,
                    node.op_type,
                    f"inside the {parent.op_type} subgraph of '{parent.name}': only top-level nodes are rewritten",
                )
            )
    for node in model.graph.node:
        if node.op_type in QUANTIZED_OPS:
            skips.append(Skip(node.name, node.op_type, "quantized layer: left as it is"))
            continue
        if node.op_type not in WEIGHT_OPS or node.domain not in ("", "ai.onnx"):
            continue
        if include and not any(fnmatch.fnmatchcase(node.name, p) for p in include):
            skips.append(Skip(node.name, node.op_type, "not matched by --include"))
            continue
        if exclude and any(fnmatch.fnmatchcase(node.name, p) for p in exclude):
            skips.append(Skip(node.name, node.op_type, "excluded by --exclude"))
            continue
        result = _classify(node, index)
        if isinstance(result, Layer):
            result.node = _detached(node)
            layers.append(result)
        else:
            skips.append(result)
    weight_nodes = [n.name for n in model.graph.node if n.op_type in WEIGHT_OPS]
    if include and weight_nodes and not any(fnmatch.fnmatchcase(n, p) for n in weight_nodes for p in include):
        named = weight_nodes[:3]
        raise TensorfoldError(
            f"--include {' '.join(include)}: matches none of the model's Conv/Gemm/MatMul nodes"
            + (f" (named like {', '.join(named)}: `tensorfold inspect` lists them)" if named else "")
        )
    return layers, skips


def _detached(node: onnx.NodeProto) -> onnx.NodeProto:
    """A copy of the node that stands alone. A node read from a model keeps that whole model alive
    for as long as it is referenced, and layers outlive their model copy (a cached factorization
    holds its layer): on a ViT-S, each sensitivity probe kept a 100 MB copy (17 GB in all)."""
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    return copy


def _weight_problem(name: str, index: GraphIndex) -> str | None:
    if not name:
        return "no weight input"
    if not index.is_constant(name):
        producer = index.producer.get(name)
        if producer is not None and producer.op_type == "DequantizeLinear":
            return "weight comes from DequantizeLinear (quantized model): left as it is"
        if name in index.initializers:
            return "weight is an initializer that is also a graph input (can be overridden): not a constant"
        return "weight is not a constant"
    arr = index.array(name)
    if not np.issubdtype(arr.dtype, np.floating):
        return f"weight has dtype {arr.dtype}, not floating point"
    if not np.all(np.isfinite(arr)):
        return "weight holds NaN or Inf values"
    return None


def _classify(node: onnx.NodeProto, index: GraphIndex) -> Layer | Skip:
    op = node.op_type

    def skip(reason: str) -> Skip:
        return Skip(node.name, op, reason)

    if op == "Conv":
        problem = _weight_problem(node.input[1] if len(node.input) > 1 else "", index)
        if problem:
            return skip(problem)
        w = index.array(node.input[1])
        if w.ndim < 3:
            return skip(f"conv weight of rank {w.ndim}")
        groups = attr(node, "group", 1)
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        layer = Layer(node, "conv", w, bias, groups, _conv_attrs(node, w))
        if layer.is_depthwise:
            return skip("depthwise conv (one input channel per group): nothing to factorize")
        return layer
    if op == "Gemm":
        problem = _weight_problem(node.input[1], index)
        if problem:
            return skip(problem)
        w = index.array(node.input[1])
        if w.ndim != 2:
            return skip(f"Gemm weight of rank {w.ndim}")
        if attr(node, "transB", 0):
            w = w.T
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        attrs = GemmAttrs(
            float(attr(node, "alpha", 1.0)), float(attr(node, "beta", 1.0)), bool(attr(node, "transA", 0))
        )
        return Layer(node, "gemm", w, bias, 1, attrs)
    # MatMul: y = x @ W with W a constant matrix
    a, b = node.input[0], node.input[1]
    if index.is_constant(a) and not index.is_constant(b):
        return skip("constant is the first MatMul operand (W @ x): only x @ W is rewritten")
    problem = _weight_problem(b, index)
    if problem:
        return skip(problem)
    w = index.array(b)
    if w.ndim != 2:
        return skip(f"MatMul weight of rank {w.ndim}: only 2-D weights are rewritten")
    x_shape = index.shape(a)
    return Layer(node, "matmul", w, None, 1, MatMulAttrs(len(x_shape) if x_shape is not None else None))


def _conv_attrs(node: onnx.NodeProto, w: np.ndarray) -> ConvAttrs:
    nd = w.ndim - 2
    pads = attr(node, "pads", None)
    auto_pad = attr(node, "auto_pad", b"NOTSET")
    return ConvAttrs(
        tuple(int(v) for v in attr(node, "strides", [1] * nd)),
        tuple(int(v) for v in attr(node, "dilations", [1] * nd)),
        tuple(int(v) for v in pads) if pads is not None else (0,) * (2 * nd),
        auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad),
    )


def group_shared_weights(model: onnx.ModelProto, layers: list[Layer]) -> tuple[list[Layer], list[Skip]]:
    """Layers whose weight tensor other nodes read too. Where every reader is one of `layers` and
    reads it the same way, they become sharers of one factorization (Layer.sharers); otherwise
    they are kept whole with the reason: factorizing one use would keep the weight for the other
    and add the factors on top."""
    index = GraphIndex(model)
    by_weight: dict[str, list[Layer]] = {}
    for layer in layers:
        by_weight.setdefault(layer.node.input[1], []).append(layer)
    kept: list[Layer] = []
    skips: list[Skip] = []
    for name, group in by_weight.items():
        readers = index.consumers.get(name, [])
        if len(group) == 1 and len(readers) <= 1:
            kept.append(group[0])
            continue
        members = {layer.name for layer in group}
        others = [n.name or n.op_type for n in readers if n.name not in members]
        lead = group[0]
        # Gemm's alpha goes into a factor: users must agree on it (conv attrs only shape the nodes)
        alike = all(
            layer.kind == lead.kind
            and layer.groups == lead.groups
            and layer.weight.shape == lead.weight.shape
            and (layer.kind == "conv" or layer.attrs == lead.attrs)
            and np.array_equal(layer.weight, lead.weight)
            for layer in group[1:]
        )
        if others or not alike:
            why = (
                f"also read by {others[0]}" + (f" and {len(others) - 1} more" if len(others) > 1 else "")
                if others
                else "read in different layouts (e.g. Gemm transB) by its users"
            )
            skips.extend(
                Skip(
                    layer.name,
                    layer.node.op_type,
                    f"weight '{name}' is shared and {why}: factorizing this use alone would add parameters; kept whole",
                )
                for layer in group
            )
            continue
        sharers = tuple(layer.name for layer in group)
        for layer in group:
            layer.sharers = sharers
        kept.extend(group)
    order = {layer.name: i for i, layer in enumerate(layers)}
    return sorted(kept, key=lambda layer: order[layer.name]), skips


def merged_gram(layers: list[Layer]) -> InputGram | None:
    """The statistics of every use of a shared weight together: the output error of all uses is
    tr(D (G1 + G2 + ...) D^T), so the factors fit them all at once."""
    grams = [layer.gram for layer in layers if layer.gram is not None]
    if len(grams) < len(layers):
        return None
    return InputGram(np.sum([g.grams for g in grams], axis=0), sum(g.count for g in grams))
