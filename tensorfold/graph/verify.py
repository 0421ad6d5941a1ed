"""Check a rewritten model: onnx.checker, then original and rewritten run side by side in onnxruntime."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from tensorfold.errors import TensorfoldError
from tensorfold.runtime.sessions import make_session


@dataclass
class OutputCheck:
    name: str
    kind: str                      # "float": relative L2 error; "integer": share of equal elements
    relative_error: float | None = None
    max_abs_error: float | None = None
    agreement: float | None = None


@dataclass
class Verification:
    checker: str
    inputs: str                    # "random (seed 0)" or the .npz path
    outputs: list[OutputCheck] = field(default_factory=list)

    @property
    def max_relative_error(self) -> float:
        errs = [o.relative_error for o in self.outputs if o.relative_error is not None]
        return max(errs) if errs else 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d["max_relative_error"] = self.max_relative_error
        return d


def check(model: onnx.ModelProto, label: str = "model") -> None:
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise TensorfoldError(f"{label} fails onnx.checker: {str(exc).splitlines()[0][:300]}") from None


def compare_outputs(reference: list[np.ndarray], candidate: list[np.ndarray], names: list[str]) -> list[OutputCheck]:
    checks = []
    for name, ref, got in zip(names, reference, candidate):
        ref, got = np.asarray(ref), np.asarray(got)
        if ref.shape != got.shape:
            raise TensorfoldError(f"output '{name}' changed shape: {ref.shape} -> {got.shape}")
        if np.issubdtype(ref.dtype, np.floating):
            r64, g64 = ref.astype(np.float64), got.astype(np.float64)
            norm = float(np.linalg.norm(r64))
            diff = float(np.linalg.norm(r64 - g64))
            checks.append(OutputCheck(name, "float", diff / norm if norm > 0 else diff,
                                      float(np.max(np.abs(r64 - g64))) if ref.size else 0.0))
        else:
            checks.append(OutputCheck(name, "integer", agreement=float(np.mean(ref == got)) if ref.size else 1.0))
    return checks


def verify_models(original: onnx.ModelProto, rewritten: onnx.ModelProto, feeds: dict[str, np.ndarray],
                  inputs_label: str, provider: str = "cpu") -> Verification:
    """Checker on the rewritten model, then both run on the same feeds; errors per output."""
    check(rewritten, "the rewritten model")
    names = [o.name for o in original.graph.output]
    if [o.name for o in rewritten.graph.output] != names:
        raise TensorfoldError("the two models have different outputs: "
                              f"{names} vs {[o.name for o in rewritten.graph.output]}")
    reference = _run(original, feeds, provider, "the original model")
    candidate = _run(rewritten, feeds, provider, "the rewritten model")
    return Verification("passed", inputs_label, compare_outputs(reference, candidate, names))


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray], provider: str, label: str) -> list[np.ndarray]:
    session = make_session(model, provider)
    try:
        return session.run(None, feeds)
    except Exception as exc:  # noqa: BLE001 - surfaced as one line
        raise TensorfoldError(f"onnxruntime failed to run {label}: {str(exc).splitlines()[0][:300]} "
                              f"(fix dynamic dims with --shape NAME:D1,D2,... or pass --inputs file.npz)") from None
