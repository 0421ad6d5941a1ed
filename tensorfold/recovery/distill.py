"""Distillation losses and teachers. General: any student module, any teacher (an ONNX model run
by onnxruntime, or a torch module), with or without labels, and any task: outputs with a class
axis (classifiers' scores) are distilled with Hinton's KD and judged by argmax agreement; every
other output (a detector's maps, an OCR model's sequences, an audio model's states) by its
relative squared error against the teacher's. A teacher returns all of its outputs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from tensorfold.passes.chains import provenance

if TYPE_CHECKING:
    from tensorfold.recovery.onnx_torch import OnnxModule


def hinton_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) on temperature-softened distributions, scaled by T^2 (Hinton et al. 2015)."""
    t = temperature
    return (
        F.kl_div(
            F.log_softmax(student_logits / t, dim=-1), F.softmax(teacher_logits / t, dim=-1), reduction="batchmean"
        )
        * t
        * t
    )


_INTEGER_TYPES = frozenset(
    {
        onnx.TensorProto.INT8,
        onnx.TensorProto.INT16,
        onnx.TensorProto.INT32,
        onnx.TensorProto.INT64,
        onnx.TensorProto.UINT8,
        onnx.TensorProto.UINT16,
        onnx.TensorProto.UINT32,
        onnx.TensorProto.UINT64,
        onnx.TensorProto.BOOL,
    }
)


@dataclass(frozen=True)
class Outputs:
    """The model's outputs as losses and validation see them: output index -> the axis holding
    class scores (graph.verify.class_axes: a Softmax's axis, a 2-D (N, C) output, a Gemm/MatMul's
    last axis); outputs without one are maps or values, matched by relative squared error."""

    names: tuple[str, ...]
    axes: dict[int, int]
    probabilities: frozenset[int] = frozenset()  # outputs a Softmax produced: KD takes their logs as logits
    integers: frozenset[int] = frozenset()  # outputs of an integer type (predicted classes, ids): judged by equality

    @classmethod
    def of(cls, model: onnx.ModelProto, labelled: bool = True) -> Outputs:
        """The outputs' roles. `labelled`: the training data has labels, which confirm a class axis
        guessed by shape ((N, C) outputs, a Gemm/MatMul's last axis); without them an (N, C) output
        is class scores only where a Gemm/MatMul (a classifier's head) or the graph (a Softmax, an
        ArgMax reader) says so: MiniLM's pooled sentence embedding (N, 384) was distilled by KD
        over 384 "classes" and reported an argmax agreement, a meaningless loss and metric."""
        from tensorfold.graph.verify import class_axes

        axes = class_axes(model, by_shape=True if labelled else "head")
        names = tuple(o.name for o in model.graph.output)
        producers = {o: n.op_type for n in model.graph.node for o in n.output}
        return cls(
            names,
            {i: axes[n] for i, n in enumerate(names) if n in axes},
            frozenset(i for i, n in enumerate(names) if producers.get(n) == "Softmax"),
            frozenset(i for i, o in enumerate(model.graph.output) if o.type.tensor_type.elem_type in _INTEGER_TYPES),
        )

    @property
    def classifier(self) -> bool:
        """The first output holds class scores: labels and accuracy apply to it."""
        return 0 in self.axes

    @property
    def only_integers(self) -> bool:
        """Every output is an integer (a tagger ending in ArgMax): no output error, only agreement."""
        return bool(self.names) and len(self.integers) == len(self.names)

    def describe(self) -> str:
        scores = [self.names[i] for i in self.axes if i not in self.integers]
        labels = [self.names[i] for i in sorted(self.integers)]
        rest = [n for i, n in enumerate(self.names) if i not in self.axes and i not in self.integers]
        parts = (
            ([f"class scores {', '.join(scores)} (KD, argmax agreement)"] if scores else [])
            + ([f"integer outputs {', '.join(labels)} (agreement; no gradient of their own)"] if labels else [])
            + ([f"{', '.join(rest)} matched by relative error"] if rest else [])
        )
        return "; ".join(parts)


def common_part(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both cut to the shape they share. A sequence decoder's output (SLANet's table tokens) ends
    where the model emits its end token, so a student may stop a few steps before or after its
    teacher: the steps both took are compared, the rest carry no gradient (verification counts
    such a change as a wholly different output)."""
    if student.shape == teacher.shape or student.ndim != teacher.ndim:
        return student, teacher
    common = tuple(slice(0, min(a, b)) for a, b in zip(student.shape, teacher.shape))
    return student[common], teacher[common]


def relative_error2(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """||s - t||^2 / ||t||^2 over the batch: an output's error on the scale of the output itself.
    F.mse_loss keeps s and t for its backward pass, both alive anyway, where (s - t) ** 2 kept the
    difference, one more activation per output and per factor chain (73 on a ViT-S)."""
    return F.mse_loss(student, teacher, reduction="sum") / (teacher**2).sum().clamp_min(1e-12)


def output_loss(
    student: list[torch.Tensor], teacher: list[torch.Tensor], spec: Outputs, temperature: float, kd: bool = True
) -> torch.Tensor:
    """Mean over outputs: Hinton KD on the class axis of score outputs (kd=True), the relative
    squared error on every other output (and on score outputs when kd=False)."""
    losses = []
    for i, (s, t) in enumerate(zip(student, teacher)):
        if not (s.is_floating_point() and t.is_floating_point()):
            continue  # integer outputs (an ArgMax, token ids) carry no gradient
        s, t = common_part(s.float(), t.float())
        if kd and i in spec.axes and s.ndim >= 1 and s.shape[spec.axes[i]] > 1:
            # scores at many positions (an OCR model's (N, T, C)): one distribution per position
            axis, c = spec.axes[i], s.shape[spec.axes[i]]
            if i in spec.probabilities:  # softmax(p / T) of probabilities is all but uniform: use log p
                s, t = torch.log(s.clamp_min(1e-12)), torch.log(t.clamp_min(1e-12))
            losses.append(
                hinton_kd(s.movedim(axis, -1).reshape(-1, c), t.movedim(axis, -1).reshape(-1, c), temperature)
            )
        else:
            losses.append(relative_error2(s, t))
    return torch.stack(losses).mean() if losses else torch.zeros((), device=student[0].device)


def feature_loss(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean over matched layers of ||s - t||^2 / ||t||^2: each factor chain's output is pulled to
    the original layer's output, every layer on the same scale."""
    losses = [relative_error2(*common_part(student[n], teacher[n])) for n in teacher if n in student]
    return torch.stack(losses).mean() if losses else torch.zeros(())


def rewritten_outputs(student: onnx.ModelProto) -> list[str]:
    """Outputs of factor chains, named as the original layers' outputs (tensorfold keeps the names):
    the value each chain's provenance names as its output (files written before it was recorded:
    the chain node whose name ends in /out)."""
    names = []
    for node in student.graph.node:
        info = provenance(node)
        if info is not None:
            if "output" in info:
                if info["output"] in node.output:
                    names.append(info["output"])
            elif node.name.startswith(info["original"]) and node.name.endswith("/out"):
                names.append(node.output[0])
    return names


class Teacher(Protocol):
    """What recovery asks of a teacher: its outputs on a batch (in the ONNX model's output order)
    and the intermediate values it can give, by name (`features`: the ones it has of those asked)."""

    features: list[str]

    def __call__(self, *xs: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]: ...


class OnnxTeacher:
    """An ONNX teacher run by onnxruntime; also returns the named intermediate values asked for."""

    def __init__(self, model: onnx.ModelProto, features: list[str], threads: int = 0):
        from tensorfold.onnxrt.sessions import make_session

        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        existing = {o.name for o in probe.graph.output}
        produced = {o for n in probe.graph.node for o in n.output}
        self.features = [f for f in features if f in produced]
        for name in self.features:
            if name not in existing:
                probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
        self.session = make_session(probe, threads=threads)
        self.input_names = [i.name for i in self.session.get_inputs()]
        names = [o.name for o in probe.graph.output]
        self.n_outputs = len(existing)
        self.feature_index = {f: names.index(f) for f in self.features}  # a feature may be a graph output
        from tensorfold.onnxrt.batching import sample_batch

        self.fixed = sample_batch(model)  # a model exported with a fixed batch runs in slices of it

    def __call__(self, *xs: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        arrays = [x.detach().cpu().numpy() for x in xs]
        n = len(arrays[0])
        step = self.fixed or n

        def part(a: np.ndarray, i: int) -> np.ndarray:  # the batched inputs are sliced, anything else goes whole
            return a[i : i + step] if a.ndim and len(a) == n else a

        runs = [
            self.session.run(None, {name: part(a, i) for name, a in zip(self.input_names, arrays)})
            for i in range(0, n, step)
        ]
        # each call's outputs stacked along their first axis, whichever axis holds the batch (a
        # CRNN's time-major (T, 1, classes) stacks as (calls x T, 1, classes)); OnnxModule does the same
        outs = [
            np.concatenate([np.asarray(r[k]) for r in runs])
            if len(runs) > 1 and np.ndim(runs[0][k])
            else np.asarray(runs[0][k])
            for k in range(len(runs[0]))
        ]
        tensors = [torch.from_numpy(o).to(xs[0].device) for o in outs]
        feats = {n: tensors[i] for n, i in self.feature_index.items()}
        return tensors[: self.n_outputs], feats


class GraphTeacher:
    """An ONNX teacher run by tensorfold's torch interpreter, for a GPU: no host round trip."""

    def __init__(self, model: onnx.ModelProto, features: list[str], device: str):
        from tensorfold.recovery.onnx_torch import OnnxModule

        self.module = OnnxModule(model, trainable=False).to(device).eval()
        produced = {o for n in model.graph.node for o in n.output}
        self.features = [f for f in features if f in produced]

    @torch.no_grad()
    def __call__(self, *xs: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        outputs, feats = self.module(*xs, capture=tuple(self.features))
        return list(outputs), feats


class EmaTeacher:
    """Self-distillation for a user without the original model (`--teacher self`): the exponential
    moving average of the student's own weights teaches it, outputs and factor-chain features alike
    (mean teacher, Tarvainen & Valpola 2017). It needs labels: the average only steadies what the
    labels teach."""

    def __init__(self, student: OnnxModule, features: list[str], decay: float = 0.99):
        import copy

        self.module = copy.deepcopy(student).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        produced = {o for n in student.proto.graph.node for o in n.output}
        self.features = [f for f in features if f in produced]
        self.decay = decay

    @torch.no_grad()
    def __call__(self, *xs: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        outputs, feats = self.module(*xs, capture=tuple(self.features))
        return list(outputs), feats

    @torch.no_grad()
    def update(self, student: torch.nn.Module) -> None:
        """After each optimizer step: teacher = decay * teacher + (1 - decay) * student."""
        for t, s in zip(self.module.parameters(), student.parameters()):
            t.mul_(self.decay).add_(s.detach(), alpha=1.0 - self.decay)


class TorchTeacher:
    """A torch module as teacher (its outputs in the ONNX model's order; no intermediate features)."""

    def __init__(self, module: torch.nn.Module):
        self.module = module.eval()
        self.features: list[str] = []

    @torch.no_grad()
    def __call__(self, *xs: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        out = self.module(*xs)
        return (list(out) if isinstance(out, (list, tuple)) else [out]), {}

    def to(self, device: str | torch.device) -> TorchTeacher:
        self.module.to(device)
        return self


class EnsembleTeacher:
    """Several teachers as one: each output is the weighted mean of theirs (multi-teacher KD);
    each intermediate feature comes from the first teacher that has it."""

    def __init__(self, teachers: list[Teacher], weights: list[float] | None = None):
        if not teachers:
            raise ValueError("an ensemble needs at least one teacher")
        weights = weights or [1.0] * len(teachers)
        if len(weights) != len(teachers) or min(weights) < 0 or sum(weights) <= 0:
            from tensorfold.errors import TensorfoldError

            raise TensorfoldError(
                f"--teacher-weights: {len(teachers)} non-negative weights with a positive sum needed, got {weights}"
            )
        total = float(sum(weights))
        self.teachers, self.weights = teachers, [w / total for w in weights]
        self.features = list(dict.fromkeys(f for t in teachers for f in t.features))

    def __call__(self, *xs: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        outputs: list[torch.Tensor] | None = None
        feats: dict[str, torch.Tensor] = {}
        for t, w in zip(self.teachers, self.weights):
            outs, f = t(*xs)
            weighted = [o * w if o.is_floating_point() else o for o in outs]
            outputs = (
                weighted
                if outputs is None
                else [a + b if b.is_floating_point() else a for a, b in zip(outputs, weighted)]
            )
            for name, value in f.items():
                feats.setdefault(name, value)
        return outputs, feats  # type: ignore[return-value]  # not None: __init__ refuses an empty ensemble
