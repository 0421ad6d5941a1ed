"""How much each layer's compression moves the model's output, measured on calibration samples.

A layer's own output error (from its statistics) says how well its factors fit; what the user
sees is the model's output. For each layer, the model is rebuilt with only that layer compressed
to the least-error candidate of at most half its parameters and run on the samples; the ratio of
the model's squared relative output error to the layer's is that layer's sensitivity. The global
budget weighs each layer's error curve by it (an error in a layer the network amplifies costs
more than the same error in one it damps), as HAWQ (Dong et al. 2019) weighs quantization error
by curvature, here measured directly instead of estimated.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import onnx
from tqdm import tqdm

from tensorfold.graph.verify import Reference
from tensorfold.passes.base import Choice, PassContext
from tensorfold.passes.factorize import FactorizePass
from tensorfold.passes.layers import Layer

# calibration samples each layer's sensitivity probe runs on (one model run per layer)
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
        }


def measure_sensitivity(
    pass_: FactorizePass, model: onnx.ModelProto, ctx: PassContext, reference: Reference
) -> dict[str, Sensitivity]:
    """{layer name: Sensitivity} for every layer the pass can rewrite and shrink to PROBE_SHARE."""
    _, layers, _ = pass_.eligible_layers(model, ctx)
    out: dict[str, Sensitivity] = {}
    for layer in tqdm(layers, desc="layer sensitivity", unit="layer", disable=not ctx.progress, leave=False):
        cands = [c for c in pass_.candidates_of(layer, ctx) if c.params <= PROBE_SHARE * layer.params]
        if not cands:
            continue
        probe = min(cands, key=lambda c: (c.error2, c.params))
        result = pass_(model, replace(ctx, planner=OnlyLayer(layer.name, pass_.ranks_of(probe)), progress=False))
        if not result.rewritten:
            continue
        check = reference.verify(result.model)
        out[layer.name] = Sensitivity(
            layer.name, probe.params, max(probe.error2, 0.0) ** 0.5, check.max_relative_error, check.max_disagreement
        )
    return out


@dataclass
class OnlyLayer:
    """A planner that rewrites one layer at the given ranks and keeps every other whole."""

    name: str
    choice: Choice
    reasons: dict[str, str] = field(default_factory=dict)

    def __call__(
        self, pass_: FactorizePass, layers: list[Layer], ctx: PassContext
    ) -> tuple[dict[str, Choice | None], list[str]]:
        return {layer.name: (self.choice if layer.name == self.name else None) for layer in layers}, []


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
