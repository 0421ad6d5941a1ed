"""How much each layer's compression moves the model's output, measured on calibration samples.

A layer's own output error (from its statistics) says how well its factors fit; what the user
sees is the model's output. For each layer, the model is run on the samples with only that
layer's weight replaced by its least-error candidate of at most half its parameters; the ratio of
the model's squared relative output error to the layer's is that layer's sensitivity. The global
budget weighs each layer's error curve by it (an error in a layer the network amplifies costs
more than the same error in one it damps), as HAWQ (Dong et al. 2019) weighs quantization error
by curvature, here measured directly instead of estimated.

The probe streams: one onnxruntime session of the model whose probed weights are overridable
inputs, fed each layer's reconstructed weight in turn (a factor chain computes exactly that weight's
product, up to float rounding). Rebuilding, checking and loading the model once per layer cost a
ViT-S about 2 s and a model copy per layer (and the copies were kept: 17 GB); the probe now holds
one session and one reconstructed weight at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from tensorfold.calibration.data import Samples
from tensorfold.graph.model import attr
from tensorfold.graph.verify import Reference
from tensorfold.onnxrt.sessions import make_session
from tensorfold.passes.base import Choice, PassContext
from tensorfold.passes.factorize import FactorizePass
from tensorfold.passes.layers import Layer
from tensorfold.progress import bar as progress_bar

# calibration samples each layer's sensitivity probe runs on (one model run per layer), spread
# evenly over the file: the first 8 of a file grouped by kind (magika's calibration files, sorted by
# type) read one layer's cut at 0.002 where the whole set reads 0.265
PROBE_SAMPLES = 8
# the probe point: each layer alone at (at most) this share of its parameters
PROBE_SHARE = 0.5
# the most a layer's weight may differ from the median layer's (see sensitivity_weights)
GAIN_CLIP = 10.0


@dataclass
class Sensitivity:
    node: str
    probe_params: int  # parameters of the probed factorization
    layer_error: float  # its relative output error at the layer
    model_error: float  # the model's largest relative output error with only this layer probed
    model_disagreement: float  # and the largest argmax disagreement
    probe: Choice | None = None  # the method and ranks probed

    @property
    def gain(self) -> float:
        """model error^2 / layer error^2: how the network scales this layer's error."""
        return (self.model_error**2) / max(self.layer_error**2, 1e-12)

    def as_dict(self) -> dict[str, object]:
        return {
            "node": self.node,
            "probe_params": self.probe_params,
            "layer_error": self.layer_error,
            "model_error": self.model_error,
            "model_disagreement": self.model_disagreement,
            "gain": self.gain,
            **({"probe": {"method": self.probe.method, "ranks": list(self.probe.ranks)}} if self.probe else {}),
        }


def probe_reference(original: onnx.ModelProto, samples: Samples) -> Reference:
    """The original's outputs on PROBE_SAMPLES of `samples`, evenly spaced over them."""
    index = np.unique(np.linspace(0, samples.n - 1, min(samples.n, PROBE_SAMPLES)).round().astype(int))
    return Reference(original, samples.take(index).arrays, "probe")


def measure_sensitivity(
    pass_: FactorizePass, model: onnx.ModelProto, ctx: PassContext, reference: Reference
) -> dict[str, Sensitivity]:
    """{layer name: Sensitivity} for every layer the pass can rewrite and shrink to PROBE_SHARE (a
    shared weight is probed once, under its first user's name, with every use replaced)."""
    work, layers, _ = pass_.eligible_layers(model, ctx)
    probes = []
    for layer in layers:
        if not layer.leads:
            continue
        cands = [c for c in pass_.candidates_of(layer, ctx) if c.params <= PROBE_SHARE * layer.params]
        if cands:
            probes.append((layer, min(cands, key=lambda c: (c.error2, c.params))))
    if not probes:
        return {}
    session = make_session(_overridable(work, [layer.node.input[1] for layer, _ in probes]), reference.provider)
    initializers = {t.name: t for t in work.graph.initializer}
    out: dict[str, Sensitivity] = {}
    for layer, probe in progress_bar(probes, desc="layer sensitivity", unit="layer", show=ctx.progress, leave=False):
        built = pass_.factorization(layer, pass_.ranks_of(probe), ctx)
        name = layer.node.input[1]
        weight = _as_stored(layer, built.reconstruct(), initializers[name])
        check = reference.verify_session(session, f"the model with {layer.name} probed", {name: weight})
        out[layer.name] = Sensitivity(
            layer.name,
            probe.params,
            max(probe.error2, 0.0) ** 0.5,
            check.max_relative_error,
            check.max_disagreement,
            pass_.ranks_of(probe),
        )
    return out


def _overridable(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """The model with these initializers also listed as graph inputs: onnxruntime then takes a fed
    value in their place (and the stored one when none is fed)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    listed = {i.name for i in probe.graph.input}
    stored = {t.name: t for t in probe.graph.initializer}
    for name in dict.fromkeys(names):
        if name not in listed:
            t = stored[name]
            probe.graph.input.append(onnx.helper.make_tensor_value_info(name, t.data_type, list(t.dims)))
    return probe


def _as_stored(layer: Layer, weight: np.ndarray, stored: onnx.TensorProto) -> np.ndarray:
    """A weight in the layer's working layout (y = x @ W for matrices) back in the initializer's."""
    if layer.kind == "gemm" and attr(layer.node, "transB", 0):
        weight = weight.T
    return np.ascontiguousarray(
        weight.reshape(tuple(stored.dims)), dtype=onnx.helper.tensor_dtype_to_np_dtype(stored.data_type)
    )


def sensitivity_weights(measured: dict[str, Sensitivity]) -> dict[str, float]:
    """Budget weights: each layer's gain over the median gain, clipped to [1/GAIN_CLIP, GAIN_CLIP].

    The gains of one model span up to six orders of magnitude (a 2-class softmax saturates, so
    single small layers barely move it), and taken raw they let the budget cut those layers to
    rank 1 all together, which compounds; clipped at 10x they halved the held-out error of the
    plain budget on PP-OCR det/cls/rec (3x: the recognizer lost; a square root: the classifier
    lost; docs/results/calibration.md)."""
    gains = {k: s.gain for k, s in measured.items()}
    if not gains:
        return {}
    median = float(np.median(list(gains.values()))) or 1e-12
    return {k: float(np.clip(g / median, 1 / GAIN_CLIP, GAIN_CLIP)) for k, g in gains.items()}
