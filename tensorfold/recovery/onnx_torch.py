"""ONNX graph -> trainable torch module, and trained weights back into the same graph.
The op kernels it runs are in recovery/torch_ops.py.

A small interpreter over torch ops rather than onnx2torch: tried as a new user would, onnx2torch
fails on weights stored as Constant nodes (every PP-OCR model) and lacks GlobalMaxPool and LSTM.
Here every floating-point initializer becomes an nn.Parameter under its own name, nodes run in
graph order, and a node with no torch equivalent runs frozen through onnxruntime (no gradient
flows through it) with a warning instead of failing the run.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from tensorfold.errors import TensorfoldError
from tensorfold.graph.model import make_model
from tensorfold.passes.chains import provenance
from tensorfold.recovery.fusion import FUSED_OPS, fuse
from tensorfold.recovery.torch_ops import OPS, Unsupported

if TYPE_CHECKING:
    import onnxruntime as ort


class NodeFailed(TensorfoldError):
    """One node of the model failed in the trainer: says which op, which node, on what shapes."""

    def __init__(self, node: onnx.NodeProto, args: Sequence[object], exc: Exception, frozen: bool = False) -> None:
        shapes = [list(a.shape) if hasattr(a, "shape") else None for a in args]
        where = "frozen in onnxruntime" if frozen else "in the torch trainer"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        super().__init__(
            f"{node.op_type} node '{node.name or node.output[0]}' failed {where} on inputs of shape {shapes}: {first}"
        )


def _param_name(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_]", "_", name)


def _named_split(result: Any) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """A forward's (outputs, captured values), with or without a capture."""
    return result if isinstance(result, tuple) else (result, {})


def _named(result: Any) -> dict[str, torch.Tensor]:
    """A forward's outputs (by position) and captured values (by name) in one mapping."""
    outputs, captured = _named_split(result)
    return {**{f"output:{k}": v for k, v in enumerate(outputs)}, **captured}


# where a whole batch's run holds the batch on one value: (axis, inner). inner False: the axis is
# the batch itself, or the batch outermost in it; True: the batch innermost in an axis that folds
# it with another (a CRNN's (T x batch, features) after its time-major Reshape)
Layout = tuple[int, bool]


def _as_calls(value: torch.Tensor, layout: Layout, n: int, b0: int) -> torch.Tensor:
    """A whole batch of `n` samples' value laid out as the calls of the fixed batch `b0` stacked
    along the first axis: what running it in slices gives, and what the onnxruntime side gives."""
    axis, inner = layout
    if not value.ndim or (axis == 0 and not inner):
        return value
    calls, shape = n // b0, value.shape
    if not inner:
        return torch.cat(torch.split(value, shape[axis] // calls, dim=axis))
    v = value.reshape(*shape[:axis], shape[axis] // n, calls, b0, *shape[axis + 1 :]).movedim(axis + 1, 0)
    return torch.cat(list(v.reshape(calls, *shape[:axis], shape[axis] // calls, *shape[axis + 1 :])))


def _batch_layouts(
    sliced: dict[str, torch.Tensor], whole: dict[str, torch.Tensor], n: int, b0: int
) -> dict[str, Layout] | None:
    """For each value, the layout under which the whole run of `n` samples equals the sliced one;
    None when some value has none (the export mixes its batch up: it runs in slices)."""
    layouts: dict[str, Layout] = {}
    for name, s in sliced.items():
        w = whole.get(name)
        if w is None:
            return None
        tries = [(a, inner) for a in range(max(w.ndim, 1)) for inner in (False, True)]
        found = None
        for axis, inner in tries:
            if w.ndim and (w.shape[axis] % n or (inner and w.shape[axis] == n)):
                continue
            laid = _as_calls(w, (axis, inner), n, b0)
            if laid.shape != s.shape:
                continue
            if s.is_floating_point():
                scale = float(s.abs().max()) if s.numel() else 0.0
                same = torch.allclose(laid.float(), s.float(), rtol=1e-4, atol=1e-5 * max(scale, 1.0))
            else:
                same = torch.equal(laid, s)
            if same:
                found = (axis, inner)
                break
        if found is None:
            return None
        layouts[name] = found
    return layouts


class OnnxModule(nn.Module):
    """Runs an ONNX graph with torch ops. Float initializers are trainable parameters."""

    def __init__(self, model: onnx.ModelProto, trainable: bool = True, fused: bool = True):
        super().__init__()
        from tensorfold.graph.normalize import constants_to_initializers

        self.proto = onnx.ModelProto()
        self.proto.CopyFrom(model)
        constants_to_initializers(self.proto)
        graph = self.proto.graph
        self.params = nn.ParameterDict()
        self.param_of: dict[str, str] = {}  # initializer name -> parameter key
        self.constant_of: dict[str, str] = {}  # non-float initializer name -> buffer name
        # a scalar is part of the function, not a weight: an exponent (Pow's gradient in the exponent
        # is NaN for negative bases), a Clip bound, an epsilon, hard-swish's 3 and 6 (PaddlePaddle
        # exports name them p2o_helper_constant_*); PRelu's single slope is the one learnable scalar
        slopes = {n.input[1] for n in graph.node if n.op_type == "PRelu" and len(n.input) > 1}
        for t in graph.initializer:
            arr = numpy_helper.to_array(t).copy()
            tensor = torch.from_numpy(arr)
            if tensor.is_floating_point():
                key = _param_name(t.name)
                # an initializer named like a ParameterDict attribute ("half", "to", "train") too
                while key in self.params or hasattr(self.params, key):
                    key += "_"
                learnable = trainable and (tensor.numel() > 1 or t.name in slopes)
                self.params[key] = nn.Parameter(tensor.float(), requires_grad=learnable)
                self.param_of[t.name] = key
            else:
                key = "c_" + _param_name(t.name)
                while hasattr(self, key):
                    key += "_"
                self.register_buffer(key, tensor, persistent=False)  # moves with .to(device)
                self.constant_of[t.name] = key
        inits = {t.name for t in graph.initializer}
        self.input_names = [v.name for v in graph.input if v.name not in inits]
        self.output_names = [v.name for v in graph.output]
        # the graph's nodes, and (fused=True) the same with spelled-out LayerNorms and GELUs as one
        # op each (recovery/fusion.py), run unless a capture asks for a value inside one
        plain = list(graph.node)
        joined, self._fused_away = fuse(self.proto) if fused else (plain, set())
        self.fused_ops = [n.op_type for n in joined if n.op_type in FUSED_OPS]
        self._plans = {
            False: (plain, _last_uses(plain, self.output_names)),
            True: (joined, _last_uses(joined, self.output_names)),
        }
        self.frozen = [n for n in plain if n.op_type not in OPS]
        for n in self.frozen:
            warnings.warn(
                f"{n.op_type} node '{n.name}' has no torch equivalent here: it runs frozen through "
                f"onnxruntime, no gradient flows through it",
                stacklevel=2,
            )
        self._ort_cache: dict[str, ort.InferenceSession] = {}
        self._unsupported: set[str] = set()  # nodes whose variant fell back to frozen execution
        from tensorfold.onnxrt.batching import sample_batch

        # a model exported with a fixed batch runs on any batch as slices of that size: training
        # batches are not the export's
        self.fixed_batch = sample_batch(self.proto)
        # capture set -> where each output and captured value holds the batch when the whole batch
        # runs at once (None: this export runs in slices only); see _whole_batch_layouts
        self._batch_layouts: dict[tuple[str, ...], dict[str, Layout] | None] = {}
        # > 1: a training forward runs the graph in this many segments under activation
        # checkpointing (only the values crossing a segment boundary are kept for the backward
        # pass; each segment's own are recomputed), trading about one more forward for memory
        self.checkpoint_segments = 0
        # node name -> the layer its factor chain replaced (the provenance factorize writes on it)
        self.chain_of = {n.name: info["original"] for n in plain if (info := provenance(n)) is not None}
        # chains (by that layer) whose nodes a training forward runs under activation checkpointing:
        # their intermediates are recomputed in the backward pass instead of kept (a Tensor-Train
        # chain's can be 40x its input: recovery.memory.recompute_to_fit)
        self.recompute: frozenset[str] = frozenset()
        self.running = ""  # the node being run (what the saved-bytes hooks attribute to)

    def forward(
        self, *inputs: torch.Tensor, capture: tuple[str, ...] = ()
    ) -> list[torch.Tensor] | tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        b0 = self.fixed_batch
        n = int(inputs[0].shape[0]) if inputs and inputs[0].ndim else None
        if b0 is None or n is None or n == b0:
            return self._forward(*inputs, capture=capture)
        layouts = self._whole_batch_layouts(inputs, capture)
        if layouts is not None and (n % b0 == 0 or all(lay == (0, False) for lay in layouts.values())):
            outputs, captured = _named_split(self._forward(*inputs, capture=capture))
            outputs = [_as_calls(v, layouts[f"output:{k}"], n, b0) for k, v in enumerate(outputs)]
            if not capture:
                return outputs
            return outputs, {name: _as_calls(v, layouts[name], n, b0) for name, v in captured.items()}
        return self._sliced(inputs, capture)

    def _whole_batch_layouts(
        self, inputs: Sequence[torch.Tensor], capture: tuple[str, ...]
    ) -> dict[str, Layout] | None:
        """Whether this fixed-batch export gives the same results on a whole batch at once, and on
        which axis of each output and captured value it then holds the batch (Layout): measured once per
        capture set, two fixed batches run in slices and at once. Many exports compute their
        Reshapes from Shape and run on any batch; at once, ddddocr's CRNN runs the forward and
        backward of a batch of 16 in 1.0 s against 5.4 s in slices (tools/bench_fixed_batch_step.py). An export whose Reshape
        holds the batch as a constant fails or differs, and keeps running in slices."""
        if capture in self._batch_layouts:
            return self._batch_layouts[capture]
        b0, n = self.fixed_batch, int(inputs[0].shape[0])
        if b0 is None or n < 2 * b0:
            return None  # measured on a larger batch
        probe = tuple(x[: 2 * b0] if x.ndim and x.shape[0] == n else x for x in inputs)
        if all(torch.equal(x[:b0], x[b0:]) for x in probe if x.ndim and x.shape[0] == 2 * b0):
            return None  # two equal calls cannot tell the layouts apart: measured on other samples
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sliced = _named(self._sliced(probe, capture))
            try:
                whole = _named(self._forward(*probe, capture=capture))
            except Exception:  # noqa: BLE001 - a constant batch in a Reshape: the slices answer
                whole = None
        layouts = _batch_layouts(sliced, whole, 2 * b0, b0) if whole is not None else None
        self._batch_layouts[capture] = layouts
        return layouts

    def _sliced(
        self, inputs: Sequence[torch.Tensor], capture: tuple[str, ...]
    ) -> list[torch.Tensor] | tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """The batch as calls of the fixed batch, their results stacked along the first axis."""
        b0 = self.fixed_batch
        assert b0 is not None
        n = int(inputs[0].shape[0])
        parts: list[Any] = []  # _forward's results: (outputs, captured) with `capture`, else outputs
        for start in range(0, n, b0):
            # the last slice is filled up with its last sample and trimmed after
            take = torch.arange(start, start + b0, device=inputs[0].device).clamp_max(n - 1)
            parts.append(
                self._forward(
                    *(x.index_select(0, take) if x.ndim and x.shape[0] == n else x for x in inputs), capture=capture
                )
            )
        keep = b0 - ((-n) % b0)

        def joined(values: list[torch.Tensor]) -> torch.Tensor:
            if not values[0].ndim:
                return values[0]  # a scalar: one per call, not per sample
            if values[0].shape[0] == b0:
                return torch.cat(values[:-1] + [values[-1][:keep]])
            # batched on another axis (a CRNN's time-major (T, batch, classes)): the calls stacked
            # along the first axis, as the onnxruntime side stacks them (OnnxTeacher, verification);
            # the filled-up tail of a last slice cannot be told apart there, so it must not exist
            if keep != b0:
                raise TensorfoldError(
                    f"an output of shape {tuple(values[0].shape)} is not batched on its first axis: "
                    f"feed a multiple of the model's fixed batch ({b0}) samples"
                )
            return torch.cat(values)

        if capture:
            outputs = [joined([p[0][k] for p in parts]) for k in range(len(parts[0][0]))]
            return outputs, {name: joined([p[1][name] for p in parts]) for name in parts[0][1]}
        return [joined([p[k] for p in parts]) for k in range(len(parts[0]))]

    def _forward(
        self, *inputs: torch.Tensor, capture: tuple[str, ...] = ()
    ) -> list[torch.Tensor] | tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        values: dict[str, torch.Tensor] = {name: getattr(self, key) for name, key in self.constant_of.items()}
        for name, key in self.param_of.items():
            values[name] = self.params[key]
        for name, x in zip(self.input_names, inputs):
            values[name] = x
        nodes, last_use = self._plans[not self._fused_away.intersection(capture)]
        segments = self.checkpoint_segments
        if segments > 1 and torch.is_grad_enabled() and len(nodes) > segments:
            from torch.utils.checkpoint import checkpoint, set_checkpoint_early_stop

            bounds = np.linspace(0, len(nodes), segments + 1).round().astype(int)
            # early stop ends a recomputation by raising inside it, which the node errors below
            # would report as the node's failure: each segment is recomputed whole
            with set_checkpoint_early_stop(False):
                for start, end in zip(bounds[:-1], bounds[1:]):
                    values = checkpoint(
                        self._segment, values, nodes, last_use, int(start), int(end), capture, use_reentrant=False
                    )
        elif self.recompute and torch.is_grad_enabled():
            values = self._chains_recomputed(values, nodes, last_use, capture)
        else:
            values = self._segment(values, nodes, last_use, 0, len(nodes), capture)
        outputs = [values[n] for n in self.output_names]
        if capture:
            return outputs, {n: values[n] for n in capture if n in values}
        return outputs

    def _chains_recomputed(
        self,
        values: dict[str, torch.Tensor],
        nodes: list[onnx.NodeProto],
        last_use: list[tuple[str, ...]],
        capture: tuple[str, ...],
    ) -> dict[str, torch.Tensor]:
        """The graph run with each chain in self.recompute under activation checkpointing."""
        from torch.utils.checkpoint import checkpoint, set_checkpoint_early_stop

        done = 0
        with set_checkpoint_early_stop(False):  # a recomputation runs whole (see _forward)
            for begin, end in chain_spans(nodes, self.chain_of, self.recompute):
                values = self._segment(values, nodes, last_use, done, begin, capture)
                values = checkpoint(self._segment, values, nodes, last_use, begin, end, capture, use_reentrant=False)
                done = end
        return self._segment(values, nodes, last_use, done, len(nodes), capture)

    def _segment(
        self,
        values: dict[str, torch.Tensor],
        nodes: list[onnx.NodeProto],
        last_use: list[tuple[str, ...]],
        start: int,
        end: int,
        capture: tuple[str, ...],
    ) -> dict[str, torch.Tensor]:
        """nodes[start:end] on `values` (not changed: checkpointing runs a segment twice on the
        same input); the values live after them. last_use: per node, the values no later one reads."""
        values = dict(values)
        for index in range(start, end):
            node = nodes[index]
            self.running = node.name
            args = [values[i] if i else None for i in node.input]
            while args and args[-1] is None:
                args.pop()
            out = None
            if node.op_type in OPS and (node.name or node.output[0]) not in self._unsupported:
                try:
                    out = OPS[node.op_type](node, *args)
                except Unsupported as why:
                    self._unsupported.add(node.name or node.output[0])
                    warnings.warn(
                        f"{node.op_type} node '{node.name}': {why}; it runs frozen through onnxruntime, "
                        f"no gradient flows through it",
                        stacklevel=2,
                    )
                except Exception as exc:  # noqa: BLE001 - named by op and node, not blamed on the data
                    raise NodeFailed(node, args, exc) from exc
            if out is None:
                try:
                    out = self._frozen(node, args)
                except Exception as exc:  # noqa: BLE001
                    raise NodeFailed(node, args, exc, frozen=True) from exc
            outs = out if isinstance(out, (list, tuple)) else [out]
            for name, value in zip(node.output, outs):
                if name:
                    values[name] = value
            for name in last_use[index]:
                if name not in capture:
                    values.pop(name, None)
        return values

    def _frozen(self, node: onnx.NodeProto, args: list[torch.Tensor | None]) -> list[torch.Tensor]:
        from tensorfold.onnxrt.sessions import make_session

        key = node.name or node.output[0]
        arrays = [a.detach().cpu().numpy() if a is not None else None for a in args]
        given = {f"in{i}": a for i, a in enumerate(arrays) if a is not None}  # an omitted optional input stays empty
        if key not in self._ort_cache:
            inputs = [
                onnx.helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(a.dtype), None)
                for name, a in given.items()
            ]
            outs = [onnx.helper.make_empty_tensor_value_info(f"out{i}") for i in range(len(node.output))]
            single = onnx.helper.make_node(
                node.op_type,
                [f"in{i}" if a is not None else "" for i, a in enumerate(arrays)],
                [f"out{i}" for i in range(len(node.output))],
                domain=node.domain,
            )
            single.attribute.extend(node.attribute)
            g = onnx.helper.make_graph([single], "frozen", inputs, outs)
            m = make_model(g, self.proto.opset_import, self.proto.ir_version or None)
            self._ort_cache[key] = make_session(m)
        results = self._ort_cache[key].run(None, given)
        device = next((a.device for a in args if a is not None), torch.device("cpu"))
        return [torch.from_numpy(np.asarray(r)).to(device) for r in results]

    def write_back(self) -> onnx.ModelProto:
        """The original graph with the trained parameter values in its initializers."""
        out = onnx.ModelProto()
        out.CopyFrom(self.proto)
        for t in out.graph.initializer:
            key = self.param_of.get(t.name)
            if key is None:
                continue
            arr = self.params[key].detach().cpu().numpy()
            dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
            t.CopyFrom(numpy_helper.from_array(arr.astype(dtype), t.name))
        return out


class NotTrainable(TensorfoldError):
    """The trainer cannot run the model: a node failed on the data (`on_data`: the message names the
    op, the node and the shapes) or the module could not be built (an unsupported op, ...)."""

    def __init__(self, message: str, on_data: bool) -> None:
        super().__init__(message)
        self.on_data = on_data


def chain_spans(nodes: list[onnx.NodeProto], chain_of: dict[str, str], chains: frozenset[str]) -> list[tuple[int, int]]:
    """The [begin, end) node ranges of each run of consecutive nodes of one chain in `chains`
    (chain_of: node name -> the layer its chain replaced)."""
    spans: list[tuple[int, int]] = []
    current = None
    for index, node in enumerate(nodes):
        chain = chain_of.get(node.name)
        if chain in chains and chain == current:
            spans[-1] = (spans[-1][0], index + 1)
        elif chain in chains:
            spans.append((index, index + 1))
        current = chain
    return spans


def _last_uses(nodes: list[onnx.NodeProto], outputs: list[str]) -> list[tuple[str, ...]]:
    """Per node, the values no later node reads (its inputs read for the last time, its outputs read
    by nobody): the interpreter drops them as it goes, as eager torch code does. Keeping every
    intermediate to the end held 2.5 GB for one evaluation batch of PP-OCR rec. Values a subgraph
    (If/Loop body) reads from the outer scope count as read by the node that holds it."""
    last: dict[str, int] = {}
    for index, node in enumerate(nodes):
        for name in _names_read(node):
            last[name] = index
        for name in node.output:
            last.setdefault(name, index)
    keep = set(outputs)
    drops: list[list[str]] = [[] for _ in nodes]
    for name, index in last.items():
        if name and name not in keep:
            drops[index].append(name)
    return [tuple(d) for d in drops]


def _names_read(node: onnx.NodeProto) -> list[str]:
    names = [i for i in node.input if i]
    for attribute in node.attribute:
        graphs = [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)
        for graph in graphs:
            for inner in graph.node:
                names.extend(_names_read(inner))
    return names
