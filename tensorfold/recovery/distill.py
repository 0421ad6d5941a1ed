"""Distillation losses and teachers. General: any student module, any teacher (an ONNX model run
by onnxruntime, or a torch module), with or without labels."""

from __future__ import annotations

import json

import numpy as np
import onnx
import torch
import torch.nn.functional as F


def hinton_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) on temperature-softened distributions, scaled by T^2 (Hinton et al. 2015)."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, dim=-1), F.softmax(teacher_logits / t, dim=-1),
                    reduction="batchmean") * t * t


def feature_loss(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean over matched layers of ||s - t||^2 / ||t||^2: each factor chain's output is pulled to
    the original layer's output, every layer on the same scale."""
    losses = [((student[n] - teacher[n]) ** 2).sum() / (teacher[n] ** 2).sum().clamp_min(1e-12) for n in teacher]
    return torch.stack(losses).mean() if losses else torch.zeros(())


def rewritten_outputs(student: onnx.ModelProto) -> list[str]:
    """Outputs of factor chains, named as the original layers' outputs (tensorfold keeps the names)."""
    names = []
    for node in student.graph.node:
        if node.doc_string.startswith("[tensorfold] {"):
            info = json.loads(node.doc_string[len("[tensorfold] "):])
            if node.name.startswith(info["original"]) and node.name.endswith("/out"):
                names.append(node.output[0])
    return names


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
        self.feature_index = {f: names.index(f) for f in self.features}   # a feature may be a graph output

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        outs = self.session.run(None, {self.input_names[0]: x.detach().cpu().numpy()})
        feats = {n: torch.from_numpy(np.asarray(outs[i])).to(x.device) for n, i in self.feature_index.items()}
        return torch.from_numpy(np.asarray(outs[0])).to(x.device), feats


class GraphTeacher:
    """An ONNX teacher run by tensorfold's torch interpreter, for a GPU: no host round trip."""

    def __init__(self, model: onnx.ModelProto, features: list[str], device: str):
        from tensorfold.recovery.onnx_torch import OnnxModule

        self.module = OnnxModule(model, trainable=False).to(device).eval()
        produced = {o for n in model.graph.node for o in n.output}
        self.features = [f for f in features if f in produced]

    @torch.no_grad()
    def __call__(self, x: torch.Tensor):
        outputs, feats = self.module(x, capture=tuple(self.features))
        return outputs[0], feats


class TorchTeacher:
    """A torch module as teacher (its first output is the logits; no intermediate features)."""

    def __init__(self, module: torch.nn.Module):
        self.module = module.eval()
        self.features: list[str] = []

    @torch.no_grad()
    def __call__(self, x: torch.Tensor):
        out = self.module(x)
        return (out[0] if isinstance(out, (list, tuple)) else out), {}

    def to(self, device):
        self.module.to(device)
        return self


class EnsembleTeacher:
    """Several teachers as one: logits are the weighted mean of theirs (multi-teacher KD);
    each intermediate feature comes from the first teacher that has it."""

    def __init__(self, teachers: list, weights: list[float] | None = None):
        if not teachers:
            raise ValueError("an ensemble needs at least one teacher")
        weights = weights or [1.0] * len(teachers)
        if len(weights) != len(teachers) or min(weights) < 0 or sum(weights) <= 0:
            from tensorfold.errors import TensorfoldError

            raise TensorfoldError(f"--teacher-weights: {len(teachers)} non-negative weights with a positive sum "
                                  f"needed, got {weights}")
        total = float(sum(weights))
        self.teachers, self.weights = teachers, [w / total for w in weights]
        self.features = list(dict.fromkeys(f for t in teachers for f in t.features))

    def __call__(self, x: torch.Tensor):
        logits, feats = None, {}
        for t, w in zip(self.teachers, self.weights):
            out, f = t(x)
            logits = out * w if logits is None else logits + out * w
            for name, value in f.items():
                feats.setdefault(name, value)
        return logits, feats
